"""Training and evaluation loops, checkpoints, logging."""
