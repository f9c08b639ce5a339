"""Training: run configs, the loop, checkpoints, distributed data parallel."""
