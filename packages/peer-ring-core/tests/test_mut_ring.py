"""Ring details outside placement, pinned exactly (tools/mutation found them untested):
its repr, the zone a node is placed in, and the out-of-range partition error."""

from __future__ import annotations

import pytest

from peer_ring.core import InvalidArgumentError, Ring

NODES = [f"10.0.0.{i}:7101" for i in range(1, 7)]


def test_repr_shows_four_members_then_an_ellipsis() -> None:
    assert repr(Ring(NODES[:4], 16)) == (
        "Ring([10.0.0.1:7101, 10.0.0.2:7101, 10.0.0.3:7101, 10.0.0.4:7101] "
        "(4 members), partitions=16)"
    )
    assert repr(Ring(NODES[:5], 16)) == (
        "Ring([10.0.0.1:7101, 10.0.0.2:7101, 10.0.0.3:7101, 10.0.0.4:7101, ...] "
        "(5 members), partitions=16)"
    )


def test_zone_of_is_the_placement_zone_or_empty() -> None:
    zones = {n: ("a" if i % 2 else "b") for i, n in enumerate(NODES[:4])}
    ring = Ring(NODES[:4], 16, zones=zones)
    assert ring.zone_aware
    assert [ring.zone_of(n) for n in NODES[:4]] == ["b", "a", "b", "a"]
    assert ring.zone_of("10.9.9.9:1") == ""  # not a member
    plain = Ring(NODES[:4], 16)
    assert not plain.zone_aware and plain.zone_of(NODES[0]) == ""
    one_zone = Ring(NODES[:4], 16, zones=dict.fromkeys(NODES[:4], "a"))
    assert one_zone.zone_of(NODES[0]) == ""  # one zone: placement is not zone-aware


@pytest.mark.parametrize("partition", [-1, 16, 1000])
def test_owner_of_a_partition_out_of_range_names_it(partition: int) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        Ring(NODES[:3], 16).owner(partition)
    assert str(caught.value) == (
        f"partition {partition} is out of range for a ring of 16 partitions"
    )
