"""What a run records: the per-step arithmetic (``processor``) and the files (``writer``)."""

from ddtrain.metrics.processor import MetricsProcessor
from ddtrain.metrics.writer import TAGS, MetricsWriter, NullWriter, json_safe, make_writer, rewind_jsonl

__all__ = ["TAGS", "MetricsProcessor", "MetricsWriter", "NullWriter", "json_safe", "make_writer",
           "rewind_jsonl"]
