"""Rewrite the job.yaml reference and the settings table in README.md from their sources (`make reference`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.spec_reference import README_END, README_START, markdown_reference  # noqa: E402
from trainer.job.settings import markdown_table  # noqa: E402

readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text()
head, rest = text.split(README_START, 1)
_, tail = rest.split(README_END, 1)
text = f"{head}{README_START}\n{markdown_reference()}{README_END}{tail}"
head, rest = text.split("<!-- settings:start -->", 1)
_, tail = rest.split("<!-- settings:end -->", 1)
readme.write_text(f"{head}<!-- settings:start -->\n{markdown_table()}<!-- settings:end -->{tail}")
print(f"updated the job.yaml reference and the settings table in {readme}")
