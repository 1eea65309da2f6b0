"""Checkpoint stall: how long one save holds up the train loop, vs saving synchronously.

State: torchvision resnet50 (weights=None) and its SGD(momentum=0.9) state after one step (~205 MB),
saved to S3 on a moto server on 127.0.0.1 (testbed/harness.py; it runs in this process).

  sync   torch.save(state) to a temporary file + trainer.job.storage.Storage.upload(): what a loop without
         background checkpointing waits for at every save;
  stall  the call Checkpointer(storage).save(step, state_fn, force=True) alone: the copy to host memory
         that the loop waits for, after which a background thread serialises, hashes, uploads and
         commits. wait() is called outside the timed region; the checkpoint must then be the committed
         latest one. The time from save() to commit is reported as `background`.

The two alternate (sync, stall, sync, stall, ...) and the medians are compared. The size is the
committed state file's, from its manifest.

Run:    python -m bench.checkpoint_stall [--quick] [--json PATH]   (from the repository root)
Target: stall / sync <= 0.10
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from bench.common import moto_bucket, parser, print_table, quiet_logging, verdict, write_json
from trainer.checkpoint import STATE_FILE, Checkpointer
from trainer.job.storage import Storage

TARGET = 0.10


def model_and_optimizer(name: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model after one SGD step, so the optimizer holds a momentum buffer per parameter."""
    model = models.get_model(name, weights=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, targets = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    nn.functional.cross_entropy(model(images), targets).backward()
    optimizer.step()
    return model, optimizer


def timed_sync_save(state: dict, storage: Storage, key: str, spool: Path) -> float:
    started = time.perf_counter()
    local = spool / "state.pt"
    torch.save(state, local)
    storage.upload(str(local), key)
    seconds = time.perf_counter() - started
    local.unlink()
    storage.delete(key)  # keep moto's memory flat
    return seconds


def timed_checkpointer_save(checkpointer: Checkpointer, step: int, state_fn) -> dict:
    started = time.perf_counter()
    checkpointer.save(step, state_fn, {"bench": True}, force=True)
    stall = time.perf_counter() - started
    checkpointer.wait()  # not part of the stall: the loop would be training meanwhile
    background = time.perf_counter() - started - stall
    committed = checkpointer.latest()
    if committed is None or committed.step != step:
        raise RuntimeError(f"checkpoint step {step} was not committed (latest: {committed and committed.step})")
    return {"stall_s": stall, "background_s": background, "bytes": committed.manifest["files"][STATE_FILE]["size"]}


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--model", default="resnet50", help="torchvision model (default resnet50)")
    options.add_argument("--repeats", type=int, default=5, help="saves of each kind, alternating (default 5)")
    args = options.parse_args()
    if args.quick:
        args.model, args.repeats = "resnet18", 2
    quiet_logging()

    model, optimizer = model_and_optimizer(args.model)
    state_fn = lambda: {"model": model.state_dict(), "optimizer": optimizer.state_dict()}  # noqa: E731  as Trainer._state: references, no copies
    runs = []
    with moto_bucket() as bucket, tempfile.TemporaryDirectory(prefix="bench-ckpt-") as spool:
        storage = Storage(f"{bucket}/job")
        checkpointer = Checkpointer(storage, "checkpoints", keep=2)
        for step in range(1, args.repeats + 1):
            sync = timed_sync_save(state_fn(), storage, f"sync/{step}/state.pt", Path(spool))
            runs.append({"repeat": step, "sync_s": sync, **timed_checkpointer_save(checkpointer, step, state_fn)})
            print(f"repeat {step}: sync {sync:.2f} s, stall {runs[-1]['stall_s']:.3f} s", flush=True)

    median = {key: statistics.median(r[key] for r in runs) for key in ("sync_s", "stall_s", "background_s")}
    size_mb = runs[-1]["bytes"] / 1e6
    ratio = median["stall_s"] / median["sync_s"]
    print()
    print_table(
        ["repeat", "sync s", "stall s", "background s", "stall/sync"],
        [[r["repeat"], r["sync_s"], r["stall_s"], r["background_s"], r["stall_s"] / r["sync_s"]] for r in runs],
    )
    print(f"\n{args.model} + SGD momentum: checkpoint {size_mb:.1f} MB")
    print(
        f"median: sync {median['sync_s']:.3f} s, stall {median['stall_s']:.3f} s, background upload {median['background_s']:.3f} s"
    )
    passed = verdict(ratio, TARGET, higher_is_better=False)
    config = {"model": args.model, "repeats": args.repeats, "quick": args.quick, "storage": "s3 (moto, in process)"}
    write_json(
        args.json,
        {
            "benchmark": "checkpoint_stall",
            "config": config,
            "checkpoint_mb": size_mb,
            "runs": runs,
            "median": median,
            "ratio": ratio,
            "target": TARGET,
            "pass": passed,
        },
    )


if __name__ == "__main__":
    main()
