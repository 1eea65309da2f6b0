"""What the tests and the benchmarks both stand on (neither imports the other): a moto server on
loopback with the AWS environment that points clients at it, tiny real image datasets, and trainer
runs in subprocesses. Not part of the spotctl package."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
