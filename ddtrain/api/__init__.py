"""ddtrain from Python: start the job, wrap your model, train with your own loop.

``init()`` reads the launcher's environment and starts the process group once;
``DataParallel(module)`` averages gradients with ddtrain's overlapped reducer, so a loop written
for torch's DistributedDataParallel runs unchanged; ``shard(dataset, batch_size)`` gives this
rank its share of every global batch; ``shutdown()`` tears the group down.
"""

from ddtrain.api.context import init, shutdown
from ddtrain.api.data_parallel import DataParallel
from ddtrain.api.shard import shard

__all__ = ["DataParallel", "init", "shard", "shutdown"]
