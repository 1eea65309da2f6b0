"""The README's quickstart transcript and the demo's, compared by the shape of their lines.

`make demo` writes its whole output to runs/demo.txt (scripts/demo.sh); `make readme-demo`
(scripts/update_readme_demo.py) copies its launch step (the launch, then the job's status once the
controller recovered and finished it) into README.md between the
markers below. tests/e2e/test_local_cloud.py runs a smaller quickstart through the same command and
checks that its lines have the shapes of the README's: the same format strings, whatever the times,
ids, prices, counts and column widths were. A change of output format then fails that test until
the README is regenerated.
"""

from __future__ import annotations

import re

START = "<!-- demo-transcript:start -->"
END = "<!-- demo-transcript:end -->"
DEFAULT_TRANSCRIPT = "runs/demo.txt"  # scripts/demo.sh's $DEMO_TRANSCRIPT default
STEP = (
    "== 3. "  # scripts/demo.sh's header of the step the README shows: `spotctl launch ... --local`, then `status JOB`
)

# What varies from run to run, most specific first: (pattern, placeholder).
_VARYING = [
    # int8's speed against fp32 is measured on a shared CPU: a figure, or not measurable (jobs.artifacts.speed)
    (re.compile(r"\d+(\.\d+)?x (faster|slower)|as fast as fp32|speed not measured reliably"), "<speed>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?"), "<iso>"),
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "<time>"),
    (re.compile(r"\b[a-z][a-z0-9-]*-\d{6}-[0-9a-f]{4}\b"), "<job>"),
    (re.compile(r"\bi-[0-9a-f]{8,17}\b"), "<instance>"),
    (re.compile(r"\b[a-z][a-z0-9]*\.\d*x?large\b"), "<type>"),
    (re.compile(r"\b[a-z]{2}-[a-z]+-\d[a-z]\b"), "<zone>"),
    (re.compile(r"\b[a-z]{2}-[a-z]+-\d\b"), "<region>"),
    (re.compile(r"\$\d+(\.\d+)?"), "<usd>"),
    (re.compile(r"\b(\d+h ?)?(\d+m ?)?\d+(\.\d+)?s\b"), "<duration>"),
    (re.compile(r"\b\d+(\.\d+)?(e[-+]?\d+)?"), "<n>"),
    (re.compile(r"─+"), "<rule>"),
    (re.compile(r"\s+"), " "),
]
# The watch's events that depend on when its polls fall, not on a format: a transition it saw (a
# short `exporting` phase is seen or not) and the EC2 reason an `ended` line names when EC2 had
# reported it by then.
_TRANSITION = re.compile(r"^<time> <job>: \w+ -> \w+$")
_ENDED_REASON = re.compile(r"(ended: \w+) \((Server|Client)\.\w+\)")


def section(transcript: str) -> str:
    """The lines of the demo step the README shows (after its header, up to the next one)."""
    lines = transcript.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(STEP)) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("== ")), len(lines))
    return "\n".join(line.rstrip() for line in lines[start:end]) + "\n"


def readme_block(readme: str) -> str:
    """The transcript in the README, without its fences."""
    block = readme.split(START, 1)[1].split(END, 1)[0]
    return block.strip().removeprefix("```text").removesuffix("```").strip("\n") + "\n"


def with_block(readme: str, transcript_section: str) -> str:
    """The README with `transcript_section` between the markers."""
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n```text\n{transcript_section}```\n{END}{tail}"


def shape(line: str) -> str:
    for pattern, placeholder in _VARYING:
        line = pattern.sub(placeholder, line)
    line = _ENDED_REASON.sub(r"\1", line.strip())
    return "<time> <job>: <state> -> <state>" if _TRANSITION.match(line) else line


def shapes(text: str) -> set[str]:
    """The distinct shapes of the lines of `text` (blank lines left out)."""
    return {shape(line) for line in text.splitlines() if line.strip()}
