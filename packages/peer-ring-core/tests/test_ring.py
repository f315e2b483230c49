"""The ring of docs/hash-spec.md: claim, preference lists, balance, movement, diff, vectors.

Statistical properties (balance of replicas, movement on join/leave) are asserted with
bounds measured by ``tools/ring-stats measure`` (see the spec's section 10) and margin on
top. Those tests run with ``derandomize=True``: a statistical bound checked on fresh random
samples at every run would eventually fail by bad luck, not by a regression.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import farmhash
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from peer_ring.core._errors import InvalidArgumentError
from peer_ring.core._hashing import partition_for_key
from peer_ring.core._ring import DEFAULT_PARTITIONS, PartitionChange, Ring, RingDiff

HERE = Path(__file__).resolve().parent
SPEC = HERE.parents[2] / "docs" / "hash-spec.md"
VECTORS = HERE / "vectors" / "ring.json"

# Measured worst (x - 1) / ((n + 1) / sqrt(P)) over 40-150 member sets per size is ~1.3
# (x = replicas copied / minimum); the mean is ~0.8. See docs/hash-spec.md, section 10.
MOVEMENT_COEFFICIENT = 1.75
MEAN_MOVEMENT_COEFFICIENT = 1.15
# Measured worst deviation of per-node replica counts (N=3) from the mean: 10.5% at 100
# members, 7% up to 30.
REPLICA_BALANCE = 0.15

STATISTICAL = settings(
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- the spec, written plainly ---------------------------------------------------------------


def spec_claim(members: list[str], partitions: int) -> list[str]:
    """Section 7.2 of the spec, literally: sort all P*n triples and walk them."""
    nodes = sorted(set(members), key=lambda m: m.encode("utf-8"))
    q, r = divmod(partitions, len(nodes))
    triples = sorted(
        (
            (farmhash.fingerprint64(f"{p}:{m}".encode()), p, m)
            for p in range(partitions)
            for m in nodes
        ),
        key=lambda t: (-t[0], t[1], t[2].encode("utf-8")),
    )
    owner: list[str | None] = [None] * partitions
    held = dict.fromkeys(nodes, 0)
    extra = r
    for _, p, m in triples:
        if owner[p] is not None:
            continue
        if held[m] < q or (held[m] == q and extra > 0):
            if held[m] == q:
                extra -= 1
            owner[p] = m
            held[m] += 1
    assert all(o is not None for o in owner)
    return [o for o in owner if o is not None]


def spec_preference_list(owners: list[str] | tuple[str, ...], p: int, n: int) -> list[str]:
    """Section 8 of the spec, literally: walk clockwise collecting distinct owners."""
    want = min(n, len(set(owners)))
    nodes: list[str] = []
    j = p
    while len(nodes) < want:
        node = owners[j % len(owners)]
        if node not in nodes:
            nodes.append(node)
        j += 1
    return nodes


def spec_table(name: str) -> list[list[str]]:
    """Rows of the Markdown table after ``<!-- vectors: name -->`` in the spec (no header)."""
    lines = SPEC.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"<!-- vectors: {name} -->") + 1
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    assert len(rows) > 2, f"table {name!r} is empty"
    return rows[2:]


def random_members(seed: int, count: int) -> list[str]:
    """``count`` distinct addresses, a mix of IPv4 with random ports and one-IP-many-ports."""
    rnd = random.Random(seed)
    members: set[str] = set()
    while len(members) < count:
        if rnd.random() < 0.8:
            ip = ".".join(str(rnd.randrange(256)) for _ in range(4))
            members.add(f"{ip}:{rnd.choice([7101, 80, rnd.randrange(1, 65536)])}")
        else:
            members.add(f"127.0.0.1:{rnd.randrange(1024, 65536)}")
    return sorted(members)


def movement_bound(n: int, partitions: int) -> float:
    return 1 + MOVEMENT_COEFFICIENT * (n + 1) / math.sqrt(partitions)


# Any text that has a UTF-8 form (no lone surrogates), not only addresses.
member_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)


# -- construction and validation -------------------------------------------------------------


def test_members_are_sorted_and_deduplicated() -> None:
    ring = Ring(["b:1", "a:1", "c:1", "a:1"], 16)
    assert ring.members == ("a:1", "b:1", "c:1")
    assert len(ring) == 3
    assert ring.partitions == 16
    assert "b:1" in ring
    assert "d:1" not in ring
    assert len(ring.owners) == 16


def test_default_partitions() -> None:
    ring = Ring(["a:1"])
    assert ring.partitions == DEFAULT_PARTITIONS == 2048
    assert set(ring.owners) == {"a:1"}


def test_default_partitions_is_the_node_default() -> None:
    # A node built with default settings must use the ring's default P.
    from peer_ring.core._config import PeerRingConfig

    assert PeerRingConfig().partitions == DEFAULT_PARTITIONS


@pytest.mark.parametrize(
    ("members", "partitions", "message"),
    [
        ([], 16, "at least one member"),
        ([""], 16, "non-empty str"),
        (["a:1", 7], 16, "non-empty str"),
        ("127.0.0.1:7101", 16, "collection of addresses"),
        (b"127.0.0.1:7101", 16, "collection of addresses"),
        (["a:\ud800"], 16, "not valid Unicode"),
        (["a:1"], 0, "partitions must be"),
        (["a:1"], -3, "partitions must be"),
        (["a:1"], True, "partitions must be"),
        (["a:1"], 2.0, "partitions must be"),
        (["a:1", "b:1", "c:1"], 2, "cannot hold 3 members"),
    ],
)
def test_invalid_rings_are_rejected(members: object, partitions: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        Ring(members, partitions)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=message):
        Ring.build(members, partitions)  # type: ignore[arg-type]


def test_as_many_members_as_partitions_gives_one_each() -> None:
    members = [f"n{i}:1" for i in range(8)]
    ring = Ring(members, 8)
    assert sorted(ring.owners) == sorted(members)


@pytest.mark.parametrize("bad", [-1, 16, 1000])
def test_out_of_range_partitions_are_rejected(bad: int) -> None:
    ring = Ring(["a:1", "b:1"], 16)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        ring.owner(bad)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        ring.preference_list(bad, 2)


@pytest.mark.parametrize("n", [0, -1, False, 2.5])
def test_replication_below_one_is_rejected(n: int) -> None:
    ring = Ring(["a:1", "b:1"], 16)
    with pytest.raises(InvalidArgumentError, match="replication"):
        ring.preference_list(0, n)
    with pytest.raises(InvalidArgumentError, match="replication"):
        ring.partitions_of("a:1", n)
    with pytest.raises(InvalidArgumentError, match="replication"):
        ring.diff(ring, n)


def test_diff_needs_the_same_partition_count() -> None:
    with pytest.raises(InvalidArgumentError, match="16 and 32 partitions"):
        Ring(["a:1"], 16).diff(Ring(["a:1"], 32), 1)


def test_partition_for_key_is_the_hash_spec() -> None:
    ring = Ring(["a:1"], 100)
    for key in ("", "user:1", b"\xff", "clé"):
        assert ring.partition_for_key(key) == partition_for_key(key, 100)
        assert ring.partition_for_key(key) == farmhash.fingerprint64(key) % 100


# -- identity and the cached constructor ------------------------------------------------------


def test_equality_and_hash_follow_members_and_partitions() -> None:
    a = Ring(["x:1", "y:1", "z:1"], 32)
    b = Ring(["z:1", "x:1", "y:1", "x:1"], 32)
    assert a == b
    assert hash(a) == hash(b)
    assert a.owners == b.owners
    assert a != Ring(["x:1", "y:1", "z:1"], 33)
    assert a != Ring(["x:1", "y:1"], 32)
    assert a != ("x:1", "y:1", "z:1")
    assert len({a, b}) == 1


def test_build_shares_rings_for_the_same_member_set() -> None:
    a = Ring.build(["x:1", "y:1", "z:1"], 32)
    b = Ring.build(("z:1", "y:1", "x:1"), 32)
    c = Ring.build(iter(["x:1", "y:1", "z:1"]), 32)
    assert a is b is c
    assert a == Ring(["x:1", "y:1", "z:1"], 32)
    assert Ring.build(["x:1", "y:1", "z:1"], 64) is not a
    assert Ring.build(["x:1", "y:1"], 32) is not a


def test_repr_names_members_and_partitions() -> None:
    text = repr(Ring([f"10.0.0.{i}:7101" for i in range(6)], 64))
    assert "10.0.0.0:7101" in text
    assert "6 members" in text
    assert "partitions=64" in text


# -- the claim follows the spec exactly --------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    members=st.lists(member_text, min_size=1, max_size=24, unique=True),
    partitions=st.integers(min_value=1, max_value=300),
)
def test_claim_equals_the_plain_spec_algorithm(members: list[str], partitions: int) -> None:
    # The implementation sorts only the best 8 candidates of each partition and merges the
    # rest from a heap; the result must equal the plain sort of all P*n triples.
    partitions = max(partitions, len(members))
    assert list(Ring(members, partitions).owners) == spec_claim(members, partitions)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(9, 40), partitions=st.integers(40, 400))
def test_claim_equals_spec_when_candidates_run_past_the_first_pass(
    seed: int, size: int, partitions: int
) -> None:
    # More than 8 members, so that some partitions need candidates beyond the first pass.
    members = random_members(seed, size)
    assert list(Ring(members, partitions).owners) == spec_claim(members, partitions)


@settings(max_examples=40, deadline=None)
@given(
    members=st.lists(member_text, min_size=1, max_size=12, unique=True),
    data=st.data(),
)
def test_same_member_set_in_any_order_gives_the_same_ring(
    members: list[str], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(members))
    duplicated = shuffled + data.draw(st.lists(st.sampled_from(members), max_size=5))
    a, b = Ring(members, 64), Ring(duplicated, 64)
    assert a.owners == b.owners
    assert a.preference_list(5, 3) == b.preference_list(5, 3)


# -- preference lists ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(1, 20),
    partitions=st.integers(20, 200),
    n=st.integers(1, 25),
)
def test_preference_lists_follow_the_walk(seed: int, size: int, partitions: int, n: int) -> None:
    ring = Ring(random_members(seed, size), partitions)
    for p in range(partitions):
        nodes = ring.preference_list(p, n)
        assert list(nodes) == spec_preference_list(ring.owners, p, n)
        assert len(nodes) == min(n, size)
        assert len(set(nodes)) == len(nodes)
        assert nodes[0] == ring.owner(p)


def test_preference_lists_are_cached_tuples() -> None:
    ring = Ring(["a:1", "b:1", "c:1"], 64)
    first = ring.preference_list(7, 2)
    assert isinstance(first, tuple)
    assert ring.preference_list(7, 2) is first
    # Any n >= len(ring) gives the full list, shared.
    assert ring.preference_list(7, 3) is ring.preference_list(7, 10)
    assert set(ring.preference_list(7, 10)) == {"a:1", "b:1", "c:1"}


def test_single_member_ring() -> None:
    ring = Ring(["only:1"], 16)
    assert ring.preference_list(3, 3) == ("only:1",)
    assert ring.partitions_of("only:1", 3) == frozenset(range(16))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(1, 15), n=st.integers(1, 5))
def test_partitions_of_matches_the_preference_lists(seed: int, size: int, n: int) -> None:
    ring = Ring(random_members(seed, size), 128)
    total = 0
    for node in ring.members:
        mine = ring.partitions_of(node, n)
        assert mine == {p for p in range(128) if node in ring.preference_list(p, n)}
        total += len(mine)
    assert total == 128 * min(n, size)
    assert ring.partitions_of("not-a-member:1", n) == frozenset()
    assert ring.partitions_of(ring.members[0], 1) == {
        p for p in range(128) if ring.owner(p) == ring.members[0]
    }


# -- balance at the default partition count ----------------------------------------------------


@settings(STATISTICAL, max_examples=15)
@example(seed=1, size=100)
@example(seed=2, size=3)
@given(seed=st.integers(0, 2**32), size=st.integers(3, 100))
def test_balance_at_default_partitions(seed: int, size: int) -> None:
    ring = Ring(random_members(seed, size))
    q = DEFAULT_PARTITIONS // size
    mean = DEFAULT_PARTITIONS / size
    primaries = [len(ring.partitions_of(node, 1)) for node in ring.members]
    # Exact by construction: q or q + 1 each, exactly P % n of them with q + 1.
    assert set(primaries) <= {q, q + 1}
    assert primaries.count(q + 1) == DEFAULT_PARTITIONS % size
    assert all(abs(c - mean) <= 0.10 * mean for c in primaries)
    # Replicas (N = 3) depend on the walk too: bounded, not exact.
    mean3 = DEFAULT_PARTITIONS * 3 / size
    replicas = [len(ring.partitions_of(node, 3)) for node in ring.members]
    assert all(abs(c - mean3) <= REPLICA_BALANCE * mean3 for c in replicas), (
        min(replicas) / mean3,
        max(replicas) / mean3,
    )


# -- movement on join and leave -----------------------------------------------------------------


def check_diff(old: Ring, new: Ring, diff: RingDiff, n: int) -> None:
    """The diff is exactly the difference of the two rings' replica sets."""
    assert diff.replication == n
    changed = {
        p for p in range(old.partitions) if old.preference_list(p, n) != new.preference_list(p, n)
    }
    assert [c.partition for c in diff.changes] == sorted(changed)
    for node in set(old.members) | set(new.members):
        before, after = old.partitions_of(node, n), new.partitions_of(node, n)
        assert diff.gained_by(node) == after - before
        assert diff.lost_by(node) == before - after
    assert all(parts for parts in diff.gained.values())
    assert all(parts for parts in diff.lost.values())
    assert diff.moved_replicas == sum(len(c.added) for c in diff.changes)


@settings(STATISTICAL, max_examples=14)
@example(seed=1, size=100)
@example(seed=2, size=3)
@given(seed=st.integers(0, 2**32), size=st.integers(3, 100))
def test_join_moves_about_one_share(seed: int, size: int) -> None:
    members = random_members(seed, size + 1)
    joiner = random.Random(seed).choice(members)
    old = Ring([m for m in members if m != joiner])
    new = Ring(members)
    diff = old.diff(new, 3)
    check_diff(old, new, diff, 3)
    # The newcomer receives all its replicas; that is the minimum any scheme must copy.
    minimum = len(new.partitions_of(joiner, 3))
    assert diff.gained_by(joiner) == new.partitions_of(joiner, 3)
    assert diff.lost_by(joiner) == frozenset()
    assert abs(minimum - 3 * DEFAULT_PARTITIONS / (size + 1)) <= REPLICA_BALANCE * minimum
    # Everything else is reshuffling to restore exact balance, bounded as measured.
    assert diff.moved_replicas <= minimum * movement_bound(size, DEFAULT_PARTITIONS)


@settings(STATISTICAL, max_examples=14)
@example(seed=1, size=100)
@example(seed=2, size=3)
@given(seed=st.integers(0, 2**32), size=st.integers(3, 100))
def test_leave_moves_about_one_share(seed: int, size: int) -> None:
    members = random_members(seed, size + 1)
    leaver = random.Random(seed).choice(members)
    old = Ring(members)
    new = Ring([m for m in members if m != leaver])
    diff = old.diff(new, 3)
    check_diff(old, new, diff, 3)
    # Every replica the leaver held must be re-created elsewhere: the minimum.
    minimum = len(old.partitions_of(leaver, 3))
    assert diff.lost_by(leaver) == old.partitions_of(leaver, 3)
    assert leaver not in diff.gained
    assert diff.moved_replicas <= minimum * movement_bound(size, DEFAULT_PARTITIONS)


def test_mean_movement_over_a_fixed_sample() -> None:
    # The per-change bound above is loose at the tail; the typical change must stay close
    # to the measured mean coefficient (~0.8).
    coefficients = []
    for i, size in enumerate([4, 6, 8, 10, 14, 20, 30, 45, 64, 100]):
        members = random_members(1000 + i, size + 1)
        old = Ring.build(members[1:])
        new = Ring.build(members)
        ratio = old.diff(new, 3).moved_replicas / len(new.partitions_of(members[0], 3))
        assert ratio >= 1.0
        coefficients.append((ratio - 1) / ((size + 1) / math.sqrt(DEFAULT_PARTITIONS)))
    assert statistics.mean(coefficients) <= MEAN_MOVEMENT_COEFFICIENT, coefficients


def test_small_cluster_join_moves_exactly_the_minimum() -> None:
    # With 3 nodes and N = 3 every node holds everything; adding a 4th can only copy to it.
    members = ["127.0.0.1:7101", "127.0.0.2:7101", "127.0.0.3:7101", "127.0.0.4:7101"]
    old, new = Ring(members[:3]), Ring(members)
    diff = old.diff(new, 3)
    assert set(diff.gained) == {"127.0.0.4:7101"}
    assert diff.moved_replicas == len(new.partitions_of("127.0.0.4:7101", 3))


# -- diff ------------------------------------------------------------------------------------------


def test_diff_of_a_ring_with_itself_is_empty() -> None:
    ring = Ring(["a:1", "b:1", "c:1"], 64)
    diff = ring.diff(Ring(["c:1", "b:1", "a:1"], 64), 2)
    assert not diff
    assert diff.changes == ()
    assert diff.moved_replicas == 0
    assert diff.gained_by("a:1") == frozenset()
    assert diff.lost_by("zz:1") == frozenset()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    before=st.integers(1, 12),
    after=st.integers(1, 12),
    n=st.integers(1, 4),
)
def test_diff_between_arbitrary_views(seed: int, before: int, after: int, n: int) -> None:
    # Views can change by several nodes at once (a partition heals, a deployment rolls).
    pool = random_members(seed, 16)
    rnd = random.Random(seed)
    old = Ring(rnd.sample(pool, before), 96)
    new = Ring(rnd.sample(pool, after), 96)
    diff = old.diff(new, n)
    check_diff(old, new, diff, n)
    for change in diff.changes:
        assert change.before == old.preference_list(change.partition, n)
        assert change.after == new.preference_list(change.partition, n)
        assert change.added == set(change.after) - set(change.before)
        assert change.removed == set(change.before) - set(change.after)
        assert change.kept == tuple(x for x in change.before if x in change.after)
        assert change.owner_changed == (change.before[0] != change.after[0])
    assert bool(diff) == (
        old.owners != new.owners
        or any(old.preference_list(p, n) != new.preference_list(p, n) for p in range(96))
    )


def test_partition_change_properties() -> None:
    change = PartitionChange(5, ("a", "b", "c"), ("b", "d", "a"))
    assert change.added == {"d"}
    assert change.removed == {"c"}
    assert change.kept == ("a", "b")
    assert change.owner_changed
    assert not PartitionChange(5, ("a", "b"), ("a", "c")).owner_changed


# -- golden vectors ---------------------------------------------------------------------------


def test_golden_rings() -> None:
    rings = json.loads(VECTORS.read_text(encoding="utf-8"))["rings"]
    assert len(rings) >= 3
    for vector in rings:
        ring = Ring(vector["members"], vector["partitions"])
        members = vector["sorted_members"]
        assert list(ring.members) == members
        assert [members.index(o) for o in ring.owners] == vector["owners"]
        for p, expected in enumerate(vector["preference_lists_3"]):
            assert list(ring.preference_list(p, 3)) == [members[i] for i in expected]
        for key in vector["keys"]:
            partition = ring.partition_for_key(key["key"])
            assert partition == key["partition"]
            assert list(ring.preference_list(partition, 3)) == key["preference_list_3"]


def test_golden_vectors_follow_the_plain_spec() -> None:
    # The vectors are the contract for other languages: check them against the literal
    # algorithm too, not only against the optimized implementation.
    for vector in json.loads(VECTORS.read_text(encoding="utf-8"))["rings"]:
        if vector["partitions"] > 256:
            continue  # the plain algorithm is slow at P=2048; test_golden_rings covers it
        owners = spec_claim(vector["members"], vector["partitions"])
        members = vector["sorted_members"]
        assert [members.index(o) for o in owners] == vector["owners"]


def spec_code() -> dict[str, object]:
    """Execute the spec's Python pseudocode blocks and return what they define."""
    text = SPEC.read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    namespace: dict[str, object] = {"fingerprint64": farmhash.fingerprint64}
    for block in blocks:
        exec(block, namespace)
    return namespace


@pytest.mark.parametrize(("size", "partitions"), [(1, 5), (3, 7), (4, 64), (9, 200), (20, 256)])
def test_spec_pseudocode_matches_the_implementation(size: int, partitions: int) -> None:
    code = spec_code()
    claim, walk = code["claim"], code["preference_list"]
    assert callable(claim)
    assert callable(walk)
    members = random_members(size, size)
    ring = Ring(members, partitions)
    owners = claim(members, partitions)
    assert list(ring.owners) == owners
    for p in range(partitions):
        for n in (1, 2, 3, size + 1):
            assert list(ring.preference_list(p, n)) == walk(owners, p, n)


def test_spec_claim_example() -> None:
    members = ["127.0.0.1:7101", "127.0.0.2:7101", "127.0.0.3:7101"]
    partitions = 7
    q, r = divmod(partitions, len(members))
    triples = sorted(
        ((farmhash.fingerprint64(f"{p}:{m}"), p, m) for p in range(partitions) for m in members),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    rows = spec_table("claim-example")
    owner: dict[int, str] = {}
    held = dict.fromkeys(members, 0)
    extra = r
    for (step, score, p, node, holds, action), (s, tp, tm) in zip(rows, triples, strict=False):
        assert (int(score, 16), int(p), node) == (s, tp, tm), f"step {step}"
        assert int(holds) == held[tm], f"step {step}"
        if tp in owner:
            assert action == "skip: p taken", f"step {step}"
        elif held[tm] < q or (held[tm] == q and extra > 0):
            assert action.startswith("claim"), f"step {step}"
            assert ("q+1" in action) == (held[tm] == q), f"step {step}"
            extra -= held[tm] == q
            owner[tp] = tm
            held[tm] += 1
        else:
            assert action == "skip: node full", f"step {step}"
    # The table stops exactly when the last partition is claimed.
    assert len(owner) == partitions
    assert rows[-1][-1].startswith("claim")
    assert [owner[p] for p in range(partitions)] == list(Ring(members, partitions).owners)


def test_spec_owners_example() -> None:
    ring = Ring(["127.0.0.1:7101", "127.0.0.2:7101", "127.0.0.3:7101"], 7)
    rows = spec_table("owners-example")
    assert len(rows) == 7
    for p, owner, two, three in rows:
        assert ring.owner(int(p)) == owner
        assert ring.preference_list(int(p), 2) == tuple(two.split(", "))
        assert ring.preference_list(int(p), 3) == tuple(three.split(", "))
