"""spotctl's data plane: the resumable trainer that runs on the instance (`python -m trainer`).

Imports nothing heavy: its `trainer.job` subpackage (the job spec, storage, layout, documents and
settings) is the contract the torch-free orchestrator shares, and importing it must not pull torch in.
"""

import time as _time

STARTED = _time.monotonic()
"""When the trainer package was first imported: the start of the process, for startup timings."""
