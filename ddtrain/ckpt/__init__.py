"""Checkpoints: the file format (atomic, checksummed, safe to load), the catalog of a checkpoint
directory, and the training state that goes in."""
