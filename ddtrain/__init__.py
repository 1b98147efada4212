"""ddtrain: data-parallel training with an overlapped, bucketed gradient reducer."""

__version__ = "0.1.0"
