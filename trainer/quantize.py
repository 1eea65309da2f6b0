"""int8: post-training static quantization for CPU inference, and how well it holds up.

The path: FX graph mode quantization (`torch.ao.quantization.quantize_fx`) with the `x86` engine
(fbgemm + oneDNN; `qnnpack` on ARM), calibrated on training images, saved as a traced TorchScript
file. Why this one rather than torchao's PT2E (`prepare_pt2e`/`convert_pt2e`, the maintained path):

- it works unchanged on every torch this package accepts (2.4 to 2.14), where PT2E lives in torch
  itself up to about 2.9 and in a torchao release matched to each torch after that;
- the converted model runs real int8 kernels in plain eager or TorchScript, so the artifact is fast
  wherever `torch.jit.load` works; a PT2E model is only fast after `torch.compile` (inductor, with a
  C++ compiler) on the machine that serves it, and slower than fp32 before that.

torch 2.14 warns that torch.ao.quantization is deprecated; the warnings are silenced here and the
path is recorded in the manifest (`method`). When a torch without it arrives, int8 fails with that
reason and the other formats are unaffected.
"""

from __future__ import annotations

import copy
import io
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

METHOD = "torch.ao.quantization FX static post-training quantization, traced to TorchScript"


def engine() -> str:
    engines = torch.backends.quantized.supported_engines
    return "x86" if "x86" in engines else "qnnpack"


def classifier_head(model: nn.Module) -> str | None:
    """The name of the last Linear layer: the classifier head of torchvision's classifiers (resnet
    `fc`, mobilenet/efficientnet/convnext `classifier.N`, vit `heads.head`); squeezenet's head is a
    convolution, and there nothing is kept in fp32."""
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return linear[-1] if linear else None


def quantize(
    model: nn.Module, calibration: Iterable[torch.Tensor], example: torch.Tensor
) -> tuple[torch.jit.ScriptModule, int]:
    """The model with int8 weights and activations, traced; and how many images calibrated it.

    The classifier head stays fp32: the logits are what is compared and ranked, it is a sliver of
    the compute and the weights, and quantizing it costs the most agreement (on the quickstart's
    resnet18: SQNR 33.6 dB and 97 % top-1 agreement with it in int8, 39.4 dB and 100 % without)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine()
    mapping = get_default_qconfig_mapping(engine())
    if (head := classifier_head(model)) is not None:
        mapping = mapping.set_module_name(head, None)
    seen = 0
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation notices; see the module docstring
        prepared = prepare_fx(copy.deepcopy(model).cpu().eval(), mapping, (example,))
        for images in calibration:  # observers record each activation's range
            prepared(images)
            seen += len(images)
        if not seen:
            raise ValueError("no training image could be read for calibration")
        return torch.jit.trace(convert_fx(prepared), example[:1]), seen


def agreement(reference: nn.Module | Callable, quantized: Callable, images: Iterable[torch.Tensor]) -> dict:
    """SQNR (dB) of the quantized logits against fp32, and how often both pick the same class."""
    signal = noise = 0.0
    same = total = 0
    with torch.no_grad():
        for batch in images:
            expected, got = reference(batch), quantized(batch)
            signal += float(expected.double().pow(2).sum())
            noise += float((expected.double() - got.double()).pow(2).sum())
            same += int((expected.argmax(1) == got.argmax(1)).sum())
            total += len(batch)
    if not total:
        raise ValueError("no validation image could be read to measure agreement")
    sqnr = math.inf if noise == 0 else 10 * math.log10(signal / noise)
    return {"images": total, "sqnr_db": round(sqnr, 2), "top1_agreement": same / total}


def latency_ms(
    model: Callable, example: torch.Tensor, batch_sizes: tuple[int, ...] = (1, 8), repeats: int = 10
) -> dict[str, float]:
    """Median CPU milliseconds per call at each batch size (after two warm-up calls)."""
    timings = {}
    with torch.no_grad():
        for size in batch_sizes:
            batch = example.repeat(math.ceil(size / len(example)), 1, 1, 1)[:size]
            for _ in range(2):
                model(batch)
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                model(batch)
                samples.append(time.perf_counter() - started)
            timings[str(size)] = round(statistics.median(samples) * 1000, 3)
    return timings


def size_bytes(module: nn.Module | torch.jit.ScriptModule) -> int:
    """Serialized size: torch.save of the weights (fp32) or of the whole TorchScript module."""
    buffer = io.BytesIO()
    if isinstance(module, torch.jit.ScriptModule):
        torch.jit.save(module, buffer)
    else:
        torch.save(module.state_dict(), buffer)
    return buffer.tell()
