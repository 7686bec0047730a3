"""Training and evaluation: launchers, DeepSpeed / DDP backends, checkpoints, the loop. Imports data and models."""
