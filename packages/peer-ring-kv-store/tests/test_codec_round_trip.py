"""JsonCodec: what it accepts comes back as the same type; the rest is refused."""

from __future__ import annotations

import collections
import enum
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer_ring.kv import InvalidValueError, JsonCodec
from peer_ring.kv._args import encode

CODEC = JsonCodec()

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@given(values)
def test_accepted_values_come_back_with_the_same_types(value: object) -> None:
    assert same(CODEC.decode(CODEC.encode(value)), value)


def test_special_floats_round_trip() -> None:
    assert math.isnan(CODEC.decode(CODEC.encode(math.nan)))  # type: ignore[arg-type]
    assert CODEC.decode(CODEC.encode([math.inf, -math.inf])) == [math.inf, -math.inf]


class Color(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ((1, 2), "tuple"),
        ({"a": [1, (2,)]}, "tuple"),
        ({1: "a"}, "int key"),
        ({2.5: "a"}, "float key"),
        ({1, 2}, "set"),
        (Color.RED, "Color"),
        (collections.OrderedDict(a=1), "OrderedDict"),
        (collections.defaultdict(list), "defaultdict"),
        (object(), "object"),
    ],
)
def test_values_that_would_change_type_are_refused(value: object, why: str) -> None:
    with pytest.raises(TypeError, match=why):
        CODEC.encode(value)
    with pytest.raises(InvalidValueError):
        encode(value, CODEC)


def test_nesting_is_bounded() -> None:
    deep: list[object] = []
    cur = deep
    for _ in range(200):
        nxt: list[object] = []
        cur.append(nxt)
        cur = nxt
    with pytest.raises(TypeError, match="nested"):
        CODEC.encode(deep)
