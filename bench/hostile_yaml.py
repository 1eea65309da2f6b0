"""`spotctl validate` on hostile job files: wall time and peak memory of the whole command, per file.

    python -m bench.hostile_yaml [--before TREE] [--limit-s 30] [--limit-gib 4] [--json PATH]

Each case is written to a temporary folder and `python -m orchestrator validate FILE` runs on it as
a child process (its own interpreter, as a user's command is), timed from start to exit, its peak
RSS read from `wait4`. `--before TREE` runs the same command from another checkout too (e.g. `git
worktree add /tmp/before <commit>`) and prints after/before ratios. A child is stopped at
`--limit-s` seconds or `--limit-gib` of address space: such a run is shown as `>LIMIT`. No target:
a table of figures (a hostile file should cost what a normal one does: interpreter start-up).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import parser, print_table, write_json
from testbed import REPO


def laughs() -> str:
    lines = ["name: lol", 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
        previous = name
    return "\n".join(lines) + "\n"


def cases() -> dict[str, bytes | None]:
    example = (REPO / "examples" / "quickstart.yaml").read_bytes()
    padding = b'  - "' + b"x" * 90 + b'"\n'
    return {
        "examples/quickstart.yaml": example,
        "billion laughs (9 lines)": laughs().encode(),
        "10 MB (a long list)": example + b"extra:\n" + padding * (10_000_000 // len(padding)),
        "deep nesting (5000 [)": b"name: x\ntrain: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "self-referencing alias": b"name: x\ntrain: &t\n  model: *t\n",
        "100000-digit integer": b"name: x\ntrain:\n  epochs: 1" + b"0" * 100_000 + b"\n",
        "FIFO": None,
    }


def run(tree: Path, job: Path, limit_s: float, limit_bytes: int) -> tuple[float | None, float | None, int | None]:
    """(seconds, peak MiB, exit code) of `spotctl validate job` run from `tree`; seconds and code None
    when it ran out of time (out of memory: the exit code of its MemoryError, 1)."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    env = {**os.environ, "PYTHONPATH": str(tree), "SPOTCTL_HOME": tempfile.mkdtemp(prefix="bench-home-")}
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "validate", str(job)],
        cwd=job.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=limits,
    )
    deadline, timed_out = started + limit_s, False
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            child.send_signal(signal.SIGKILL)
            timed_out = True
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    return (None, peak, None) if timed_out else (seconds, peak, os.waitstatus_to_exitcode(status))


def main() -> None:
    args_parser = parser(__doc__)
    args_parser.add_argument("--before", type=Path, help="another checkout to compare with")
    args_parser.add_argument("--limit-s", type=float, default=30.0)
    args_parser.add_argument("--limit-gib", type=float, default=4.0)
    args = args_parser.parse_args()
    limit_bytes = int(args.limit_gib * (1 << 30))
    trees = {"after": REPO} | ({"before": args.before.resolve()} if args.before else {})
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for n, (name, raw) in enumerate(cases().items()):
            job = Path(folder) / f"case{n}.yaml"
            if raw is None:
                os.mkfifo(job)
            else:
                job.write_bytes(raw)
            measured = {label: run(tree, job, args.limit_s, limit_bytes) for label, tree in trees.items()}
            figures[name] = measured
            row = [name]
            for label in trees:
                seconds, peak, code = measured[label]
                time_text = f">{args.limit_s:.0f} s" if seconds is None else f"{seconds:.2f} s"
                row += [time_text, f"{peak:.0f} MiB", "killed" if code is None else str(code)]
            if args.before:
                after, before = measured["after"], measured["before"]
                before_s = before[0] if before[0] is not None else args.limit_s
                row += [f"{after[0] / before_s:.2f}" + ("" if before[0] is not None else " (before: at least)")]
                row += [f"{after[1] / before[1]:.3f}"]
            rows.append(row)
    header = ["file"]
    for label in trees:
        header += [f"{label} time", f"{label} peak RSS", f"{label} exit"]
    if args.before:
        header += ["time after/before", "memory after/before"]
    print_table(header, rows)
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
