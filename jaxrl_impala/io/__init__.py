"""A run's outputs: run directory, metrics, checkpoints, progress line and plots."""
