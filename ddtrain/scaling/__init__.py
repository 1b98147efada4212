"""Scaling studies: measure 1..N workers, model 1..128+ GPUs, report both side by side."""
