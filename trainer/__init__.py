"""spotctl's data plane: the resumable trainer that runs on the instance (`python -m trainer`).

Imports nothing heavy: `trainer.config` (the job spec) is shared with the torch-free
orchestrator, and importing the package must not pull torch in.
"""

import time as _time

STARTED = _time.monotonic()
"""When the trainer package was first imported: the start of the process, for startup timings."""
