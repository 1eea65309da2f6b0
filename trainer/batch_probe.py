"""`train.batch_size: auto`: the largest batch one GPU trains, found by trying, and the global batch
kept for the whole run.

**The probe** trains real steps (forward, backward, optimizer step; the teacher's forward when
distilling) of a stand-in of the job's model (same architecture, head, frozen parameters, optimizer,
AMP; random weights, so the run's own model and RNG are untouched) on random images of the real
input size. It doubles the batch from 2 until a step runs out of memory (or the upper bound fits),
then bisects between the last size that fit and the first that did not, to 1/64 of the size (halving
alone, Accelerate's way, wastes up to half the GPU: 100 fit, 128 tried, 64 used). Each size runs
`STEPS_PER_TRIAL` steps: the optimizer's state is allocated by the first. Only out-of-memory is a
"no"; any other error is the job's and is raised.

**The margin.** The batch used is `1 - MARGIN` (5 %) of the largest that fit: the probe's few steps
do not see the allocator's fragmentation after hours, nor the other kernels cuDNN may pick later
(Lightning's users meet out-of-memory at fit time after tuning without a margin).

**Cached** under the job's prefix (`layout.batch_probe`), one file per (model, image size, GPU type,
AMP, world size): a recovery on the same GPU type reads it instead of probing again.

**The global batch** (`layout.BATCH_CHOSEN`) is fixed by the first attempt: the probe's figure times
the ranks, at most the cap (`{auto: N}`) and the training images. A later attempt keeps it, whatever
its GPU holds: its own probe's figure becomes `max_batch_per_gpu` (gradient accumulation), so the
run's optimisation (and a CPU run's bits) is unchanged by where a recovery landed.

On a CPU there is no device memory to exhaust (the kernel's OOM killer would end the process, not
raise): the search is bounded by `CPU_BOUND`. Tests inject a memory limit instead: in-process by
setting `memory_limit`, in a trainer subprocess through the test hook `SPOTCTL_TEST_PROBE_MEMORY`
(`<bytes>[@<GPU name>]`: an `ActivationBudget` of that many bytes, and the GPU name the probe's
cache key and log then carry, to model a recovery on a GPU type that holds less). `trainer.run`
parses it once at start (`inject`); production runs never set it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import torch
from torch import nn

from trainer.job import layout
from trainer.job.spec import AutoBatch, TrainSpec
from trainer.job.storage import Storage

log = logging.getLogger(__name__)

MARGIN = 0.05
"""The share of the largest batch that fit left unused (fragmentation, other kernels later)."""
RESOLUTION = 64
"""Bisection stops once the bracket is narrower than 1/RESOLUTION of the size that fit."""
STEPS_PER_TRIAL = 2
START = 2  # BatchNorm cannot train on one image at 1x1 spatial size
CPU_BOUND = 256
"""The largest batch tried on a CPU (nothing there raises out-of-memory before the kernel kills us)."""


class BatchProbeError(Exception):
    """Not even the smallest batch fits: the message says what to change."""


@dataclass(frozen=True)
class ProbeKey:
    """What the largest batch depends on, besides the job's spec (fixed for the job)."""

    model: str
    image_size: int
    gpu: str
    amp: str
    world_size: int

    @property
    def name(self) -> str:
        raw = f"{self.model}-{self.image_size}px-{self.gpu}-{self.amp}-w{self.world_size}"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)


@dataclass
class Search:
    """A bisection's result: the largest size that fit, the smallest that did not (None: the bound fit)."""

    fits: int
    fails: int | None
    trials: list[tuple[int, bool]] = field(default_factory=list)


def search(fits: Callable[[int], bool], bound: int, start: int = START, resolution: int = RESOLUTION) -> Search:
    """The largest batch in [1, bound] for which `fits(size)` is true, assuming fitting is monotonic:
    double from `start`, then bisect the bracket down to 1/`resolution` of its lower end."""
    trials: list[tuple[int, bool]] = []

    def trial(size: int) -> bool:
        ok = fits(size)
        trials.append((size, ok))
        return ok

    size, good, bad = min(start, bound), 0, None
    while True:
        if trial(size):
            good = size
            if size >= bound:
                break
            size = min(size * 2, bound)
        else:
            bad = size
            break
    if good == 0:  # not 1 either: BatchNorm cannot train on one image (and it would be no batch)
        raise BatchProbeError(
            f"train.batch_size auto: not even {bad} images fit this GPU's memory; set a smaller "
            "train.data.image_size, freeze the backbone, turn train.amp on, or choose a GPU with more memory"
        )
    while bad is not None and bad - good > max(1, good // resolution):
        middle = (good + bad) // 2
        if trial(middle):
            good = middle
        else:
            bad = middle
    return Search(good, bad, trials)


def with_margin(found: Search) -> int:
    """The batch to train with: the largest that fit less the margin; the bound itself when it fit
    with room (no out-of-memory seen), at least 1."""
    if found.fails is None:
        return found.fits
    return max(1, math.floor(found.fits * (1 - MARGIN)))


# ---------------------------------------------------------------------------------- memory limits
def is_out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory error, or the messages other allocators use for it (cuDNN, the CPU's)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        words in text for words in ("CUDA out of memory", "CUDNN_STATUS_NOT_SUPPORTED", "can't allocate memory")
    )


class ActivationBudget:
    """A stand-in for device memory, for tests and CPU benches: raises torch.OutOfMemoryError when the
    bytes autograd keeps for one step's backward (the activations: what grows with the batch) pass
    `budget`. Entered once per step."""

    def __init__(self, budget: int):
        self.budget, self.used, self.peak = budget, 0, 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.used = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            self.used += tensor.numel() * tensor.element_size()
            self.peak = max(self.peak, self.used)
            if self.used > self.budget:
                raise torch.OutOfMemoryError(f"(injected) {self.used} bytes of activations, budget {self.budget} bytes")
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield


memory_limit: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
"""Entered around each probe step: the device's own memory in production; tests put an
ActivationBudget here."""
injected: InjectedMemory | None = None
"""The test hook's value once `inject` installed it (its budget in `memory_limit`, its GPU name
reported by `gpu_name`)."""

HOOK = "SPOTCTL_TEST_PROBE_MEMORY"


@dataclass(frozen=True)
class InjectedMemory:
    """The test hook's value (`<bytes>[@<GPU name>]`), parsed."""

    budget: int
    """The bytes of activations one probe step may keep (an ActivationBudget)."""
    gpu: str | None = None
    """The GPU name to report instead of the device's (None: the device's, "cpu" on a CPU)."""

    @classmethod
    def parse(cls, value: str) -> InjectedMemory:
        budget, at, gpu = value.partition("@")
        if not re.fullmatch(r"\s*[0-9]+\s*", budget) or int(budget) < 1 or (at and not gpu.strip()):
            raise ValueError(
                f"{HOOK} is {value!r}: expected <bytes>[@<GPU name>], e.g. 3000000 or 3000000@Tesla T4 "
                "(a test hook: the batch probe's memory limit on a CPU); fix it or unset it"
            )
        return cls(int(budget), gpu.strip() or None)


def inject(value: str | None) -> None:
    """Install the test hook's memory limit (and GPU name) for this process's probes; nothing when
    unset (a test's own `memory_limit` then stands). Raises ValueError, naming the variable, on a bad value."""
    global memory_limit, injected
    if value:
        injected = InjectedMemory.parse(value)
        memory_limit = ActivationBudget(injected.budget)


# -------------------------------------------------------------------------------------- the probe
@dataclass
class ProbeSubject:
    """What one probe step trains: a stand-in model and optimizer, the AMP setting, the teacher."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp: torch.dtype | None
    image_size: int
    num_classes: int
    memory_format: torch.memory_format = torch.preserve_format
    teacher: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    """The distiller's loss (images, logits, hard loss) -> loss, when distilling."""


def fits(subject: ProbeSubject, size: int) -> bool:
    """Whether `STEPS_PER_TRIAL` training steps of `size` images run without running out of memory."""
    scaler = torch.amp.GradScaler(subject.device.type, enabled=subject.amp == torch.float16)
    ran_out = False
    try:
        for _ in range(STEPS_PER_TRIAL):
            with memory_limit():
                images = torch.randn(size, 3, subject.image_size, subject.image_size, device=subject.device)
                images = images.contiguous(memory_format=subject.memory_format)
                targets = torch.randint(0, subject.num_classes, (size,), device=subject.device)
                with torch.autocast(subject.device.type, dtype=subject.amp, enabled=subject.amp is not None):
                    logits = subject.model(images)
                    loss = nn.functional.cross_entropy(logits, targets)
                    if subject.teacher is not None:
                        loss = subject.teacher(images, logits, loss)
                subject.optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(subject.optimizer)
                scaler.update()
                del images, targets, logits, loss
            if subject.device.type == "cuda":
                torch.cuda.synchronize(subject.device)
        return True
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        ran_out = True
        return False
    finally:
        subject.optimizer.zero_grad(set_to_none=True)
        if ran_out:
            # The failed step's tensors may be held in reference cycles through the error's traceback:
            # free them before the next, smaller try. A step that fit freed its own on `del`, and a full
            # collection costs most of a trial (0.7 s of 1 s for mobilenet_v3_small at 32 px on a CPU).
            gc.collect()
        if subject.device.type == "cuda":
            torch.cuda.empty_cache()


def probe(subject: ProbeSubject, bound: int) -> Search:
    """The bisection on `subject`, timed and logged."""
    found = search(lambda size: fits(subject, size), bound)
    log.info(
        "batch probe: %d images fit%s (tried %s)",
        found.fits,
        "" if found.fails is None else f", {found.fails} did not",
        ", ".join(f"{size}{'' if ok else ' (out of memory)'}" for size, ok in found.trials),
    )
    return found


# --------------------------------------------------------------------------- the run's batch, kept
@dataclass(frozen=True)
class BatchChoice:
    """The run's batch: the global batch of every step and the most one GPU takes in one forward."""

    global_batch: int
    max_batch_per_gpu: int | None


def gpu_name(device: torch.device) -> str:
    if injected is not None and injected.gpu:
        return injected.gpu
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def choose(
    train: TrainSpec,
    storage: Storage,
    key: ProbeKey,
    train_images: int,
    subject: Callable[[], ProbeSubject],
    attempt: int,
    agree: Callable[[int], int] = lambda figure: figure,
    writes: bool = True,
) -> BatchChoice:
    """The batch of a run with `batch_size: auto` (see the module's docstring); `subject` builds what
    the probe trains, only when no cached figure exists for `key`. With several ranks, each probes its
    own GPU, `agree` gives the smallest figure of all, and only the rank that `writes` records."""
    auto = train.batch_size
    assert isinstance(auto, AutoBatch)
    per_gpu = agree(_cached_or_probed(storage, key, train_images, auto, subject, writes))
    chosen = _read_json(storage, layout.BATCH_CHOSEN)
    if chosen is None and not writes:  # the writing rank fixes it; every rank is handed its choice
        chosen = {"global_batch": _first_global(per_gpu, key, auto, train_images)}
    if chosen is None:
        global_batch = _first_global(per_gpu, key, auto, train_images)
        chosen = {"global_batch": global_batch, "attempt": attempt, "per_gpu": per_gpu, "probe": asdict(key)}
        try:
            storage.write_bytes(layout.BATCH_CHOSEN, json.dumps(chosen, indent=1).encode(), create_only=True)
        except FileExistsError:  # another rank (or a racing attempt) fixed it first: theirs stands
            chosen = _read_json(storage, layout.BATCH_CHOSEN)
        log.info("batch: global batch %d fixed for the whole run (%s)", chosen["global_batch"], key.name)
    global_batch = int(chosen["global_batch"])
    share = math.ceil(global_batch / key.world_size)
    cap = per_gpu if per_gpu < share else None
    if cap is not None:
        log.info(
            "batch: this GPU (%s) holds %d of the %d images a rank trains per step: %d micro-batches per step",
            key.gpu,
            per_gpu,
            share,
            math.ceil(share / per_gpu),
        )
    return BatchChoice(global_batch, cap)


def _first_global(per_gpu: int, key: ProbeKey, auto: AutoBatch, train_images: int) -> int:
    """The first attempt's global batch: every rank's figure, at most the cap and the training images."""
    return int(min(per_gpu * key.world_size, auto.auto or math.inf, max(train_images, key.world_size)))


def _cached_or_probed(
    storage: Storage,
    key: ProbeKey,
    train_images: int,
    auto: AutoBatch,
    subject: Callable[[], ProbeSubject],
    writes: bool = True,
) -> int:
    path = layout.batch_probe(key.name)
    cached = _read_json(storage, path)
    if cached is not None and cached.get("key") == asdict(key) and isinstance(cached.get("per_gpu"), int):
        log.info("batch probe: %d images per GPU, measured before on %s (%s)", cached["per_gpu"], key.gpu, path)
        return cached["per_gpu"]
    # No GPU needs to hold more than its share of the largest global batch the run may take.
    limit = min(auto.auto or math.inf, max(train_images, key.world_size))
    bound = math.ceil(limit / key.world_size) if limit != math.inf else 65536
    if key.gpu == "cpu":
        bound = min(bound, CPU_BOUND)
    probed = subject()
    with torch.random.fork_rng(devices=[probed.device] if probed.device.type == "cuda" else []):
        found = probe(probed, bound)
    del probed
    per_gpu = with_margin(found)
    record = {
        "key": asdict(key),
        "per_gpu": per_gpu,
        "largest_fit": found.fits,
        "smallest_failed": found.fails,
        "bound": bound,
        "margin": MARGIN,
        "trials": [{"batch": size, "fit": ok} for size, ok in found.trials],
        "probed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if writes:
        storage.write_bytes(path, json.dumps(record, indent=1).encode())
    return per_gpu


def subject_for(
    train: TrainSpec,
    num_classes: int,
    device: torch.device,
    amp: torch.dtype | None,
    memory_format: torch.memory_format = torch.preserve_format,
    teacher: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> ProbeSubject:
    """The job's model (architecture, head, frozen parameters) and optimizer on `device`, to probe."""
    from trainer.model import build_model, build_optimizer

    # Random weights (nothing downloaded) drawn off the run's RNG: the stand-in shapes memory only.
    with torch.random.fork_rng(devices=[]):
        model = build_model(train.model.model_copy(update={"weights": None, "weights_sha256": None}), num_classes)
    model = model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(model, train.optimizer)
    return ProbeSubject(model, optimizer, device, amp, train.data.image_size, num_classes, memory_format, teacher)


def resolve(
    train: TrainSpec,
    storage: Storage,
    device: torch.device,
    amp: torch.dtype | None,
    memory_format: torch.memory_format,
    classes: list[str],
    train_images: int,
    attempt: int,
    group,
    teacher: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> TrainSpec:
    """`train` with `batch_size: auto` resolved: the global batch and max_batch_per_gpu this attempt
    trains with (rank 0's choice on every rank of `group`, a trainer.distributed.Group)."""

    def subject() -> ProbeSubject:
        return subject_for(train, len(classes), device, amp, memory_format, teacher)

    if injected is not None:
        log.warning(
            "batch probe: %s is set (a test hook): at most %d bytes of activations%s",
            HOOK,
            injected.budget,
            f", the GPU named {injected.gpu!r}" if injected.gpu else "",
        )
    ranks = group.ranks
    key = ProbeKey(train.model.name, train.data.image_size, gpu_name(device), str(amp), ranks.world_size)
    choice = choose(
        train,
        storage,
        key,
        train_images,
        subject,
        attempt,
        agree=lambda figure: min(group.gather(figure)),
        writes=ranks.is_main,
    )
    choice = group.broadcast_object(choice)
    log.info(
        "batch: auto -> global batch %d%s",
        choice.global_batch,
        f", at most {choice.max_batch_per_gpu} per GPU forward" if choice.max_batch_per_gpu else "",
    )
    given = train.max_batch_per_gpu  # the job's own limit still holds
    cap = min(x for x in (choice.max_batch_per_gpu, given) if x) if choice.max_batch_per_gpu or given else None
    return train.model_copy(update={"batch_size": choice.global_batch, "max_batch_per_gpu": cap})


def _read_json(storage: Storage, path: str) -> dict | None:
    try:
        value = json.loads(storage.read_bytes(path))
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("batch: %s is not JSON; ignoring it", storage.url_of(path))
        return None
    return value if isinstance(value, dict) else None
