"""The training loop: fine-tune, validate, checkpoint, and stop cleanly when the instance is going away.

`Trainer(...).fit()` reads top to bottom: set up (or restore) every piece of state, then epochs of
steps. After each step the loop reaches a *boundary*: there it stops if a spot notice, SIGTERM or a
control stop arrived, and it lets the checkpointer decide whether to save. Everything that shapes the
next step is in `_state()`, so a run restored from any boundary continues bit for bit (CPU).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import trainer
from trainer import batch_probe, recipe, rng
from trainer import data as data_mod
from trainer.checkpoint import Checkpointer, CheckpointMismatch
from trainer.display import ConsoleProgress, format_metrics
from trainer.distill import distiller_for
from trainer.distributed import Group, Ranks, backward_in_micro_batches, split_batch
from trainer.ema import WeightsEma
from trainer.fetch import DataError, fetch
from trainer.job import layout
from trainer.job.spec import AutoBatch, JobSpec, TrainSpec
from trainer.job.storage import Storage
from trainer.metrics import EarlyStopping, Meter, Throughput
from trainer.model import build_model, build_optimizer, setup_lines
from trainer.preemption import InterruptionWatcher
from trainer.reporting import Reporter
from trainer.schedule import build_scheduler

log = logging.getLogger("trainer")


@dataclass
class Position:
    epoch: int = 0  # the epoch in progress (0-based)
    batch: int = 0  # batches of it already trained
    step: int = 0  # optimizer steps since the start of the run


@dataclass
class Outcome:
    status: str  # succeeded | interrupted | stopped
    step: int
    epoch: int
    reason: str | None = None
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    num_classes: int = 0
    val_images: int = 0


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 where the GPU supports it, else fp16 with a grad scaler; off on CPU."""
    if setting == "off":
        return None
    if device.type == "cuda":
        native_bf16 = _native_bf16()
        if setting == "bf16" and not native_bf16:
            log.warning("amp: this GPU has no native bf16; using fp16 with a grad scaler")
            return torch.float16
        if setting == "bf16" or (setting == "auto" and native_bf16):
            return torch.bfloat16
        return torch.float16
    if setting == "bf16":
        return torch.bfloat16  # CPU autocast supports bf16
    if setting == "fp16":
        log.warning("amp: fp16 needs a CUDA GPU; training in fp32")
    return None


def _native_bf16() -> bool:
    """bf16 in hardware (Ampere and newer); torch would otherwise count slow emulation as support."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.4 had no emulation to count
        return torch.cuda.is_bf16_supported()


def train_fingerprint(train: TrainSpec) -> dict:
    """The spec fields a checkpoint must agree with to be resumed (not: how often to save, export
    formats, TensorBoard, worker count or the bad-image threshold, which never change the result)."""
    return train.model_dump(
        mode="json",
        # max_batch_per_gpu: micro-batches add up to the same gradient, so another GPU may resume with its own.
        exclude={
            "checkpoint": True,
            "export": True,
            "tensorboard": True,
            "max_batch_per_gpu": True,
            "data": {"workers", "max_bad_images"},
        },
    )


def checkpoint_identity(train: TrainSpec, classes: list[str]) -> dict:
    """What a checkpoint must match to be loaded into a run (or exported from): model, classes, spec."""
    return {"model": train.model.name, "classes": classes, "train": train_fingerprint(train)}


class Trainer:
    def __init__(
        self,
        spec: JobSpec,
        job_id: str,
        storage: Storage,
        reporter: Reporter,
        watcher: InterruptionWatcher,
        display: ConsoleProgress,
        cache_dir: Path,
        attempt: int = 1,
        sample_every: int | None = None,
        group: Group | None = None,
    ):
        self.spec, self.train, self.job_id = spec, spec.train, job_id
        self.storage, self.reporter, self.watcher, self.display, self.attempt = (
            storage,
            reporter,
            watcher,
            display,
            attempt,
        )
        # The process group (one process: a group of one whose collectives do nothing).
        self.group = group or Group(Ranks())
        self.ranks = self.group.ranks
        self.device = self.group.device
        # channels_last feeds cuDNN's fastest convolution kernels; on CPU it brings nothing here.
        self.memory_format = torch.channels_last if self.device.type == "cuda" else torch.preserve_format

        reporter.update(phase="downloading data")
        reporter.beat_now()
        marks = {"start": time.monotonic()}
        with one_machine_process_at_a_time(cache_dir):  # a machine's ranks share one download
            train_root = fetch(self.train.data.train, "train.data.train", cache_dir, display.downloading)
            val_root = (
                fetch(self.train.data.val, "train.data.val", cache_dir, display.downloading)
                if self.train.data.val
                else None
            )
        self.amp = amp_dtype(self.train.amp, self.device)
        auto = isinstance(self.train.batch_size, AutoBatch)
        found = data_mod.scan(train_root, "train.data.train") if auto or self.train.distill else None
        self.distiller = distiller_for(spec, found.classes, self.device, self.memory_format) if found else None
        if auto:  # the spec as this attempt trains it: the global batch fixed by the first attempt
            self.train = batch_probe.resolve(
                self.train, storage, self.device, self.amp, self.memory_format, found.classes, len(found.samples),
                attempt, self.group, self.distiller.loss if self.distiller else None,
            )  # fmt: skip
        self.plan = split_batch(self.train.batch_size, self.ranks.world_size, self.train.max_batch_per_gpu)
        self.data = data_mod.build(
            self.train.data,
            self.train.model,
            self.train.seed,
            self.train.batch_size,
            train_root,
            val_root,
            pin_memory=self.device.type == "cuda",
            rank=self.ranks.rank,
            world_size=self.ranks.world_size,
        )
        self.classes = self.data.classes
        marks["data"] = time.monotonic()
        if self.train.model.num_classes not in (None, len(self.classes)):
            raise DataError(
                f"train.model.num_classes is {self.train.model.num_classes} but the training data has {len(self.classes)} class folders; remove num_classes or fix the data"
            )

        torch.manual_seed(self.train.seed)  # the new head's initial weights are part of the run
        self.model = build_model(self.train.model, len(self.classes)).to(self.device, memory_format=self.memory_format)
        # The forward and backward of training go through DDP (gradients averaged over the ranks in
        # buckets, overlapped with the backward); state, validation and exports use the module itself.
        self.forward_model: nn.Module = self.model
        if self.ranks.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.optimizer = build_optimizer(self.model, self.train.optimizer)
        self.scheduler = build_scheduler(self.optimizer, self.train, self.data.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.train.label_smoothing)  # takes soft targets too
        self.mixer = recipe.build_mixer(self.train.data.augmentation, len(self.classes), self.train.seed)
        self.ema = (
            WeightsEma(
                self.model, self.train.ema, self.train.batch_size, self.train.epochs, self.train.scheduler.warmup_epochs
            )
            if self.train.ema
            else None
        )
        # With EMA on, the averaged model is the one kept as best and exported, picked by its own metric.
        metric = self.train.early_stopping.metric
        self.best_metric = f"ema_{metric}" if self.ema and metric.startswith("val_") else metric
        # Compiled for training only (DDP inside, as torch.compile expects): state dicts, validation
        # and export use the plain module.
        if self.train.compile:
            self.forward_model = torch.compile(self.forward_model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        for line in setup_lines(self.train, self.model, self.optimizer, self.amp, self.device):
            log.info("%s", line)

        marks["model"] = time.monotonic()
        identity = checkpoint_identity(spec.train, self.classes)  # as written: batch_size auto, not its figure
        ckpt = self.train.checkpoint
        writes, world = self.ranks.is_main, self.ranks.world_size
        self.best = Checkpointer(
            storage, layout.BEST, keep=1, identity=identity, kind="best", writes=writes, world_size=world
        )
        self.checkpoints = Checkpointer(
            storage,
            layout.CHECKPOINTS,
            keep=ckpt.keep,
            every_steps=ckpt.every_steps,
            every_seconds=ckpt.every_seconds,
            identity=identity,
            depends_on=self.best,  # a checkpoint that records a new best commits only after best/ holds that model
            writes=writes,
            world_size=world,
        )
        self.stopper = EarlyStopping(self.train.early_stopping)
        self.position = Position()
        self.epoch_meter = Meter(self.device)
        self.history: list[dict] = []
        self.bad_images: set[str] = set()
        self.sample_every = sample_every or max(1, self.data.steps_per_epoch // 20)
        self.throughput = Throughput()
        self._loud_worker_exits: Callable[[], None] | None = None  # undoes quiet_worker_exits_after_a_stop
        self._restore()
        if reporter.events is not None:  # TensorBoard: this attempt's plot continues from the step resumed
            reporter.events.begin(self.position.step)
        marks["restore"] = time.monotonic()
        self.startup = {
            "imports_s": marks["start"] - trainer.STARTED,
            "data_s": marks["data"] - marks["start"],
            "model_s": marks["model"] - marks["data"],
            "restore_s": marks["restore"] - marks["model"],
            "checkpoint": self.checkpoints.load_timings or None,
        }

    # ------------------------------------------------------------------------------------- the loop
    def fit(self) -> Outcome:
        spe, epochs = self.data.steps_per_epoch, self.train.epochs
        self.display.start(spe * epochs, self.position.step)
        # Early stopping is decided before an epoch starts, so a run resumed after the deciding epoch's
        # checkpoint stops exactly where the uninterrupted one did.
        while self.position.epoch < epochs and not self.stopper.should_stop:
            self.model.train()
            self.data.train_sampler.set_position(self.position.epoch, self.position.batch)
            self.reporter.update(
                phase="training",
                epoch=self.position.epoch + 1,
                epochs=epochs,
                steps_per_epoch=spe,
                total_steps=spe * epochs,
                batch_size=self.train.batch_size,
                data_workers=self.train.data.workers,
                ranks=self.ranks.world_size,
            )
            window = _Window(self.device)
            batches = iter(self.data.train_loader)
            if self._loud_worker_exits is None:  # torch's SIGCHLD handler exists from the first iter()
                self._loud_worker_exits = data_mod.quiet_worker_exits_after_a_stop(self._stop_requested)
            while True:
                started = time.perf_counter()
                batch = self._next_batch(batches)
                if batch is _DATA_LOST:
                    return self._stop_now()
                if batch is None:
                    break
                window.waited += time.perf_counter() - started
                self._train_step(*batch, window.meter)
                if "first_step_s" not in self.startup:
                    self._note_first_step()
                self.position.batch += 1
                self.position.step += 1
                window.images += 0 if batch[1] is None else len(batch[1])
                window.steps += 1
                if self.position.step % self.sample_every == 0:
                    self._report_window(window, time.perf_counter())
                    window = _Window(self.device)
                # The epoch's last step is saved after validation (below), with its results; only a
                # stop is acted on here, so it does not wait for the whole validation.
                if (outcome := self._boundary(periodic=self.position.batch < spe)) is not None:
                    return outcome
            if not self._end_epoch():  # stopped during validation: resume validates this epoch again
                return self._stop_now()
            if (outcome := self._boundary(force=True)) is not None:
                return outcome
        if self.stopper.should_stop:
            log.info(
                "early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)",
                self.best_metric,
                self.stopper.bad_epochs,
                self.stopper.best,
                self.stopper.best_epoch + 1,
            )
        self.reporter.update(phase="checkpointing")
        self.checkpoints.wait()
        self.best.wait()
        self._note_checkpoint()
        if self.train.export.formats and self.ranks.is_main:
            try:
                self.export()
            except Exception as exc:  # the training succeeded: an export problem (storage, say) must not say otherwise
                log.error(
                    "export failed (%s: %s); the trained model is under best/ and checkpoints/: `python -m trainer export --job URL` tries again",
                    type(exc).__name__,
                    exc,
                )
        return self._outcome("succeeded")

    def close(self) -> None:
        """End the data workers and give back the SIGCHLD handler; the run's objects stay readable."""
        self.data.close()
        if self._loud_worker_exits is not None:
            self._loud_worker_exits()
            self._loud_worker_exits = None

    def export(self, formats: list[str] | None = None) -> dict:
        """The best model (else the final one) in `formats` (default: the spec's), under artifacts/
        (trainer.export); returns the manifest. Run again after an interruption here, it exports
        again: nothing counts before the manifest is written."""
        from trainer.export import export_artifacts, export_data

        self.reporter.update(phase="exporting")
        self.reporter.beat_now()
        loaded = self.best.load_latest()
        best_state = loaded[1] if loaded else None
        metrics = best_state["metrics"] if best_state else (self.history[-1] if self.history else None)
        step = loaded[0].step if loaded else self.position.step  # the step of the checkpoint the model comes from
        return export_artifacts(
            self.storage,
            self.train,
            self.model,
            best_state,
            self.classes,
            data_mod.normalization(self.train.model),
            self.job_id,
            step,
            metrics,
            export_data(self.data, self.train),
            formats,
        )

    def _train_step(self, images: torch.Tensor | None, targets: torch.Tensor | None, bad: list, meter: Meter) -> None:
        self._count_bad(bad)
        if images is None:  # every image of the batch failed to decode: keep the lr schedule in step
            self.scheduler.step()
            return
        self.optimizer.zero_grad(set_to_none=True)
        # Each micro-batch of each rank mixes with its own draws, keyed by its place in the global batch.
        epoch, batch = self.position.epoch, self.position.batch
        parts = itertools.count(self.ranks.rank * self.plan.accumulation)
        trained = backward_in_micro_batches(
            self.forward_model,
            lambda model, x, y: self._forward(x, y, mix_at=(epoch, batch, next(parts)), model=model, teach=True),
            images,
            targets,
            self.plan,
            self.ranks.world_size,
            self.train.batch_size,
            backward=lambda loss: self.scaler.scale(loss).backward(),
        )
        for logits, micro_targets, loss in trained:
            labels = recipe.hard_labels(micro_targets)  # with mixup/cutmix: each mixed image's dominant class
            meter.add(loss, logits, labels)
            self.epoch_meter.add(loss, logits, labels)
        if self.train.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
            nn.utils.clip_grad_norm_(self.trainable, self.train.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.after_step(self.model, self.position.epoch, self.position.batch)

    def _next_batch(self, batches):
        """The loader's next batch; None at its end; _DATA_LOST when a data worker died after a stop
        was requested (the machine going away took it): the loop then saves the step it reached."""
        try:
            return next(batches, None)
        except RuntimeError as exc:
            if not self._stop_requested():
                raise
            log.warning("data: %s after the stop request; saving the step reached", str(exc).strip())
            return _DATA_LOST

    def _stop_requested(self) -> bool:
        return self.watcher.interrupt.is_set() or self.reporter.stop_requested.is_set()

    def _agree_on_stop(self, save_due: bool = False) -> tuple[bool, bool]:
        """(stop, save) as every rank sees them: any rank's notice, SIGTERM or control stop, and rank
        0's checkpoint clock, in one all_reduce; a rank told by another takes up its reason."""
        agreed = self.group.agree(
            interrupt=self.watcher.interrupt.is_set(), stop=self.reporter.stop_requested.is_set(), save=save_due
        )
        if agreed["interrupt"] and not self.watcher.interrupt.is_set():
            self.watcher.trigger("another training process was interrupted")
        if agreed["stop"] and not self.reporter.stop_requested.is_set():
            self.reporter.stop_reason = self.reporter.stop_reason or "stop requested"
            self.reporter.stop_requested.set()
        return agreed["interrupt"] or agreed["stop"], agreed["save"]

    def _boundary(self, periodic: bool = True, force: bool = False) -> Outcome | None:
        """Between two steps: stop if asked to, else let the checkpointer save when due (forced at an
        epoch end and on a rebalance recommendation)."""
        rebalance = self.watcher.take_rebalance()
        due = (periodic or force) and (force or rebalance or self.checkpoints.due(self.position.step))
        stop, save = self._agree_on_stop(save_due=due and self.ranks.is_main or rebalance)
        if stop:
            return self._stop_now()
        if save and self.checkpoints.save(self.position.step, self._state, self._meta(), force=True):
            self._note_checkpoint()
        return None

    def _stop_now(self) -> Outcome:
        """Commit this step's state (after the upload in flight) and leave: interrupted or stopped."""
        self.reporter.update(phase="checkpointing")
        self.reporter.beat_now()
        if self.reporter.events is not None:  # its last segment uploads beside the checkpoint, not after it
            self.reporter.events.rotate()
        try:
            self.checkpoints.wait()
        except Exception as exc:  # an older save failed; this one is what matters now
            log.error(
                "checkpoint: an earlier save failed (%s: %s); saving the final one anyway", type(exc).__name__, exc
            )
        self.checkpoints.save(self.position.step, self._state, self._meta(), force=True)
        self.checkpoints.wait()
        self.best.wait()
        self._note_checkpoint()
        if self.watcher.interrupt.is_set():
            return self._outcome("interrupted", self.watcher.reason)
        return self._outcome("stopped", self.reporter.stop_reason)

    def _end_epoch(self) -> bool:
        """Validate, record the epoch, keep the best model and move to the next epoch. False when a
        stop arrived during validation (nothing of this epoch's end is recorded then)."""
        epoch = self.position.epoch
        train_metrics = self._read(self.epoch_meter, "train_")
        self.reporter.update(phase="validating")
        val_metrics = self.evaluate(stop_early=True)
        if val_metrics is None:
            return False
        if self.ema is not None:
            ema_metrics = self.evaluate(stop_early=True, model=self.ema.module, prefix="ema_val_")
            if ema_metrics is None:
                return False
            val_metrics.update(ema_metrics)
        record = {
            "epoch": epoch + 1,
            "step": self.position.step,
            "lr": self.optimizer.param_groups[-1]["lr"],
            **train_metrics,
            **val_metrics,
        }
        self.history.append(record)
        self.reporter.metrics.record("epoch", **record)
        log.info("epoch %d/%d done: %s", epoch + 1, self.train.epochs, _brief(record))
        metric = self.best_metric
        if self.stopper.update(record[metric], epoch):
            log.info("best model so far (%s %.4f); saving it under best/", metric, record[metric])
            kept = self.ema.module if self.ema is not None else self.model
            best = {"model": kept.state_dict(), "classes": self.classes, "epoch": epoch + 1, "metrics": record}
            self.best.save(
                self.position.step,
                lambda: best,
                {"epoch": epoch + 1, "metric": metric, "value": record[metric], "metrics": record},
                force=True,
            )
        self.position = Position(epoch + 1, 0, self.position.step)
        self.epoch_meter = Meter(self.device)
        self.reporter.update(
            phase="training", **{k: v for k, v in record.items() if k.startswith(("val_", "ema_val_"))}
        )
        self.reporter.beat_now()
        return True

    @torch.no_grad()
    def evaluate(
        self, stop_early: bool = False, model: nn.Module | None = None, prefix: str = "val_"
    ) -> dict[str, float] | None:
        """Validation loss and accuracy of `model` (default: the one trained); None if `stop_early` and
        a stop arrived meanwhile, or if the data workers went with the machine after a stop."""
        model = model if model is not None else self.model
        model.eval()
        meter = Meter(self.device)
        batches = iter(self.data.val_loader)
        self.group.broadcast_buffers(model)  # rank 0's BatchNorm statistics are the model's
        while (batch := self._next_batch(batches)) is not None:
            if batch is _DATA_LOST or (stop_early and self._agree_on_stop()[0]):
                model.train()
                return None
            images, targets, bad = batch
            self._count_bad(bad)
            if images is None:
                continue
            logits, targets, loss = self._forward(images, targets, model=model)
            meter.add(loss, logits, targets)
        model.train()
        return self._read(meter, prefix)

    def _read(self, meter: Meter, prefix: str) -> dict[str, float]:
        """A meter's figures over every rank's images (each rank measured its own shard)."""
        if not self.ranks.distributed:
            return meter.read(prefix)
        total = Meter(self.device)
        total.sums = self.group.sum_(meter.sums.clone())
        total.count = int(self.group.sum_(torch.tensor([meter.count], device=self.device)).item())
        return total.read(prefix)

    def _forward(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        mix_at: tuple[int, int, int] | None = None,
        model: nn.Module | None = None,
        teach: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, targets on the device, loss) under the run's autocast. `mix_at`: a training
        micro-batch's (epoch, batch, part), which seeds its mixup/cutmix (the targets come back soft
        then); `model`: the module to run (default: the one trained, unwrapped); `teach`: the
        training loss, with the teacher's term when distilling (validation's loss is the labels' alone)."""
        images = self.data.to_device(images, self.device, self.memory_format)  # uint8 moved, normalised there
        targets = targets.to(self.device, non_blocking=True)
        if mix_at is not None and self.mixer is not None:
            images, targets = self.mixer(images, targets, *mix_at)
        forward = model if model is not None else self.model
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits = forward(images)
            loss = self.criterion(logits, targets)
            if teach and self.distiller is not None:
                loss = self.distiller.loss(images, logits, loss)
            return logits, targets, loss

    # ----------------------------------------------------------------------------- state and restore
    def _state(self) -> dict:
        """Everything that shapes the next step. Called only when the checkpointer decides to save, on
        every rank at once (its collectives: rank 0's BatchNorm statistics, every rank's RNG and meter)."""
        self.group.broadcast_buffers(self.model)
        per_rank = self.group.gather(
            {
                "rng": rng.capture(),
                "epoch_meter": {"sums": self.epoch_meter.sums.cpu(), "count": self.epoch_meter.count},
            }
        )
        return {
            "ranks": per_rank if self.ranks.distributed else None,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "position": asdict(self.position),
            "epoch_meter": {"sums": self.epoch_meter.sums, "count": self.epoch_meter.count},
            "early_stopping": self.stopper.state_dict(),
            "history": self.history,
            "bad_images": sorted(self.bad_images),
            "rng": rng.capture(),
            "classes": self.classes,
            "param_groups": [group["name"] for group in self.optimizer.param_groups],
            "threads": torch.get_num_threads(),
            "amp": str(self.amp),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        } | ({"teacher": self.distiller.identity} if self.distiller else {})

    def _meta(self) -> dict:
        return {
            "epochs_completed": self.position.epoch,
            "batch": self.position.batch,
            "attempt": self.attempt,
            "metrics": self.history[-1] if self.history else None,
        } | ({"teacher": self.distiller.identity} if self.distiller else {})

    def _restore(self) -> None:
        # On the CPU: load_state_dict copies to the parameters' device, and RNG states must stay on the CPU.
        found = self.checkpoints.load_latest(map_location="cpu")
        if found is None:
            log.info("no checkpoint under %s: starting from the beginning", self.storage.url_of(layout.CHECKPOINTS))
            self.reporter.update(resumed_from_step=0)
            return
        committed, state = found
        groups = [group["name"] for group in self.optimizer.param_groups]
        if state["param_groups"] != groups:
            raise CheckpointMismatch(
                f"checkpoint step {committed.step} has parameter groups {state['param_groups']}, this run has {groups}; use a new job name"
            )
        if self.distiller is not None:
            self.distiller.check_resume(state.get("teacher"))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        amp = str(self.amp)
        if state.get("amp", amp) == amp:
            self.scaler.load_state_dict(state["scaler"])
        else:  # another GPU type since (an interruption moved the job): a fresh scaler, said out loud
            log.warning(
                "resume: the checkpoint trained with AMP %s, this GPU uses %s; the grad scaler starts afresh",
                state["amp"],
                amp,
            )
        self.position = Position(**state["position"])
        meter, generators = self._rank_state(state)
        self.epoch_meter.sums.copy_(meter["sums"])
        self.epoch_meter.count = meter["count"]
        self.stopper.load_state_dict(state["early_stopping"])
        self.history = list(state["history"])
        self.bad_images = set(state["bad_images"])
        if self.ema is not None:  # the spec's fingerprint makes sure the checkpoint had one too
            self.ema.load_state_dict(state["ema"])
        rng.restore(generators)
        if state["threads"] != torch.get_num_threads():
            log.warning(
                "resume: the checkpoint was written with %d CPU threads, this process has %d; results may differ in the last bits",
                state["threads"],
                torch.get_num_threads(),
            )
        self.checkpoints.resume_from(committed)
        # With the last step reached, the step resumed from is what an interruption cost.
        self.reporter.update(resumed_from_step=committed.step)
        log.info(
            "resumed from checkpoint step %d (epoch %d, batch %d of %d)",
            committed.step,
            self.position.epoch + 1,
            self.position.batch,
            self.data.steps_per_epoch,
        )

    def _rank_state(self, state: dict) -> tuple[dict, dict]:
        """(epoch meter, RNG states) of this rank in a checkpoint. Written by as many ranks as run now:
        each rank's own, bit for bit. Written by another number of ranks (a recovery on another
        machine): the same samples in the same order, equal in expectation, not bitwise. Rank 0 takes
        the first rank's RNG states and the meters' total, the others start their meters at zero."""
        saved = state.get("ranks") or [{"rng": state["rng"], "epoch_meter": state["epoch_meter"]}]
        if len(saved) == self.ranks.world_size:
            own = saved[self.ranks.rank]
            return own["epoch_meter"], own["rng"]
        log.warning(
            "resume: the checkpoint was written by %d training processes, this run has %d; "
            "the same samples follow in the same order, results equal in expectation, not bit for bit",
            len(saved),
            self.ranks.world_size,
        )
        if self.ranks.is_main:
            sums = sum(entry["epoch_meter"]["sums"] for entry in saved)
            count = sum(entry["epoch_meter"]["count"] for entry in saved)
        else:
            sums, count = torch.zeros_like(self.epoch_meter.sums), 0
        return {"sums": sums, "count": count}, saved[0]["rng"]

    # --------------------------------------------------------------------------------------- helpers
    def _count_bad(self, bad: list) -> None:
        for item in bad:
            if item.path not in self.bad_images:
                self.bad_images.add(item.path)
                log.warning("data: skipping %s (%s)", item.path, item.reason)
        limit = self.train.data.max_bad_images * (self.data.train_size + self.data.val_size)
        if len(self.bad_images) > limit:
            raise DataError(
                f"train.data: {len(self.bad_images)} of {self.data.train_size + self.data.val_size} images failed to decode, more than "
                f"max_bad_images ({self.train.data.max_bad_images:.0%}) allows; e.g. {sorted(self.bad_images)[0]}; fix or remove them, or raise data.max_bad_images"
            )

    def _report_window(self, window: _Window, now: float) -> None:
        values = self._read(window.meter, "")
        if values and not torch.isfinite(torch.tensor(values["loss"])):
            raise FloatingPointError(
                f"the training loss became {values['loss']} at step {self.position.step}; lower optimizer.lr or set grad_clip_norm"
            )
        # Every rank trains its share at the same pace: the machine's images are world_size times one rank's.
        images = window.images * self.ranks.world_size
        self.throughput.add(now, max(now - window.started, 1e-9), images, window.steps, window.waited)
        images_per_sec, data_wait, seconds_per_step = self.throughput.read()
        fields = {
            "step": self.position.step,
            "epoch": self.position.epoch + 1,  # 1-based in everything a person reads
            "batch": self.position.batch,
            "lr": self.optimizer.param_groups[-1]["lr"],
            # One measure for the log line, the heartbeat and the metrics: the last minute of training.
            "images_per_sec": images_per_sec,
            "data_wait_fraction": data_wait,
            # Training steps left at that pace (validation and saves not included).
            "eta_s": round((self.data.steps_per_epoch * self.train.epochs - self.position.step) * seconds_per_step, 1),
            **values,
        }
        self.reporter.update(**fields)
        self.reporter.metrics.record("step", **fields)
        self.display.update(
            self.position.step,
            self.position.epoch,
            self.train.epochs,
            {k: fields.get(k) for k in ("loss", "acc1", "lr", "images_per_sec")},
        )
        self._note_checkpoint()

    def _note_first_step(self) -> None:
        self.startup["first_step_s"] = time.monotonic() - trainer.STARTED
        self.reporter.update(startup={k: round(v, 3) if isinstance(v, float) else v for k, v in self.startup.items()})
        log.info(
            "first step %.1fs after start (imports %.1fs, data %.1fs, model %.1fs, restore %.1fs)",
            self.startup["first_step_s"],
            self.startup["imports_s"],
            self.startup["data_s"],
            self.startup["model_s"],
            self.startup["restore_s"],
        )

    def _note_checkpoint(self) -> None:
        committed = self.checkpoints.last_committed
        if committed is not None:
            self.reporter.update(
                last_checkpoint_step=committed.step,
                last_checkpoint_time=self.checkpoints.last_commit_time,
                checkpoints_not_deleted=len(self.checkpoints.undeleted) + len(self.best.undeleted),
            )

    def _outcome(self, status: str, reason: str | None = None) -> Outcome:
        best = None
        if self.stopper.best is not None:
            best = {
                "metric": self.best_metric,
                "value": self.stopper.best,
                "epoch": self.stopper.best_epoch + 1,
            }
        return Outcome(
            status,
            self.position.step,
            self.position.epoch,
            reason,
            self.history,
            best,
            len(self.classes),
            self.data.val_size,
        )


@contextlib.contextmanager
def one_machine_process_at_a_time(cache_dir: Path):
    """Hold the data cache's lock: a machine's DDP ranks fetch in turn, so the first downloads and the
    others find the cache (a file lock, not a collective: a download may outlast the collective timeout)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".fetch.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_DATA_LOST = object()  # _next_batch: the data went with the machine after a stop request


class _Window:
    """Throughput, data wait and metrics over the steps since the last report."""

    def __init__(self, device: torch.device):
        self.started = time.perf_counter()
        self.meter = Meter(device)
        self.images = 0
        self.steps = 0
        self.waited = 0.0


def _brief(record: dict) -> str:
    return format_metrics({k: v for k, v in record.items() if k not in ("epoch", "step")})
