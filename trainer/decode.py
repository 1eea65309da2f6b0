"""Images from file bytes to the model's input: decoded to uint8 tensors in the data workers, moved to
the device as uint8 (a quarter of float32's bytes), normalised there.

- `decode(path)`: a baseline JPEG or an 8-bit PNG (told by its first bytes; its size read from its
  header and held to PIL's decompression-bomb limit) is decoded by torchvision.io straight from the
  bytes into a CHW uint8 tensor (libjpeg-turbo/libpng, no PIL image in between; with transforms.v2 on
  the tensor, `bench/data_path.py`). Every other format or mode (WebP, BMP, TIFF, 16-bit PNG, a GIF...)
  and anything the fast path refuses goes through PIL, as before, with PIL's errors.
- `normalize(images, norm)`: (x / 255 - mean) / std on the device, after the transfer.
- `train.data.decode: gpu` (opt-in, CUDA only): workers send JPEG bytes as they are, and the loop
  decodes a whole batch with nvJPEG (`decode_jpeg(list, device="cuda")`), then applies each sample's
  transform on the GPU under that sample's seed (seed, epoch, index), as the workers would have.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from trainer.fetch import DataError

DECODE_ERRORS = (OSError, ValueError, RuntimeError, Image.DecompressionBombError)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG frame markers that carry the image's size: SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def fast_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG or an 8-bit colour-typed PNG from its header; None for anything the
    fast path leaves to PIL (another format, a 16-bit PNG, a header it cannot follow)."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 26:
        return (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) if data[24] == 8 else None
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _SOF:
            return int.from_bytes(data[at + 7 : at + 9], "big"), int.from_bytes(data[at + 5 : at + 7], "big")
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def decode(path: str) -> torch.Tensor:
    """The image at `path` as a CHW uint8 RGB tensor; DECODE_ERRORS when it cannot be read."""
    with open(path, "rb") as handle:
        data = handle.read()
    size = fast_size(data)
    if size is not None and 0 < size[0] * size[1] <= (Image.MAX_IMAGE_PIXELS or float("inf")):
        try:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            if image.dtype == torch.uint8 and image.ndim == 3:
                return image
        except RuntimeError:
            pass  # the fast path refused it (a truncated file, say): PIL tells why, or reads it
    return pil_decode(path)  # by its path: PIL's errors name the file


def pil_decode(source: str | bytes) -> torch.Tensor:
    """PIL's decode of a file (by path) or of its bytes, as a CHW uint8 RGB tensor."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 NCHW (or CHW) -> float32, as ToTensor + Normalize compute it."""
    shape = (-1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(shape)
    if images.device.type != "cpu" or images.ndim != 4:
        return images.float().div_(255).sub_(mean_t).div_(std_t)
    # On the CPU a batch's four passes (convert, /255, -mean, /std) each stream ~19 MB through memory;
    # one image at a time (~600 KB) they stay in cache: ~25% less time, the same arithmetic bit for bit.
    out = torch.empty(images.shape, dtype=torch.float32)
    for image, target in zip(images, out, strict=True):
        target.copy_(image).div_(255).sub_(mean_t).div_(std_t)
    return out


# ---------------------------------------------------------------------------------------- GPU decode
@dataclass
class Encoded:
    """One sample for the GPU decoder: a JPEG's bytes (1-D uint8) or, for any other format, the image
    decoded on the CPU; and the seed of its transform."""

    path: str
    data: torch.Tensor
    is_jpeg: bool
    seed: int
    split: str  # "train" or "val": whose transform applies


def encoded(path: str, seed: int, split: str) -> Encoded:
    """What a data worker sends under `decode: gpu`: a JPEG's bytes, its header checked here (size,
    bomb limit); any other image decoded here, PIL's errors being its bad-image reason."""
    with open(path, "rb") as handle:
        data = handle.read()
    size = fast_size(data)
    if (
        data[:2] == b"\xff\xd8"
        and size is not None
        and 0 < size[0] * size[1] <= (Image.MAX_IMAGE_PIXELS or float("inf"))
    ):
        return Encoded(path, torch.frombuffer(bytearray(data), dtype=torch.uint8), True, seed, split)
    return Encoded(path, decode(path), False, seed, split)


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise DataError(
            "train.data.decode is gpu, but this machine has no CUDA GPU; set train.data.decode: cpu (the default)"
        )


def decode_on_gpu(samples: list[Encoded], transform, device: torch.device) -> torch.Tensor:
    """A batch decoded by nvJPEG in one call, each sample transformed under its own seed; uint8 NCHW
    on `device`. A JPEG nvJPEG refuses is decoded on the CPU instead; one nothing can read is an error
    naming it (its header passed, so it is rare: a truncated body)."""
    jpegs = [s for s in samples if s.is_jpeg]
    decoded: dict[int, torch.Tensor] = {}
    if jpegs:
        try:
            for sample, image in zip(
                jpegs, decode_jpeg([s.data for s in jpegs], mode=ImageReadMode.RGB, device=device), strict=True
            ):
                decoded[id(sample)] = image
        except RuntimeError:  # one bad file fails the batch call: one at a time, on the CPU
            for sample in jpegs:
                try:
                    decoded[id(sample)] = pil_decode(sample.data.numpy().tobytes()).to(device)
                except DECODE_ERRORS as exc:
                    raise DataError(
                        f"train.data: {sample.path} cannot be decoded ({type(exc).__name__}: {exc}); fix or remove it"
                    ) from exc
    images = []
    for sample in samples:
        image = decoded[id(sample)] if sample.is_jpeg else sample.data.to(device, non_blocking=True)
        with torch.random.fork_rng(devices=[]):  # transforms.v2 draws its parameters on the CPU generator
            torch.default_generator.manual_seed(sample.seed)
            images.append(transform(image))
    return torch.stack(images)
