"""Copy the demo's launch step (the launch, then the status of the job the controller recovered) from
its transcript into README.md's quickstart (`make readme-demo`).

    python scripts/update_readme_demo.py [TRANSCRIPT]     default runs/demo.txt, which `make demo` writes

tests/e2e/test_local_cloud.py checks that the README's lines have the shapes the commands print today.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testbed import transcript  # noqa: E402

source = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / transcript.DEFAULT_TRANSCRIPT)
if not source.exists():
    sys.exit(f"no transcript at {source}: `make demo` writes it")
readme = ROOT / "README.md"
readme.write_text(transcript.with_block(readme.read_text(), transcript.section(source.read_text())))
print(f"updated the quickstart transcript in {readme} from {source}")
