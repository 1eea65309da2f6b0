"""spotctl's data plane: the resumable trainer that runs on the instance (`python -m trainer`).

Deliberately empty of imports: `trainer.config` (the job spec) is shared with the torch-free
orchestrator, and importing the package must not pull torch in.
"""
