"""The instance runner: every spotctl instance in the local cloud's EC2 becomes a local process.

Each poll lists spotctl's instances (by tag). A new running one gets its real user-data run by bash
as a process group of its own, with what an instance has: the S3/EC2 endpoint and (dummy)
credentials of the local cloud, its own IMDSv2 endpoint (instance id, zone, spot notice), its own
disk (a folder). The package install is skipped: this environment already is spotctl's.

- The process ends (the trainer finished, failed, or was interrupted) -> the instance shuts down:
  terminated in EC2 with Client.InstanceInitiatedShutdown, as the bootstrap's `shutdown` does.
- The instance is terminated through EC2 (spotctl stop, the console) -> the process group is killed.
- A GPU type gets an `nvidia-smi` that works only when the AMI supports the type's family (EC2 boots
  an unsupported one all the same, and the image's driver cannot drive its GPUs).
- `interrupt(instance, notice_s)` -> the spot notice on its IMDS, `notice_s` seconds (AWS: 120), then
  the machine goes: SIGTERM, SIGKILL, and EC2's Server.SpotInstanceTermination.
- `crash(instance, signal)` -> the signal to the machine's trainer alone (the OOM killer's SIGKILL, a
  native SIGSEGV...), as the kernel would send it: the bootstrap sees it die, reports the crash and
  shuts the machine down (Client.InstanceInitiatedShutdown).
- With an event bus (orchestrator.local.eventbus), EC2's events go out as they happen: the
  interruption warning with the notice, and a state-change notification for each state a spotctl
  instance passes through, whoever changed it (the runner, or a call to EC2's API it sees in a poll).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from orchestrator.aws.amis import families_in, family
from orchestrator.aws.instances import TAG_ATTEMPT, TAG_JOB
from orchestrator.local.aws import SELF_SHUTDOWN, end_instance, spot_interrupt
from orchestrator.local.imds import Imds
from trainer.job import layout
from trainer.job.documents import Heartbeat

log = logging.getLogger(__name__)
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL when a machine goes away
# A local machine shows at most this many of its type's GPUs: each becomes a gloo rank on this
# computer's CPUs (a g5.12xlarge's 4 ranks would only share the same cores more thinly).
LOCAL_GPUS_MAX = 2


@dataclass
class Machine:
    instance_id: str
    job_id: str
    attempt: int
    instance_type: str
    zone: str
    process: subprocess.Popen
    imds: Imds
    folder: Path
    prefix: str | None = None  # the job's storage prefix, from its user-data
    interrupting: bool = False
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict:
        return {
            "instance_id": self.instance_id,
            "job_id": self.job_id,
            "attempt": self.attempt,
            "instance_type": self.instance_type,
            "zone": self.zone,
            "pid": self.process.pid,
            "running": self.process.poll() is None,
            "interrupting": self.interrupting,
            "imds": self.imds.endpoint,
        }


class InstanceRunner:
    def __init__(
        self,
        ec2,
        region: str,
        home: Path,
        environment: dict[str, str],
        poll_s: float = 0.5,
        interrupt_rate_per_hour: float = 0.0,
        notice_s: float = 5.0,
        seed: int = 0,
        interrupt_at_step: int | None = None,
        s3=None,
        events=None,
    ):
        self.ec2, self.region, self.home = ec2, region, home
        self.environment = environment  # what every instance's processes get: endpoint, credentials
        self.poll_s, self.notice_s = poll_s, notice_s
        self.interrupt_rate_per_hour = interrupt_rate_per_hour
        self.interrupt_at_step, self.s3 = interrupt_at_step, s3  # a scheduled interruption of each job's first attempt
        self._last_look = 0.0
        self.events = events  # an EventBus, or None: no events
        self._states: dict[str, str] = {}  # the last state each instance's events told
        self.machines: dict[str, Machine] = {}
        self._done: set[str] = set()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._random = random.Random(seed)
        self._thread: threading.Thread | None = None

    def start(self) -> InstanceRunner:
        self._thread = threading.Thread(target=self._loop, name="instance-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and take every machine down (the local cloud is going away)."""
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        with self._lock:
            for machine in list(self.machines.values()):
                self._kill(machine)
                machine.imds.stop()
            self.machines.clear()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception as exc:  # keep the cloud up; say what went wrong
                log.warning("runner: poll failed: %s: %s", type(exc).__name__, exc)

    def poll(self) -> None:
        described = self._spotctl_instances()
        with self._lock:
            for entry in described:
                instance_id, state = entry["InstanceId"], entry["State"]["Name"]
                self._announce(instance_id, state)
                machine = self.machines.get(instance_id)
                if machine is None and state in ("pending", "running") and instance_id not in self._done:
                    self._boot(entry)
                elif machine is not None and state not in ("pending", "running"):
                    self._retire(machine)  # terminated through EC2: the process goes with it
            for machine in list(self.machines.values()):
                if machine.process.poll() is not None and not machine.interrupting:
                    # The bootstrap ended: the machine shuts itself down, as `shutdown -h now` would.
                    log.info(
                        "runner: %s (job %s #%d) exited with %s; shutting it down",
                        machine.instance_id,
                        machine.job_id,
                        machine.attempt,
                        machine.process.returncode,
                    )
                    end_instance(machine.instance_id, self.region, SELF_SHUTDOWN, service=False)
                    self._announce(machine.instance_id, "terminated")
                    self._retire(machine)
                elif (
                    self.interrupt_rate_per_hour
                    and not machine.interrupting
                    and self._random.random() < self.interrupt_rate_per_hour * self.poll_s / 3600
                ):
                    self.interrupt(machine.instance_id, self.notice_s)  # the market took it back
            if self.interrupt_at_step is not None and time.monotonic() - self._last_look > 1.0:
                self._last_look = time.monotonic()
                for machine in [m for m in self.machines.values() if m.attempt == 1 and not m.interrupting]:
                    if (self._step_of(machine) or 0) >= self.interrupt_at_step:
                        self.interrupt(machine.instance_id, self.notice_s)

    def interrupt(self, instance_id: str, notice_s: float) -> Machine:
        """Serve the spot notice now; take the machine away `notice_s` seconds later."""
        with self._lock:
            machine = self.machines.get(instance_id)
            if machine is None:
                raise KeyError(instance_id)
            machine.interrupting = True
            at = datetime.now(timezone.utc) + timedelta(seconds=notice_s)
            machine.imds.instance_action = {"action": "terminate", "time": at.strftime("%Y-%m-%dT%H:%M:%SZ")}
            if self.events is not None:  # EC2 sends the warning when it serves the notice
                self._tell(self.events.interruption_warning, instance_id, "terminate")
        log.info(
            "runner: spot notice for %s (job %s #%d); it goes in %.0fs",
            instance_id,
            machine.job_id,
            machine.attempt,
            notice_s,
        )
        timer = threading.Timer(notice_s, self._reclaim, args=(machine,))
        timer.daemon = True
        timer.start()
        return machine

    def crash(self, instance_id: str, sig: signal.Signals) -> tuple[Machine, int]:
        """Send `sig` to the trainer process of the machine (the pid its heartbeat names, checked to be
        in the machine's process group, so no other process can be hit). KeyError: no such machine;
        LookupError: its trainer cannot be found (not started, already gone)."""
        with self._lock:
            machine = self.machines.get(instance_id)
            if machine is None:
                raise KeyError(instance_id)
            beat = self._heartbeat_of(machine)
            pid = beat.pid if beat and beat.of_attempt(machine.attempt) else None
            if not pid:
                raise LookupError(
                    f"the trainer of {instance_id} has not reported its pid yet (no heartbeat of attempt {machine.attempt})"
                )
            try:
                if pid not in machine_processes(machine.process.pid):
                    raise LookupError(f"process {pid} (its heartbeat's) is not on {instance_id}")
                os.kill(pid, sig)
            except ProcessLookupError:
                raise LookupError(f"the trainer of {instance_id} (pid {pid}) is not running") from None
        log.info(
            "runner: %s to the trainer of %s (job %s #%d, pid %d)",
            sig.name,
            instance_id,
            machine.job_id,
            machine.attempt,
            pid,
        )
        return machine, pid

    def _reclaim(self, machine: Machine) -> None:
        with self._lock:
            if machine.instance_id not in self.machines:
                return
            self._kill(machine)  # the power goes: whatever was still running stops
            spot_interrupt(machine.instance_id, self.region)
            self._announce(machine.instance_id, "terminated")
            self._retire(machine)

    def _announce(self, instance_id: str, state: str) -> None:
        """EC2's state-change notifications from the last state told to `state` (each state between)."""
        if self.events is None:
            return
        from orchestrator.local.eventbus import state_path

        for passed in state_path(self._states.get(instance_id), state):
            self._tell(self.events.state_change, instance_id, passed)
        self._states[instance_id] = state

    def _tell(self, publish, *args) -> None:
        try:
            publish(*args)
        except Exception as exc:  # the events are best effort; the machines go on
            log.warning("runner: event not published: %s: %s", type(exc).__name__, exc)

    def _boot(self, entry: dict) -> None:
        instance_id = entry["InstanceId"]
        tags = {t["Key"]: t["Value"] for t in entry.get("Tags", [])}
        folder = self.home / "instances" / instance_id
        folder.mkdir(parents=True, exist_ok=True)
        user_data = (
            self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
            .get("UserData", {})
            .get("Value")
        )
        script = folder / "user-data.sh"
        script.write_bytes(base64.b64decode(user_data) if user_data else b"#!/bin/bash\nexit 0\n")
        zone = entry["Placement"]["AvailabilityZone"]
        imds = Imds(instance_id, entry["InstanceType"], zone)
        python_dir = str(Path(sys.executable).parent)
        tools = folder / "bin"
        self._install_driver(tools, entry)
        environment = {
            **self.environment,
            # The machine's tools (nvidia-smi), this environment's python; the AWS CLI only if the system has one.
            "PATH": f"{tools}:{python_dir}:/usr/bin:/bin",
            "HOME": str(folder),
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint,
            "SPOTCTL_SKIP_INSTALL": "1",
            # This environment's code, also where PYTHONPATH puts it (a checkout): the trainer must be
            # the one whose orchestrator launched it, or a job file it wrote may hold fields it lacks.
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
            "SPOTCTL_NO_SHUTDOWN": "1",  # the runner plays the shutdown
            "SPOTCTL_LOG_DIR": str(folder / "logs"),
            "SPOTCTL_CACHE_DIR": str(folder / "cache"),
            "SPOTCTL_IMDS_POLL_SECONDS": "1",
            "SPOTCTL_HEARTBEAT_SECONDS": "2",  # S3 is local here: a livelier view costs nothing
        }
        with open(folder / "console.log", "ab") as console:
            process = subprocess.Popen(
                ["bash", str(script)],
                env=environment,
                cwd=folder,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        attempt = int(tags.get(TAG_ATTEMPT, "0")) if tags.get(TAG_ATTEMPT, "").isdigit() else 0
        prefix = re.search(r"^JOB_PREFIX=(.+)$", script.read_text(errors="replace"), re.M)
        self.machines[instance_id] = Machine(
            instance_id,
            tags.get(TAG_JOB, "?"),
            attempt,
            entry["InstanceType"],
            zone,
            process,
            imds,
            folder,
            shlex.split(prefix.group(1))[0] if prefix else None,
        )
        log.info(
            "runner: booted %s (job %s #%d, %s in %s) as pid %d",
            instance_id,
            tags.get(TAG_JOB),
            attempt,
            entry["InstanceType"],
            zone,
            process.pid,
        )

    def _install_driver(self, tools: Path, entry: dict) -> None:
        """What a GPU instance's image has: an `nvidia-smi` that lists the GPUs when the AMI's driver
        supports the instance's family, and fails as NVIDIA's does when it does not (the instance
        boots all the same, as on EC2). A CPU type gets none."""
        described = self.ec2.describe_instance_types(InstanceTypes=[entry["InstanceType"]])["InstanceTypes"]
        gpus = [g for t in described for g in t.get("GpuInfo", {}).get("Gpus", []) for _ in range(g.get("Count", 0))]
        gpus = gpus[:LOCAL_GPUS_MAX]
        if not gpus:
            return
        images = self.ec2.describe_images(ImageIds=[entry["ImageId"]])["Images"]
        supported = families_in(images[0].get("Description", "")) if images else None
        tools.mkdir(parents=True, exist_ok=True)
        if supported is None or family(entry["InstanceType"]) in supported:
            listing = "".join(f"echo 'GPU {i}: NVIDIA {g.get('Name', 'GPU')} (local)'\n" for i, g in enumerate(gpus))
            body = f"#!/bin/bash\n{listing}"
        else:
            body = (
                "#!/bin/bash\necho 'NVIDIA-SMI has failed because it couldn'\\''t communicate with the NVIDIA driver. "
                "Make sure that the latest NVIDIA driver is installed and running.'\nexit 9\n"
            )
        (tools / "nvidia-smi").write_text(body)
        (tools / "nvidia-smi").chmod(0o755)

    def _step_of(self, machine: Machine) -> int | None:
        """The step the machine's trainer last reported."""
        beat = self._heartbeat_of(machine)
        return beat.step if beat and beat.of_attempt(machine.attempt) else None

    def _heartbeat_of(self, machine: Machine) -> Heartbeat | None:
        """The heartbeat in the machine's job prefix (any attempt's: the caller checks)."""
        if not machine.prefix or not machine.prefix.startswith("s3://") or self.s3 is None:
            return None
        bucket, _, key = machine.prefix[5:].partition("/")
        try:
            return Heartbeat.parse(self.s3.get_object(Bucket=bucket, Key=f"{key}/{layout.HEARTBEAT}")["Body"].read())
        except Exception:
            return None

    def _retire(self, machine: Machine) -> None:
        self._kill(machine)
        machine.imds.stop()
        self.machines.pop(machine.instance_id, None)
        self._done.add(machine.instance_id)
        shutil.rmtree(machine.folder / "cache", ignore_errors=True)  # the instance's disk is gone; its logs stay

    def _kill(self, machine: Machine) -> None:
        process = machine.process
        if process.poll() is not None:
            return
        # The bootstrap's process group and every group its descendants lead: torchrun starts each
        # rank in a session of its own, which a signal to the bootstrap's group alone would miss.
        seen = machine_processes(process.pid)
        for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
            seen |= machine_processes(process.pid)
            for group in {process.pid} | {g for p in seen if (g := _group_of(p)) is not None}:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, sig)
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        for pid in seen - {process.pid}:  # a rank that outlived the bootstrap (reparented, so no longer its descendant)
            if _group_of(pid) is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _spotctl_instances(self) -> list[dict]:
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "tag-key", "Values": [TAG_JOB]}]
        )
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def snapshot(self) -> list[dict]:
        with self._lock:
            return [m.as_dict() for m in self.machines.values()]


def machine_processes(root: int) -> set[int]:
    """`root` and every process descended from it (read from /proc): what runs on one local machine."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the fields after its last ')'.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
