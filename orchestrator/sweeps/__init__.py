"""Sweeps: Optuna studies whose trials are spotctl jobs."""
