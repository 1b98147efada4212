"""Hostfiles: the nodes and ranks per node a study reads from them."""

from __future__ import annotations

import pytest


def test_hostfiles_of_either_format_give_nodes_and_ranks_and_fill_in_order():
    from ddtrain.launcher.hostfile import HostfileError, parse_hostfile, ranks_per_node

    ompi = parse_hostfile("# two nodes\nnode1 slots=2\nnode2 slots=2 max_slots=4  # spare\n")
    assert ompi == [("node1", 2), ("node2", 2)] and parse_hostfile("a:8\nb:8") == [("a", 8), ("b", 8)]
    assert ranks_per_node(ompi, 3) == [2, 1] and ranks_per_node(ompi, 2) == [2]
    with pytest.raises(HostfileError, match="line 2 .'node2'. gives no rank count; fix: write 'node2 slots"):
        parse_hostfile("node1 slots=2\nnode2\n")
    with pytest.raises(HostfileError, match="5 ranks do not fit the hostfile's 4 slots"):
        ranks_per_node(ompi, 5)
