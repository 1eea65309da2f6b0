"""What the two planes agree on: the one part of `trainer` the orchestrator may import.

- `spec`, `spec_file`, `catalog`: the job spec (compute, budget, recovery, train), its YAML file and
  the torchvision facts it is validated against;
- `storage`: one storage root (S3 or a folder) with conditional writes;
- `layout`: where every object of a job lives;
- `documents`: the objects themselves (record and attempts, heartbeat, final word, manifest, stop
  request) and the states of a job and its attempts;
- `settings`: every SPOTCTL_* environment variable, including what the user-data passes the trainer.

Torch-free, and it imports nothing else of spotctl: tests/unit/test_layers.py holds it to that.
"""
