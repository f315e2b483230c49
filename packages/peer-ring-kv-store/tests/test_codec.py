"""Codecs: raw bytes untouched, JSON values round-trip, decoding untrusted input is safe."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.kv._codec import (
    DEFAULT_CODEC,
    Codec,
    CodecError,
    JsonCodec,
    PickleCodec,
    decode_value,
    encode_value,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(deadline=None)
@given(st.binary())
def test_bytes_pass_through_untouched(data: bytes) -> None:
    stored, encoded = encode_value(data)
    assert stored is data
    assert encoded is False
    assert decode_value(stored, encoded) is data


def test_bytes_like_values_are_stored_raw() -> None:
    assert encode_value(bytearray(b"ab")) == (b"ab", False)
    assert encode_value(memoryview(b"cd")) == (b"cd", False)


@settings(deadline=None)
@given(json_values)
def test_json_values_round_trip_and_are_flagged(value: object) -> None:
    stored, encoded = encode_value(value)
    assert encoded is True
    assert decode_value(stored, encoded) == value


def test_bytes_that_look_encoded_stay_bytes() -> None:
    # The flag, not the content, decides: raw bytes equal to an encoded string stay raw.
    looks_encoded = JsonCodec().encode("hello")
    stored, encoded = encode_value(looks_encoded)
    assert decode_value(stored, encoded) == looks_encoded


def test_strings_take_the_short_path() -> None:
    assert JsonCodec().encode("héllo") == "shéllo".encode()
    assert JsonCodec().encode(["héllo"]) == 'j["héllo"]'.encode()


def test_infinite_floats_round_trip() -> None:
    codec = JsonCodec()
    assert codec.decode(codec.encode(math.inf)) == math.inf
    nan = codec.decode(codec.encode(math.nan))
    assert isinstance(nan, float) and math.isnan(nan)


def test_unsupported_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="JsonCodec cannot encode set"):
        encode_value({1, 2})


@settings(deadline=None)
@given(st.binary())
def test_decoding_random_bytes_is_safe(data: bytes) -> None:
    codecs: list[Codec] = [JsonCodec()]
    if data[:1] != b"p":  # unpickling random input is exactly what PickleCodec must not see
        codecs.append(PickleCodec())
    for codec in codecs:
        try:
            value = codec.decode(data)
        except CodecError:
            continue
        assert data[:1] in (b"s", b"j")
        assert codec.decode(JsonCodec().encode(value)) == value or value != value


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"j{not json", "invalid"),
        (b"s\xff\xfe", "invalid"),
        (b"j" + b"[" * 100_000, "invalid"),  # recursion bomb
        (b"j" + b"1" * 5000, "invalid"),  # over Python's int digit limit
        (b"x123", "unknown value tag 0x78"),
    ],
)
def test_json_codec_rejects_bad_input(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        JsonCodec().decode(data)


class _Payload:
    """Unpickling this object would call ``_record_side_effect``."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_record_side_effect, ("pwned",))


_side_effects: list[str] = []


def _record_side_effect(arg: str) -> str:
    _side_effects.append(arg)
    return arg


def test_json_codec_never_unpickles() -> None:
    hostile = b"p" + pickle.dumps(_Payload())
    with pytest.raises(CodecError, match="refuses to unpickle"):
        decode_value(hostile, True)
    assert _side_effects == []


def test_pickle_codec_is_opt_in_and_round_trips_anything() -> None:
    codec = PickleCodec()
    value = {"set": {1, 2}, "tuple": (1, "a")}
    stored, encoded = encode_value(value, codec)
    assert encoded is True
    assert decode_value(stored, encoded, codec) == value
    # It reads JsonCodec values, so a store can switch codecs without rewriting data.
    assert codec.decode(JsonCodec().encode([1, "a"])) == [1, "a"]
    with pytest.raises(CodecError, match="invalid pickled value"):
        codec.decode(b"p\x80\x05garbage")


def test_third_party_codec_errors_become_codec_errors() -> None:
    class Fragile:
        def encode(self, obj: object) -> bytes:
            return repr(obj).encode()

        def decode(self, data: bytes) -> object:
            raise KeyError(data)

    codec = Fragile()
    assert isinstance(codec, Codec)
    with pytest.raises(CodecError, match="Fragile could not decode"):
        decode_value(b"x", True, codec)


def test_default_codec_is_json() -> None:
    assert isinstance(DEFAULT_CODEC, JsonCodec)
