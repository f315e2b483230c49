"""Ring argument errors pinned to their exact messages (tools/mutation found them loose):
too many members for the partitions, and a preference list of a partition out of range."""

from __future__ import annotations

import pytest

from peer_ring.core import InvalidArgumentError, Ring

NODES = [f"10.0.0.{i}:7101" for i in range(1, 4)]


def test_more_members_than_partitions_is_refused_with_the_reason() -> None:
    with pytest.raises(InvalidArgumentError) as err:
        Ring(NODES, 2)
    assert str(err.value) == (
        "a ring of 2 partitions cannot hold 3 members: every member must own at least one partition"
    )
    assert len(Ring(NODES, 3).members) == 3  # exactly one partition each is enough


@pytest.mark.parametrize("partition", [-1, 16, 1000])
def test_a_preference_list_out_of_range_names_the_partition(partition: int) -> None:
    ring = Ring(NODES, 16)
    with pytest.raises(InvalidArgumentError) as err:
        ring.preference_list(partition, 2)
    assert str(err.value) == (f"partition {partition} is out of range for a ring of 16 partitions")


def test_an_empty_ring_is_refused_with_the_reason() -> None:
    with pytest.raises(InvalidArgumentError) as err:
        Ring([], 16)
    assert str(err.value) == "a ring needs at least one member"
