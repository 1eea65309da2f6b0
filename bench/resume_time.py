"""Time to resume: process start -> first resumed step, broken into its parts, next to a cold start.

    python -m bench.resume_time [--model resnet50] [--resumes 3] [--quick] [--json PATH]

A job with storage on a moto S3 server runs as a real `python -m trainer run` process. The first
(cold) attempt is interrupted with SIGTERM right after its first step, which commits a checkpoint;
every later attempt resumes from the latest checkpoint and is interrupted the same way. Each attempt
reports its startup in `status/heartbeat.json` (trainer/loop.py measures it): imports, data, model
build, restore (of which the checkpoint's download, sha256 verify and torch.load), and the time from
the trainer's import to the end of its first step. Printed: the median resumed attempt beside the
cold one. No target: the figures say where a resume spends its time (see the issue 3 note).
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import moto_bucket, parser, print_table, write_json
from testbed.harness import make_image_folder
from testbed.trainer_runs import read_json, start_trainer, trainer_env, wait_for, write_job


def attempt(job: str, env: dict, prefix: str, number: int, log: Path) -> dict:
    """Run one attempt until its first step, interrupt it, return its startup figures."""
    started = time.perf_counter()
    process = start_trainer(job, env, log=log)

    def startup():
        try:
            beat = read_json(f"{prefix}/status/heartbeat.json")
        except FileNotFoundError:
            return None
        return (
            beat.get("startup") if beat.get("attempt") == number and "first_step_s" in beat.get("startup", {}) else None
        )

    if not wait_for(lambda: startup() is not None or process.poll() is not None, timeout=600, poll=0.05):
        process.kill()
        raise TimeoutError("no first step")
    seen = time.perf_counter() - started
    figures = startup()
    process.send_signal(signal.SIGTERM)
    if process.wait(timeout=600) != 75:
        raise RuntimeError(f"attempt {number} did not exit as interrupted; see {log}")
    checkpoint = figures.pop("checkpoint") or {}
    return {**figures, **{f"checkpoint_{k}": v for k, v in checkpoint.items()}, "seen_by_bench_s": seen}


def main(argv: list[str] | None = None) -> dict:
    args_parser = parser(__doc__)
    args_parser.add_argument("--model", default="resnet50")
    args_parser.add_argument("--resumes", type=int, default=3)
    args = args_parser.parse_args(argv)
    model, resumes = ("mobilenet_v3_small", 1) if args.quick else (args.model, args.resumes)

    with moto_bucket("spotctl-bench") as bucket:
        env = trainer_env(
            {**{k: v for k, v in os.environ.items() if k.startswith("AWS_")}, "SPOTCTL_HEARTBEAT_SECONDS": "0.3"}
        )
        work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
        data = make_image_folder(work / "data", per_class={"train": 16, "val": 4}, size=64)
        job = write_job(
            work / "job.yaml",
            f"{bucket}/spotctl",
            data.split("train"),
            data.split("val"),
            name="resume",
            train__model={"name": model, "weights": None},
            train__data__image_size=64,
            train__data__workers=0,
            train__checkpoint={"every_steps": None, "every_seconds": None, "keep": 2},
        )
        env["SPOTCTL_CACHE_DIR"] = str(work / "cache")
        prefix = f"{bucket}/spotctl/jobs/resume"
        cold = attempt(str(job), env, prefix, 1, work / "out.log")
        resumed = [attempt(str(job), env, prefix, n, work / "out.log") for n in range(2, resumes + 2)]

    median = {key: statistics.median(r[key] for r in resumed) for key in resumed[0]}
    print(
        f"\nresume time, {model}, checkpoint {median['checkpoint_bytes'] / 1e6:.0f} MB on a moto S3 server (median of {len(resumed)} resumes)\n"
    )
    rows = [(key, cold.get(key, 0.0), median[key]) for key in median if key != "checkpoint_bytes"]
    print_table(("part (seconds)", "cold start", "resume"), rows)
    ratio = median["first_step_s"] / cold["first_step_s"]
    print(f"\nresume / cold start, import to first step: {ratio:.2f}")
    figures = {"model": model, "cold": cold, "resumed_median": median, "ratio": ratio}
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
