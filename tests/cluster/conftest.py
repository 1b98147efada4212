import pytest

from ddtrain.testing import netns
from tests.cluster import harness


@pytest.fixture(scope="module")
def cluster_factory():
    """``make(nodes, rate=..., slots=...)`` builds a cluster; all are removed at the module's end."""
    made: list[netns.Cluster] = []

    def make(nodes: int, **kw) -> netns.Cluster:
        made.append(harness.build(nodes, **kw))
        return made[-1]

    yield make
    for cluster in made:
        netns.down(cluster.name)
