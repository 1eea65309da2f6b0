"""The instance's bootstrap script, rendered and run by bash as an instance would, against the moto
server: real S3 downloads and final.json writes, with a stand-in python on the PATH that records
its pip and trainer calls (and fails them on request) and runs everything else for real, and a
`sleep` that records the backoff instead of waiting it."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import boto3
import pytest

from orchestrator.jobs import userdata
from orchestrator.jobs.userdata import Bootstrap, render
from orchestrator.jobs.wheel import image_provided
from testbed import REPO
from testbed.harness import FakeImds
from testbed.trainer_runs import trainer_env
from trainer.job import layout, rendezvous
from trainer.job.documents import Crash
from trainer.job.storage import Storage, file_sha256

BUCKET = "boot-bucket"
STORAGE = f"s3://{BUCKET}/spotctl"
JOB = "boot-1"
PREFIX = f"{STORAGE}/jobs/{JOB}"

FAKE_PYTHON = r"""#!/bin/bash
# A stand-in python: makes venvs of itself, records pip and trainer calls, runs the rest for real.
if [ "$1 $2" = "-m venv" ]; then
  echo "venv ${*:3}" >>"$FAKE_STATE/calls"
  dir="${@: -1}"; mkdir -p "$dir/bin"; cp "$0" "$dir/bin/python"; exit 0
fi
if [ "$1 $2" = "-m pip" ]; then
  echo "pip $0 ${*:3}" >>"$FAKE_STATE/calls"
  n=$(( $(cat "$FAKE_STATE/pip-runs" 2>/dev/null || echo 0) + 1 )); echo "$n" >"$FAKE_STATE/pip-runs"
  if [ "$n" -le "${FAKE_PIP_FAILS:-0}" ]; then echo "pip: simulated failure $n"; exit 1; fi
  prev=""; for a in "$@"; do if [ "$prev" = "-c" ]; then cp "$a" "$FAKE_STATE/constraints.txt"; fi; prev="$a"; done
  exit 0
fi
if [ "$1 $2" = "-c import boto3" ] && [ -n "${FAKE_NO_BOTO3:-}" ]; then exit 1; fi  # a bare image
if [ "$1 $2" = "-m trainer" ]; then
  echo "trainer $0 ${*:3} cache=${SPOTCTL_CACHE_DIR:-}" >>"$FAKE_STATE/calls"; echo "$$" >"$FAKE_STATE/trainer-pid"
  if [ -n "${FAKE_TRAINER_FINAL:-}" ]; then  # a trainer that raised: its own final.json first
    @python@ -c 'import boto3, os, sys; boto3.client("s3").put_object(Bucket=sys.argv[1], Key=sys.argv[2], Body=os.environ["FAKE_TRAINER_FINAL"].encode())' @bucket@ @final_key@
  fi
  if [ -n "${FAKE_TRAINER_CRASH:-}" ]; then  # a trainer whose data worker was killed: its own crash report
    @python@ -c 'import boto3, os, sys; boto3.client("s3").put_object(Bucket=sys.argv[1], Key=sys.argv[2], Body=os.environ["FAKE_TRAINER_CRASH"].encode())' @bucket@ @crash_key@
  fi
  if [ -n "${FAKE_TRAINER_SIGNAL:-}" ]; then kill -s "$FAKE_TRAINER_SIGNAL" $$; fi  # killed, as the OOM killer or a segfault does
  exit "${FAKE_TRAINER_EXIT:-0}"
fi
if [ "$1 $2" = "-m torch.distributed.run" ]; then  # torchrun: each rank's word as a test gives it, then torchrun's exit
  exits="${FAKE_RANK_EXITS:-}"  # a kept node's second run (its next attempt) answers FAKE_NEXT_RANK_EXITS
  if [ -n "${FAKE_NEXT_RANK_EXITS:-}" ] && grep -q '^torchrun' "$FAKE_STATE/calls" 2>/dev/null; then exits="$FAKE_NEXT_RANK_EXITS"; fi
  echo "torchrun $0 ${*:3} attempt=${SPOTCTL_ATTEMPT}" >>"$FAKE_STATE/calls"; echo "$$" >"$FAKE_STATE/trainer-pid"
  rank=0; for code in $exits; do [ "$code" = - ] || echo "$code" >"$SPOTCTL_EXIT_FILE.$rank"; rank=$((rank + 1)); done
  if [ -n "${FAKE_TORCHRUN_SAYS:-}" ]; then echo "$FAKE_TORCHRUN_SAYS" >&2; fi
  exit "${FAKE_TRAINER_EXIT:-0}"
fi
exec @python@ "$@"
"""

FAKE_SLEEP = r"""#!/bin/bash
# The log shipper's minute is real; the backoff is recorded, and the hook runs at the wanted pause.
if [ "$1" = 60 ]; then exec @sleep@ "$@"; fi
echo "$1" >>"$FAKE_STATE/sleeps"
if [ -n "${FAKE_SLEEP_HOOK:-}" ] && [ "$(wc -l <"$FAKE_STATE/sleeps")" -eq "${FAKE_SLEEP_HOOK_AT:-0}" ]; then bash "$FAKE_SLEEP_HOOK"; fi
exit 0
"""


FAKE_DMESG = r"""#!/bin/bash
# The kernel log: unreadable (as to a user without CAP_SYSLOG) unless a test gives its lines; @pid@ is the trainer's.
if [ -z "${FAKE_DMESG:-}" ]; then echo "dmesg: read kernel buffer failed: Operation not permitted" >&2; exit 1; fi
echo "${FAKE_DMESG//@pid@/$(cat "$FAKE_STATE/trainer-pid")}"
"""


class Instance:
    """One boot: its folder, its script, its stand-ins, what they recorded."""

    def __init__(self, root: Path, aws):
        self.root, self.aws = root, aws
        self.bin, self.state = root / "bin", root / "state"
        self.bin.mkdir()
        self.state.mkdir()
        for name, text in (
            (
                "python3",
                FAKE_PYTHON.replace("@python@", shlex.quote(sys.executable))
                .replace("@bucket@", BUCKET)
                .replace("@final_key@", f"spotctl/jobs/{JOB}/{layout.FINAL}")
                .replace("@crash_key@", f"spotctl/jobs/{JOB}/{layout.crash_of(1)}"),
            ),
            ("sleep", FAKE_SLEEP.replace("@sleep@", shutil.which("sleep"))),
            ("dmesg", FAKE_DMESG),
        ):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        self.s3 = boto3.client("s3")
        self.s3.create_bucket(Bucket=BUCKET)

    def run(self, wheel_url: str, sha256: str, nodes: int = 1, node_rank: int = 0, **env: str) -> int:
        script = self.root / f"user-data-{node_rank}.sh"
        boot = Bootstrap(JOB, 1, "us-east-1", f"{PREFIX}/job.yaml", PREFIX, wheel_url, "0.1.0", sha256)
        script.write_text(render(replace(boot, nodes=nodes, node_rank=node_rank)))
        environment = trainer_env(
            {
                **self.aws.environment(),
                "PATH": f"{self.bin}:/usr/bin:/bin",  # no AWS CLI: boto3 does the S3 work
                "SPOTCTL_NO_SHUTDOWN": "1",
                "SPOTCTL_LOG_DIR": str(self.root / "logs"),
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",  # nothing answers: no notice
                "FAKE_STATE": str(self.state),
                **env,
            }
        )
        return subprocess.run(["bash", str(script)], env=environment, timeout=120).returncode

    def recorded(self, name: str) -> list[str]:
        path = self.state / name
        return path.read_text().splitlines() if path.exists() else []

    def final(self) -> dict | None:
        try:  # through Storage: S3 (the strict local cloud) answers 403 for a missing key
            return json.loads(Storage(PREFIX).read_bytes(layout.FINAL))
        except FileNotFoundError:
            return None

    def crash(self) -> dict | None:
        """The crash report, held to its model as strictly as a writer is (Crash.dump)."""
        try:
            body = Storage(PREFIX).read_bytes(layout.crash_of(1))
        except FileNotFoundError:
            return None
        document = json.loads(body)
        Crash.dump(document)  # no field the model does not define
        return document

    def log(self) -> str:
        key = f"spotctl/jobs/{JOB}/{layout.bootstrap_log(1)}"
        return self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


@pytest.fixture
def instance(tmp_path, aws, monkeypatch):
    monkeypatch.setattr(userdata, "NVME", str(tmp_path / "nvme"))  # absent unless a test makes it
    return Instance(tmp_path, aws)


def wheel_url_of(wheel: Path) -> tuple[str, str]:
    digest = file_sha256(wheel)
    return f"{STORAGE}/{layout.wheel_key(digest, wheel.name)}", digest


def test_a_transient_download_and_pip_failure_are_retried_and_the_tested_set_is_installed(instance, wheel, tmp_path):
    url, digest = wheel_url_of(wheel)
    hook = tmp_path / "upload.sh"  # the wheel appears during the second pause: two downloads fail first
    hook.write_text(
        f"{shlex.quote(sys.executable)} -c 'import boto3, sys; boto3.client(\"s3\").upload_file(*sys.argv[1:])' "
        f"{shlex.quote(str(wheel))} {BUCKET} {shlex.quote(url.split(f'{BUCKET}/', 1)[1])}\n"
    )
    cache = tmp_path / "cache"
    code = instance.run(
        url,
        digest,
        SPOTCTL_CACHE_DIR=str(cache),
        FAKE_SLEEP_HOOK=str(hook),
        FAKE_SLEEP_HOOK_AT="2",
        FAKE_PIP_FAILS="1",
    )
    log = instance.log()
    assert code == 0, log
    assert instance.recorded("sleeps") == ["2", "4", "2"]  # two downloads, then one pip run
    assert f"spotctl: try 1 of 5 failed: s3_copy {url}" in log and f"spotctl: try 2 of 5 failed: s3_copy {url}" in log
    assert "spotctl: try 1 of 5 failed: " + str(cache / "venv/bin/python") + " -m pip install" in log
    venv_python = str(cache / "venv/bin/python")
    calls = instance.recorded("calls")
    work = calls[1].split(" -c ")[1].split("/constraints.txt")[0]  # the script's own temporary folder
    assert calls == [
        f"venv --clear --system-site-packages {cache}/venv",  # no Deep Learning AMI python here
        f"pip {venv_python} install --quiet --upgrade-strategy only-if-needed -c {work}/constraints.txt {work}/{wheel.name}[trainer]",
        f"pip {venv_python} install --quiet --upgrade-strategy only-if-needed -c {work}/constraints.txt {work}/{wheel.name}[trainer]",
        f"trainer {venv_python} run --job {PREFIX}/job.yaml --job-id {JOB} cache={cache}",
    ]
    shipped = instance.recorded("constraints.txt")
    tested = [line for line in (REPO / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert shipped == [line for line in tested if not image_provided(line.split("==")[0])]
    assert {"boto3", "botocore", "aiobotocore", "s3fs", "onnx", "onnxruntime", "nvidia-ml-py", "numpy"} <= {
        line.split("==")[0] for line in shipped
    }
    assert not {"torch", "torchvision", "triton", "sympy", "nvidia-cublas"} & {line.split("==")[0] for line in shipped}
    assert instance.final() is None  # the trainer has the last word


def test_a_wheel_with_other_bytes_under_its_digest_is_refused_and_nothing_is_installed(instance, wheel, tmp_path):
    url, digest = wheel_url_of(wheel)
    tampered = wheel.read_bytes() + b"\0"
    instance.s3.put_object(Bucket=BUCKET, Key=url.split(f"{BUCKET}/", 1)[1], Body=tampered)
    code = instance.run(url, digest, SPOTCTL_CACHE_DIR=str(tmp_path / "cache"))
    assert code == 1
    got = hashlib.sha256(tampered).hexdigest()
    final = instance.final()
    assert final["outcome"] == "failed" and final["attempt"] == 1
    assert final["error"] == (
        f"refused to install {url}: its sha256 is {got}, not {digest} "
        "(the object changed after launch uploaded it; a new launch uploads it again)"
    )
    assert [c for c in instance.recorded("calls") if not c.startswith("venv ")] == []  # no pip, no trainer
    assert f"spotctl: {final['error']}" in instance.log()


def test_a_download_that_keeps_failing_gives_up_after_five_tries_and_says_so(instance, tmp_path):
    url = f"{STORAGE}/{layout.wheel_key('ab' * 32, 'spotctl-0.1.0-py3-none-any.whl')}"
    code = instance.run(url, "ab" * 32, SPOTCTL_CACHE_DIR=str(tmp_path / "cache"))
    assert code == 1
    assert instance.recorded("sleeps") == ["2", "4", "8", "16"]  # bounded: about 30 s in all
    assert instance.final()["error"] == (
        f"the instance could not download spotctl from {url} (see {layout.bootstrap_log(1)})"
    )
    assert f"spotctl: giving up after 5 tries: s3_copy {url}" in instance.log()


def test_pip_that_keeps_failing_is_reported_as_a_failed_install(instance, wheel, tmp_path):
    url, digest = wheel_url_of(wheel)
    instance.s3.upload_file(str(wheel), BUCKET, url.split(f"{BUCKET}/", 1)[1])
    code = instance.run(url, digest, SPOTCTL_CACHE_DIR=str(tmp_path / "cache"), FAKE_PIP_FAILS="99")
    assert code == 1
    assert instance.recorded("sleeps") == ["2", "4", "8", "16"]
    assert instance.recorded("pip-runs") == ["6"]  # 5 with the tested set, then one without
    assert "spotctl: the tested set did not install; trying once without it" in instance.log()
    assert instance.final()["error"] == (
        f"the instance could not install spotctl from {url} (see {layout.bootstrap_log(1)})"
    )
    assert not any(c.startswith("trainer ") for c in instance.recorded("calls"))


def test_when_the_tested_set_cannot_install_one_unconstrained_try_still_runs_the_job(instance, wheel, tmp_path):
    url, digest = wheel_url_of(wheel)
    instance.s3.upload_file(str(wheel), BUCKET, url.split(f"{BUCKET}/", 1)[1])
    assert instance.run(url, digest, SPOTCTL_CACHE_DIR=str(tmp_path / "cache"), FAKE_PIP_FAILS="5") == 0
    pips = [c for c in instance.recorded("calls") if c.startswith("pip ")]
    assert len(pips) == 6 and all(" -c " in c for c in pips[:5]) and " -c " not in pips[5]
    assert pips[5].endswith(f"install --quiet --upgrade-strategy only-if-needed {pips[5].split()[-1]}")
    assert instance.recorded("calls")[-1].startswith("trainer ") and instance.final() is None


def test_the_data_cache_and_the_venv_go_on_the_instance_store_on_a_bare_image(instance, wheel, tmp_path):
    (tmp_path / "nvme").mkdir()
    url, digest = wheel_url_of(wheel)
    instance.s3.upload_file(str(wheel), BUCKET, url.split(f"{BUCKET}/", 1)[1])
    assert instance.run(url, digest, FAKE_NO_BOTO3="1") == 0  # no SPOTCTL_CACHE_DIR given
    calls = instance.recorded("calls")
    venv = f"{tmp_path}/nvme/spotctl/venv"
    assert calls[:2] == [
        f"venv --clear --system-site-packages {venv}",
        f"pip {venv}/bin/python install --quiet boto3",  # a bare image's python: boto3 first, to reach S3
    ]
    assert calls[-1].endswith(f"cache={tmp_path}/nvme/spotctl")


def run_trainer(instance, tmp_path, notice: bool = False, **env: str) -> int:
    """The bootstrap with the install skipped: only the trainer's run and what follows it."""
    imds = FakeImds("i-0123456789abcdef0")
    if notice:
        imds.instance_action = {"action": "terminate", "time": "2026-12-01T10:00:00Z"}
    try:
        return instance.run(
            f"{STORAGE}/{layout.wheel_key('ab' * 32, 'spotctl-0.1.0-py3-none-any.whl')}",
            "ab" * 32,
            SPOTCTL_SKIP_INSTALL="1",
            SPOTCTL_CACHE_DIR=str(tmp_path / "cache"),
            AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.endpoint,
            **env,
        )
    finally:
        imds.stop()


@pytest.mark.parametrize(
    "how, code, signal",
    [
        ({"FAKE_TRAINER_SIGNAL": "KILL"}, 137, "SIGKILL"),  # the OOM killer, a person's kill -9
        ({"FAKE_TRAINER_SIGNAL": "SEGV"}, 139, "SIGSEGV"),  # a native crash: CUDA, the driver, a data-loading library
        ({"FAKE_TRAINER_SIGNAL": "ABRT"}, 134, "SIGABRT"),  # a C++ library's abort()
        ({"FAKE_TRAINER_SIGNAL": "TERM"}, 143, "SIGTERM"),  # ended before it could checkpoint, with no notice
        ({"FAKE_TRAINER_EXIT": "120"}, 120, None),  # an exit code the trainer never gives (Python's own fatal error)
        ({"FAKE_TRAINER_EXIT": "70"}, 70, None),  # EXIT_CRASHED, had the trainer not written its own report
    ],
)
def test_a_trainer_that_dies_without_a_word_is_reported_as_a_crash_not_a_failure(instance, tmp_path, how, code, signal):
    assert run_trainer(instance, tmp_path, **how) == code
    assert instance.final() is None  # no final word: the orchestrator recovers it from the last checkpoint
    report = instance.crash()
    assert report["reported_at"].endswith("+00:00")
    assert {k: v for k, v in report.items() if k != "reported_at"} == {
        "attempt": 1,
        "process": "trainer",
        "exit_code": code,
        "signal": signal,
        "oom_killed": None,  # the kernel log could not be read
        "kernel_log": [],
    }
    how_it_died = f"killed by {signal}" if signal else f"exited with code {code}"
    assert f"spotctl: the trainer {how_it_died} with no spot notice and no final word: a crash" in instance.log()


def test_the_kernel_log_tells_an_oom_kill_of_the_trainer_from_anyone_elses(instance, tmp_path):
    lines = (
        "[10.0] Out of memory: Killed process 4242424 (chrome) total-vm:100kB\n"  # another process on the host
        "[12.5] oom-kill:constraint=CONSTRAINT_NONE,task=python,pid=@pid@,uid=0\n"
        "[12.5] Out of memory: Killed process @pid@ (python) total-vm:16000000kB, anon-rss:15000000kB"
    )
    assert run_trainer(instance, tmp_path, FAKE_TRAINER_SIGNAL="KILL", FAKE_DMESG=lines) == 137
    report, pid = instance.crash(), instance.recorded("trainer-pid")[0]
    assert report["oom_killed"] is True and report["kernel_log"] == [
        f"[12.5] oom-kill:constraint=CONSTRAINT_NONE,task=python,pid={pid},uid=0",
        f"[12.5] Out of memory: Killed process {pid} (python) total-vm:16000000kB, anon-rss:15000000kB",
    ]
    # Killed by something else while the host's OOM killer took another process: not an OOM kill.
    instance.s3.delete_object(Bucket=BUCKET, Key=f"spotctl/jobs/{JOB}/{layout.crash_of(1)}")
    assert (
        run_trainer(
            instance,
            tmp_path,
            FAKE_TRAINER_SIGNAL="KILL",
            FAKE_DMESG="[10.0] Out of memory: Killed process 4242424 (chrome)",
        )
        == 137
    )
    assert (instance.crash()["oom_killed"], instance.crash()["kernel_log"]) == (False, [])


def test_the_trainers_own_crash_report_of_a_killed_data_worker_stands(instance, tmp_path):
    said = {"attempt": 1, "process": "data worker", "signal": "SIGKILL", "reported_at": "2026-12-01T10:00:00+00:00"}
    assert run_trainer(instance, tmp_path, FAKE_TRAINER_EXIT="70", FAKE_TRAINER_CRASH=json.dumps(said)) == 70
    assert instance.crash() == said and instance.final() is None


@pytest.mark.parametrize("signal, code", [("KILL", 137), ("TERM", 143), ("SEGV", 139)])
def test_a_trainer_killed_after_a_spot_notice_is_an_interruption(instance, tmp_path, signal, code):
    assert run_trainer(instance, tmp_path, notice=True, FAKE_TRAINER_SIGNAL=signal) == code
    assert instance.final() is None and instance.crash() is None  # EC2's reason tells
    assert "spotctl: killed after the spot notice {" in instance.log()


def test_a_trainer_that_raised_is_a_failure_with_its_own_final_word(instance, tmp_path):
    said = {
        "outcome": "failed",
        "attempt": 1,
        "error": "ValueError: bad",
        "traceback": ["Traceback ...", "ValueError: bad"],
    }
    assert run_trainer(instance, tmp_path, FAKE_TRAINER_EXIT="1", FAKE_TRAINER_FINAL=json.dumps(said)) == 1
    assert instance.final() == said and instance.crash() is None  # the trainer's word stands, traceback and all


@pytest.mark.parametrize("code", [1, 2])
def test_a_trainer_that_failed_without_writing_its_final_word_gets_one(instance, tmp_path, code):
    """Exit 1 and 2 are the trainer's verdict (failed, an invalid job file), even when the storage it
    reports to refused it: a failure, not a crash to be retried."""
    assert run_trainer(instance, tmp_path, FAKE_TRAINER_EXIT=str(code)) == code
    final = instance.final()
    assert (
        final["outcome"] == "failed"
        and final["error"] == f"the trainer exited with code {code} (see {layout.trainer_log(1)})"
    )
    assert instance.crash() is None


def test_gpus_the_amis_driver_cannot_drive_fail_the_boot_before_training(instance, wheel, tmp_path):
    url, digest = wheel_url_of(wheel)
    instance.s3.upload_file(str(wheel), BUCKET, url.split(f"{BUCKET}/", 1)[1])
    smi = instance.bin / "nvidia-smi"  # what the OSS-driver DLAMI says on a pre-Turing GPU
    smi.write_text(
        '#!/bin/bash\necho "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n'
    )
    smi.chmod(0o755)
    code = instance.run(url, digest, SPOTCTL_CACHE_DIR=str(tmp_path / "cache"))
    assert code == 1
    assert instance.final()["error"] == (
        "this instance's GPUs are not usable with the AMI's driver: NVIDIA-SMI has failed because it couldn't "
        "communicate with the NVIDIA driver. (choose instance types the AMI supports: `spotctl offers` lists them)"
    )
    assert not [c for c in instance.recorded("calls") if c.startswith("trainer ")]


def two_gpus(instance) -> None:
    smi = instance.bin / "nvidia-smi"
    smi.write_text("#!/bin/bash\necho 'GPU 0: NVIDIA A10G (UUID: a)'\necho 'GPU 1: NVIDIA A10G (UUID: b)'\n")
    smi.chmod(0o755)


def test_a_machine_with_several_gpus_runs_one_rank_per_gpu_under_torchrun(instance, tmp_path):
    two_gpus(instance)
    assert run_trainer(instance, tmp_path, FAKE_RANK_EXITS="0 0") == 0
    (call,) = [c for c in instance.recorded("calls") if c.startswith("torchrun ")]
    assert " --standalone --nproc-per-node 2 --max-restarts 0 -m trainer run --job " in call
    assert instance.final() is None and instance.crash() is None


def test_one_gpu_runs_the_trainer_alone(instance, tmp_path):
    smi = instance.bin / "nvidia-smi"
    smi.write_text("#!/bin/bash\necho 'GPU 0: NVIDIA A10G (UUID: a)'\n")
    smi.chmod(0o755)
    assert run_trainer(instance, tmp_path) == 0
    assert [c.split()[0] for c in instance.recorded("calls")] == ["trainer"]


@pytest.mark.parametrize("code", [75, 3, 2])
def test_torchruns_exit_1_gives_way_to_rank_0s_own_word(instance, tmp_path, code):
    """torchrun exits 1 whenever a rank ends with anything but 0; what the trainer meant is rank 0's code."""
    two_gpus(instance)
    assert run_trainer(instance, tmp_path, FAKE_RANK_EXITS=f"{code} {code}", FAKE_TRAINER_EXIT="1") == code
    assert instance.crash() is None
    assert (instance.final() or {}).get("outcome") == ("failed" if code == 2 else None)


def test_a_rank_that_died_without_a_word_is_a_crash_with_torchruns_signal(instance, tmp_path):
    two_gpus(instance)
    says = "[0]:\n  time      : 2026-12-01_10:00:00\n  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 4242)"
    code = run_trainer(instance, tmp_path, FAKE_RANK_EXITS="75 -", FAKE_TRAINER_EXIT="1", FAKE_TORCHRUN_SAYS=says)
    assert code == 137
    assert instance.final() is None and instance.crash()["signal"] == "SIGKILL"
    assert "spotctl: local rank 1 died without an exit code" in instance.log()


# ------------------------------------------------------------------------------ compute.nodes > 1
def test_two_nodes_meet_in_storage_and_run_torchrun_with_node_0_as_master(instance, tmp_path):
    codes = {}

    def node(rank: int) -> None:
        exits = "0"  # each node's own local rank 0
        codes[rank] = run_trainer(
            instance, tmp_path, nodes=2, node_rank=rank, FAKE_RANK_EXITS=exits, FAKE_TRAINER_EXIT="1",
            SPOTCTL_NODE_ADDRESS=f"127.0.0.1:{29600 + rank}",
        )  # fmt: skip

    threads = [threading.Thread(target=node, args=(rank,)) for rank in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == {0: 0, 1: 0}  # torchrun's 1 gives way to each node's own rank's word
    calls = sorted(c for c in instance.recorded("calls") if c.startswith("torchrun "))
    assert len(calls) == 2
    for rank in (0, 1):
        expected = f"--nnodes=2 --node-rank={rank} --master-addr=127.0.0.1 --master-port=29600 --nproc-per-node 1 --max-restarts 0 -m trainer run"
        assert any(expected in c for c in calls), calls
    joined = Storage(PREFIX).list(layout.rendezvous_of(1))
    assert sorted(joined) == ["node-0.json", "node-1.json"]


def test_a_node_the_others_never_meet_gives_up_in_time_as_a_crash_not_a_failure(instance, tmp_path):
    code = run_trainer(instance, tmp_path, nodes=2, node_rank=0, SPOTCTL_RENDEZVOUS_TIMEOUT_S="1")
    assert code == 70
    assert not [c for c in instance.recorded("calls") if c.startswith("torchrun ")]
    assert "rendezvous: attempt 1: node 1 of 2 did not register within 1 s" in instance.log()
    assert instance.final() is None and instance.crash()["exit_code"] == 70


def test_a_survivor_of_another_nodes_loss_keeps_its_machine_and_joins_the_next_attempt_named_in_its_plan(
    instance, tmp_path
):
    """Node 1 went (no notice here: the collective timed out, exit 75); the orchestrator's plan for attempt 2
    keeps this machine as node 0 beside a new node 1, which has registered."""
    storage = Storage(PREFIX)
    rendezvous.register(storage, 1, 1, "127.0.0.1", 29601, "i-lost")
    rendezvous.write_plan(storage, 2, {0: "i-0123456789abcdef0", 1: "i-new"})
    rendezvous.register(storage, 2, 1, "127.0.0.1", 29602, "i-new")
    code = run_trainer(
        instance, tmp_path, nodes=2, node_rank=0, FAKE_RANK_EXITS="75", FAKE_NEXT_RANK_EXITS="0",
        FAKE_TRAINER_EXIT="1", SPOTCTL_NODE_ADDRESS="127.0.0.1:29600", SPOTCTL_RENDEZVOUS_TIMEOUT_S="5",
    )  # fmt: skip
    assert code == 0
    calls = [c for c in instance.recorded("calls") if c.startswith("torchrun ")]
    assert len(calls) == 2 and calls[0].endswith("attempt=1") and calls[1].endswith("attempt=2")
    assert "--nnodes=2 --node-rank=0 --master-addr=127.0.0.1 --master-port=29600" in calls[1]
    assert instance.crash() is None and instance.final() is None
    second = instance.s3.get_object(Bucket=BUCKET, Key=f"spotctl/jobs/{JOB}/{layout.bootstrap_log(2)}")
    assert "spotctl: kept for attempt 2 as node 0" in second["Body"].read().decode()


def test_a_survivor_no_next_plan_names_shuts_down_as_interrupted(instance, tmp_path):
    storage = Storage(PREFIX)
    rendezvous.register(storage, 1, 1, "127.0.0.1", 29601, "i-lost")
    rendezvous.write_plan(storage, 2, {0: "i-other", 1: "i-new"})  # every node started again elsewhere
    code = run_trainer(
        instance, tmp_path, nodes=2, node_rank=0, FAKE_RANK_EXITS="75", FAKE_TRAINER_EXIT="1",
        SPOTCTL_NODE_ADDRESS="127.0.0.1:29600", SPOTCTL_RENDEZVOUS_TIMEOUT_S="5",
    )  # fmt: skip
    assert code == 75 and len([c for c in instance.recorded("calls") if c.startswith("torchrun ")]) == 1
    assert "rendezvous: attempt 2 goes on without i-0123456789abcdef0" in instance.log()
