"""The fast data path: file bytes decoded by torchvision.io into the same pixels PIL gives, PIL kept
for what the fast path cannot read (and for its errors), normalisation on the device equal to v1's
ToTensor + Normalize, and the opt-in GPU decoder refusing a machine without CUDA in one line."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from trainer import data, decode
from trainer.fetch import DataError
from trainer.job.spec import DataSpec, ModelSpec


def picture(size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return Image.fromarray((smooth * 0.8 + rng.integers(0, 50, smooth.shape)).astype(np.uint8))


def pil_pixels(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


@pytest.mark.parametrize(
    "name, save",
    [
        ("base.jpg", {"format": "JPEG", "quality": 90}),
        ("progressive.jpg", {"format": "JPEG", "progressive": True}),
        ("grey.jpg", {"format": "JPEG", "mode": "L"}),
        ("rgb.png", {"format": "PNG"}),
        ("palette.png", {"format": "PNG", "mode": "P"}),
        ("alpha.png", {"format": "PNG", "mode": "RGBA"}),
        ("deep.png", {"format": "PNG", "mode": "I;16"}),  # 16-bit: PIL's path
        ("image.bmp", {"format": "BMP"}),  # not the fast path's format
        ("image.webp", {"format": "WEBP", "lossless": True}),
    ],
)
def test_every_format_decodes_to_the_pixels_pil_gives(tmp_path, name, save):
    mode = save.pop("mode", "RGB")
    image = picture().convert(mode)
    image.save(tmp_path / name, **save)
    got = decode.decode(str(tmp_path / name))
    assert got.dtype == torch.uint8 and got.shape == (3, 48, 64)
    assert torch.equal(got, pil_pixels(tmp_path / name))


def test_bad_files_fail_with_pils_errors(tmp_path, monkeypatch):
    picture().save(tmp_path / "whole.jpg", format="JPEG")
    body = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(body[: len(body) // 2])
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    with pytest.raises(OSError, match="truncated"):
        decode.decode(str(tmp_path / "truncated.jpg"))
    with pytest.raises(Image.UnidentifiedImageError, match="garbage.png"):  # the file named, as before
        decode.decode(str(tmp_path / "garbage.png"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x48 is now over twice PIL's limit: a bomb
    with pytest.raises(Image.DecompressionBombError):
        decode.decode(str(tmp_path / "whole.jpg"))


def test_the_header_size_is_read_without_decoding():
    buffer = io.BytesIO()
    picture((500, 375)).save(buffer, format="JPEG", progressive=True)
    assert decode.fast_size(buffer.getvalue()) == (500, 375)
    assert decode.fast_size(b"BM" + b"\0" * 40) is None


def test_normalising_on_the_device_matches_to_tensor_and_normalize():
    image = picture()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = transforms.Normalize(mean, std)(transforms.ToTensor()(image))
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    batch = torch.stack([pixels, pixels.flip(-1)])
    normalised = decode.normalize(batch, mean, std)
    assert torch.allclose(normalised[0], expected, atol=1e-6)
    # A CPU batch is normalised one image at a time (in cache): bit for bit what the whole-tensor
    # arithmetic (a single CHW image, and a batch on the GPU) gives.
    assert all(
        torch.equal(row, decode.normalize(image, mean, std)) for row, image in zip(normalised, batch, strict=True)
    )


def test_gpu_decoding_without_cuda_is_one_clear_error(image_folder):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    made = image_folder(per_class={"train": 2})
    spec = DataSpec(train=made.split("train"), image_size=16, decode="gpu")
    with pytest.raises(
        DataError, match=r"train.data.decode is gpu, but this machine has no CUDA GPU; set train.data.decode: cpu"
    ):
        data.build(spec, ModelSpec(name="resnet18", weights=None), 0, 4, Path(made.split("train")), None)


def test_the_gpu_decoders_batches_equal_the_workers_samples(tmp_path):
    """decode: gpu's code path, run on the CPU (decode_jpeg takes device="cpu" too): a batch decoded in
    one call and transformed per sample under its seed equals what the CPU path's workers produce;
    a PNG in the batch was decoded by its worker."""
    for i in range(3):
        picture((64 + 8 * i, 48)).save(tmp_path / f"{i}.jpg", format="JPEG")
    picture().save(tmp_path / "3.png", format="PNG")
    samples = [(str(tmp_path / name), 0) for name in ("0.jpg", "1.jpg", "2.jpg", "3.png")]
    spec = DataSpec(train=str(tmp_path), image_size=32, augmentation={"color_jitter": 0.2})
    transform = data.train_transform(spec, data.normalization(ModelSpec(name="resnet18", weights=None)))
    on_cpu = data.ImageDataset(samples, transform, seed=5)
    for_gpu = data.ImageDataset(samples, transform, seed=5, gpu_split="train")
    keys = [(2, i) for i in range(4)]
    encoded, labels, bad = data.collate([for_gpu[key] for key in keys])
    assert [s.is_jpeg for s in encoded] == [True, True, True, False] and not bad and labels.tolist() == [0] * 4
    expected = torch.stack([on_cpu[key][0] for key in keys])
    assert torch.equal(decode.decode_on_gpu(encoded, transform, torch.device("cpu")), expected)
