"""Running the real trainer (`python -m trainer run`) as a separate process, as the instance does, and
reading what it left in storage. Shared by the trainer's end-to-end tests and the benchmarks."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from trainer.job import layout
from trainer.job.storage import Storage

REPO = Path(__file__).resolve().parent.parent


def write_job(path: Path, storage: str, train: str, val: str | None = None, name: str = "job", **overrides) -> Path:
    """A job file for a small, fast, augmented run (mobilenet_v3_small has dropout and BatchNorm)."""
    spec = {
        "name": name,
        "storage": storage,
        "train": {
            "model": {"name": "mobilenet_v3_small", "weights": None},
            "data": {"train": train, "val": val, "image_size": 32, "workers": 0, "augmentation": {"color_jitter": 0.2}},
            "optimizer": {"name": "sgd", "lr": 0.05},
            "scheduler": {"name": "cosine", "warmup_epochs": 0.5},
            "epochs": 3,
            "batch_size": 6,
            "checkpoint": {"every_steps": 2, "every_seconds": None, "keep": 2},
            "seed": 7,
            "export": {"formats": []},
        },
    }
    for dotted, value in overrides.items():
        node = spec
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    if spec["train"]["data"]["val"] is None:
        del spec["train"]["data"]["val"]
    import yaml

    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def trainer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOTCTL_", "AWS_"))}
    env.update({"AWS_EC2_METADATA_DISABLED": "true", "PYTHONPATH": str(REPO), "SPOTCTL_HEARTBEAT_SECONDS": "1"})
    env.update(extra or {})
    return env


def start_trainer(
    job: str,
    env: dict[str, str],
    log: Path | None = None,
    own_group: bool = False,
    ranks: int = 1,
    node: tuple[int, int, int] | None = None,
) -> subprocess.Popen:
    """`own_group`: in a new session, so the test can signal its whole process group (data workers
    included), as `timeout`, systemd at shutdown and Slurm do. `ranks` above 1: under torchrun, as
    the bootstrap runs it on a machine with that many GPUs (gloo ranks on the CPU here). `node`
    (node rank, nodes, master port): one node of several under torchrun, node 0 on 127.0.0.1 the
    master, as the bootstrap runs it after the rendezvous."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child writes to it after we return
    launcher = [sys.executable]
    if ranks > 1 or node is not None:
        # One CPU thread per rank: the ranks share this machine's cores (and a checkpoint records it).
        env = {"OMP_NUM_THREADS": "1", **env}
        where = (
            [f"--nnodes={node[1]}", f"--node-rank={node[0]}", "--master-addr=127.0.0.1", f"--master-port={node[2]}"]
            if node is not None
            else ["--standalone"]
        )
        launcher += [
            "-m",
            "torch.distributed.run",
            *where,
            "--nproc-per-node",
            str(ranks),
            "--max-restarts",
            "0",
        ]
    return subprocess.Popen(
        [*launcher, "-m", "trainer", "run", "--job", job],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=own_group,
    )


def run_trainer(job: str, env: dict[str, str], timeout: float = 300, log: Path | None = None, ranks: int = 1) -> int:
    process = start_trainer(job, env, log, ranks=ranks)
    return process.wait(timeout=timeout)


def rank_pids(process: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the training processes a torchrun `process` started (read from /proc)."""
    from orchestrator.local.runner import machine_processes

    found = {}
    for pid in machine_processes(process.pid) - {process.pid}:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        values = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if b"RANK" in values and b"TORCHELASTIC_RUN_ID" in values:
            # A rank's data workers inherit its environment: the rank is the one whose parent is torchrun.
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == process.pid:
                found[int(values[b"RANK"])] = pid
    return found


def kill_machine(process: subprocess.Popen) -> None:
    """SIGKILL to a trainer and every process under it, torchrun's ranks (each in a session of its
    own) and their data workers included: the machine's power going."""
    from orchestrator.local.runner import machine_processes

    for pid in machine_processes(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    process.wait(timeout=60)


def wait_for(predicate, timeout: float = 120, poll: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def kill_when(process: subprocess.Popen, ready, sig: int, delay: float = 0.0, timeout: float = 120) -> int:
    """Send `sig` once `ready()` is true (plus `delay` seconds); returns the exit code."""
    if not wait_for(lambda: ready() or process.poll() is not None, timeout):
        process.kill()
        raise TimeoutError("the trainer never reached the point to interrupt it")
    time.sleep(delay)
    if process.poll() is None:
        process.send_signal(sig)
    return process.wait(timeout=120)


def exists(url: str) -> bool:
    """Whether the object is there (S3's 403 for a missing key read as the trainer reads it)."""
    folder, name = url.rstrip("/").rsplit("/", 1)
    store = Storage(folder)
    store.fs.invalidate_cache()
    return store.exists(name)


def read_json(url: str):
    folder, name = url.rstrip("/").rsplit("/", 1)
    store = Storage(folder)
    store.fs.invalidate_cache()
    return json.loads(store.read_bytes(name))


def final_state(prefix: str) -> dict:
    """The state of the newest committed checkpoint under a job prefix (verified by the real loader)."""
    from trainer.checkpoint import Checkpointer

    storage = Storage(prefix)
    storage.fs.invalidate_cache()
    committed, state = Checkpointer(storage).load_latest()
    return state


def tensor_digest(tensors: dict) -> str:
    """One sha256 over every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def optimizer_digest(optimizer_state: dict) -> str:
    flat = {
        f"{index}.{name}": value
        for index, entry in optimizer_state["state"].items()
        for name, value in entry.items()
        if isinstance(value, torch.Tensor)
    }
    return tensor_digest(flat)


def probe_budget(images: float, model: str = "mobilenet_v3_small", image_size: int = 32, classes: int = 3) -> int:
    """The bytes of an injected memory limit (`SPOTCTL_TEST_PROBE_MEMORY`, or an ActivationBudget) in
    which batch_size auto's probe of `model` at `image_size` fits `images` (7.5: 7 fit, 8 do not). The
    activations are measured through the probe's own steps at 4 and 8 images (they grow linearly)."""
    from trainer import batch_probe
    from trainer.job.spec import TrainSpec

    train = TrainSpec.model_validate(
        {"model": {"name": model, "weights": None}, "data": {"train": "/unused", "image_size": image_size}}
    )
    subject = batch_probe.subject_for(train, classes, torch.device("cpu"), None)
    peaks, limit = [], batch_probe.memory_limit
    try:
        for size in (4, 8):
            batch_probe.memory_limit = budget = batch_probe.ActivationBudget(1 << 62)
            assert batch_probe.fits(subject, size)
            peaks.append(budget.peak)
    finally:
        batch_probe.memory_limit = limit
    per_image = (peaks[1] - peaks[0]) / 4
    return int(peaks[0] + (images - 4) * per_image)


SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


def interrupt_then_finish(job, env, prefix: str, log_dir: Path, sig, seed: str, steps: int, kills: int = 2) -> None:
    """Interrupt the run `kills` times (1 or 2) with `sig` at random steps (SIGKILL: at random
    instants, then corrupt the latest checkpoint), run it to the end, and check that it resumed each
    time and finished at `steps`. The run checkpoints every 2 steps."""
    from trainer.checkpoint import STATE_FILE, Checkpointer, step_folder

    def latest_step() -> int:
        store = Storage(prefix)
        store.fs.invalidate_cache()
        committed = Checkpointer(store).latest()
        return committed.step if committed else 0

    log = log_dir / "out.log"
    chooser = random.Random(seed)

    def state_of(step: int) -> str:
        return f"{layout.CHECKPOINTS}/{step_folder(step)}/{STATE_FILE}"

    for last in (steps // 3, steps - 4)[-kills:]:
        # A step past where the next attempt starts (of two kills, the first in the first third). Once
        # its state file appears, wait a random instant: SIGKILL then lands anywhere from mid-upload (a
        # state file without its manifest) to a few steps later.
        # Checkpoints are every 2 steps (a SIGTERM one may be odd), one upload at a time: once step 4's
        # state file exists, step 2 is committed. So a kill at step 4 or later always leaves a
        # checkpoint to resume from (a SIGKILL mid-way through step 2's upload would leave none, and
        # the next attempt would start over), and the last kill leaves two: the corrupted latest has
        # one before it.
        start = max(latest_step() // 2 * 2 + 2, 4)
        step = chooser.randrange(start, last + 1, 2)
        process = start_trainer(str(job), env, log=log)
        code = kill_when(
            process,
            lambda step=step: exists(f"{prefix}/{state_of(step)}"),
            sig,
            delay=chooser.uniform(0, 0.2),
            timeout=300,
        )
        assert code == (75 if sig == signal.SIGTERM else -signal.SIGKILL), log.read_text()[-3000:]

    if sig == signal.SIGKILL:  # also survive a checkpoint that was corrupted after its commit
        store = Storage(prefix)
        latest = Checkpointer(store).latest()
        store.write_bytes(state_of(latest.step), b"garbage")

    assert run_trainer(str(job), env, log=log) == 0, log.read_text()[-3000:]
    out = log.read_text()
    resumed_from = [
        int(line.split("resumed from checkpoint step ")[1].split()[0])
        for line in out.splitlines()
        if "resumed from checkpoint step" in line
    ]
    assert len(resumed_from) == kills and all(step > 0 for step in resumed_from), out[-3000:]
    if sig == signal.SIGKILL:
        assert "is corrupt" in out and "trying the previous one" in out

    assert final_state(prefix)["position"]["step"] == steps


def teacher_file(path: Path, classes: int = 3, seed: int = 1, name: str = "resnet18") -> tuple[str, str]:
    """A whole teacher state dict (head of `classes` outputs) saved with torch.save: (path, sha256)."""
    from torchvision import models

    from trainer.model import replace_head

    torch.manual_seed(seed)
    model = models.get_model(name, weights=None)
    replace_head(model, classes)
    torch.save(model.state_dict(), path)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


class RefusingDeletes(Storage):
    """A role without s3:DeleteObject: every delete is refused."""

    def delete(self, relative: str, recursive: bool = False) -> None:
        raise PermissionError(f"AccessDenied: DeleteObject {relative}")
