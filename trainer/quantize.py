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


# The int8 speed-up is measured in pairs: one fp32 call and one int8 call back to back (their order
# alternating), so both meet the same CPU load; a shared or throttled CPU slows a whole pair, not
# one side. The figure is the median of the per-pair ratios, with their interquartile range.
WARMUP_CALLS = 3  # per model and batch size: lazy init, allocator and oneDNN's kernel choice
MAX_PAIRS = 15
MIN_PAIRS = 6  # fewer and the quartiles say nothing
PAIRS_BUDGET_S = 3.0  # per batch size: pairs stop (after MIN_PAIRS) once this much time went into them
# Interquartile range over median above this: the CPU was too busy to tell (five runs of one model
# on a shared machine gave 28.4x, 1.0x, 0.7x, 1.3x, 5.1x with single timings).
MAX_RELATIVE_SPREAD = 0.5


def paired_timings(
    fp32: Callable,
    int8: Callable,
    batch: torch.Tensor,
    max_pairs: int = MAX_PAIRS,
    budget_s: float = PAIRS_BUDGET_S,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[float], list[float]]:
    """Seconds per call of each model on `batch`, interleaved after a warm-up: (fp32, int8), one of
    each per pair. At least MIN_PAIRS, at most `max_pairs`, and no more once `budget_s` is spent."""
    fp32_s: list[float] = []
    int8_s: list[float] = []
    with torch.no_grad():
        for _ in range(WARMUP_CALLS):
            fp32(batch)
            int8(batch)
        started = clock()
        for pair in range(max_pairs):
            if pair >= MIN_PAIRS and clock() - started > budget_s:
                break
            order = ((fp32, fp32_s), (int8, int8_s)) if pair % 2 == 0 else ((int8, int8_s), (fp32, fp32_s))
            for model, samples in order:
                began = clock()
                model(batch)
                samples.append(clock() - began)
    return fp32_s, int8_s


def speedup_estimate(fp32_s: list[float], int8_s: list[float]) -> dict:
    """How much faster int8 is than fp32 from paired timings (pure): the median per-pair ratio
    fp32/int8 (above 1: faster, below: slower) and the spread of those ratios, or `ratio` None with
    a `note` when they cannot tell (too few pairs, a spread that reaches both sides of 1, or one
    wider than MAX_RELATIVE_SPREAD of the median)."""
    ratios = sorted(f / i for f, i in zip(fp32_s, int8_s, strict=True) if i > 0)
    figures: dict = {"pairs": len(ratios), "ratio": None, "note": None}
    if len(ratios) < MIN_PAIRS:
        figures["note"] = f"too few timings ({len(ratios)} pairs, {MIN_PAIRS} needed)"
        return figures
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    figures.update(
        {
            "iqr": [round(q1, 2), round(q3, 2)],
            "range": [round(ratios[0], 2), round(ratios[-1], 2)],
        }
    )
    spread = (q3 - q1) / median
    if q1 < 1 < q3:
        figures["note"] = f"per-pair ratios {q1:.2f}x to {q3:.2f}x (interquartile) lie on both sides of 1"
    elif spread > MAX_RELATIVE_SPREAD:
        figures["note"] = (
            f"per-pair ratios {q1:.2f}x to {q3:.2f}x (interquartile) spread {spread:.0%} of their median, "
            f"more than {MAX_RELATIVE_SPREAD:.0%}: the CPU was too busy to tell"
        )
    else:
        figures["ratio"] = round(median, 2)
    return figures


def compare_latency(
    fp32: Callable, int8: Callable, example: torch.Tensor, batch_sizes: tuple[int, ...] = (1, 8), **options
) -> dict:
    """The manifest's latency fields, per batch size, from interleaved timings: `cpu_latency_ms`
    (median ms per call of each model), `speedup` (speedup_estimate's ratio: None when it could not
    be measured reliably), `speedup_spread` (its iqr, range and pairs) and `speedup_note` (why a
    ratio is None, per batch size; None when every one was measured)."""
    latency: dict = {"fp32": {}, "int8": {}}
    speedup, spread, notes = {}, {}, []
    for size in batch_sizes:
        batch = example.repeat(math.ceil(size / len(example)), 1, 1, 1)[:size]
        fp32_s, int8_s = paired_timings(fp32, int8, batch, **options)
        latency["fp32"][str(size)] = round(statistics.median(fp32_s) * 1000, 3)
        latency["int8"][str(size)] = round(statistics.median(int8_s) * 1000, 3)
        estimate = speedup_estimate(fp32_s, int8_s)
        speedup[str(size)] = estimate.pop("ratio")
        if (note := estimate.pop("note")) is not None:
            notes.append(f"batch {size}: {note}")
        spread[str(size)] = estimate
    note = "; ".join(notes) or None  # e.g. "batch 1: per-pair ratios … lie on both sides of 1"
    return {"cpu_latency_ms": latency, "speedup": speedup, "speedup_spread": spread, "speedup_note": note}


def size_bytes(module: nn.Module | torch.jit.ScriptModule) -> int:
    """Serialized size: torch.save of the weights (fp32) or of the whole TorchScript module."""
    buffer = io.BytesIO()
    if isinstance(module, torch.jit.ScriptModule):
        torch.jit.save(module, buffer)
    else:
        torch.save(module.state_dict(), buffer)
    return buffer.tell()
