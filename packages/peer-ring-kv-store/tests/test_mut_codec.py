"""Value codecs: exact encodings, limits and error messages (tools/mutation found them loose).

test_codec.py checks the round trips and the refusals; these pin the bytes on the wire
(other languages read them), the nesting limit to the level, and what each error says.
"""

from __future__ import annotations

import pickle

import pytest

from peer_ring.kv._codec import (
    MAX_DEPTH,
    CodecError,
    JsonCodec,
    PickleCodec,
    decode_value,
    encode_value,
)

J = JsonCodec()


def nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def test_strings_are_tagged_utf8_and_lone_surrogates_survive() -> None:
    assert J.encode("hé") == b"sh\xc3\xa9"
    assert J.encode("\ud800") == b"s\xed\xa0\x80"
    assert J.decode(b"s\xed\xa0\x80") == "\ud800"
    assert J.decode(b"s") == ""


def test_other_values_are_compact_tagged_json_without_ascii_escapes() -> None:
    assert J.encode({"é": [1, 2.5, True, None]}) == 'j{"é":[1,2.5,true,null]}'.encode()
    assert J.decode('j{"é":[1,2.5,true,null]}'.encode()) == {"é": [1, 2.5, True, None]}
    assert J.encode({"k": "\ud800"}) == b'j{"k":"\xed\xa0\x80"}'
    assert J.decode(b'j{"k":"\xed\xa0\x80"}') == {"k": "\ud800"}


def test_an_int_json_cannot_write_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"^JsonCodec cannot encode int: .*digits"):
        J.encode(10**5000)


def test_nesting_is_accepted_up_to_max_depth_exactly() -> None:
    assert MAX_DEPTH == 100
    assert J.decode(J.encode(nested(MAX_DEPTH))) == nested(MAX_DEPTH)
    with pytest.raises(TypeError) as caught:
        J.encode(nested(MAX_DEPTH + 1))
    where = "value" + "[0]" * MAX_DEPTH
    assert str(caught.value) == f"JsonCodec: {where} is nested more than 100 deep"
    deep_dict: object = 1
    for _ in range(MAX_DEPTH):
        deep_dict = {"a": deep_dict}
    assert J.decode(J.encode(deep_dict)) == deep_dict  # dicts count one level each too
    with pytest.raises(TypeError, match="nested more than 100 deep"):
        J.encode({"a": deep_dict})


def test_refusals_name_the_place_and_the_type() -> None:
    with pytest.raises(TypeError) as caught:
        J.encode({"a": {1: 2}})
    assert str(caught.value) == (
        "JsonCodec: value['a'] has a int key 1; only str keys come back unchanged"
    )
    with pytest.raises(TypeError) as caught:
        J.encode([1, (2, 3)])
    assert str(caught.value) == (
        "JsonCodec cannot encode tuple (value[1]): it would not come back as the same "
        "type (use a list); use PickleCodec or encode it yourself"
    )
    with pytest.raises(TypeError) as caught:
        J.encode({"s": {1}})
    assert str(caught.value) == (
        "JsonCodec cannot encode set (value['s']): it would not come back as the same "
        "type; use PickleCodec or encode it yourself"
    )


def test_every_item_of_a_list_and_a_dict_is_checked_not_only_the_first() -> None:
    with pytest.raises(TypeError, match=r"value\[2\]"):
        J.encode([1, "x", (1,)])
    with pytest.raises(TypeError, match=r"value\[0\]"):
        J.encode([(1,), "x", 2])  # the scalars after it are checked first: not the end
    with pytest.raises(TypeError, match=r"value\['b'\]"):
        J.encode({"a": 1, "b": (1,)})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "cannot decode an empty encoded value"),
        (b"j{", "invalid 'j'-tagged value: "),
        (b"s\xff", "invalid 's'-tagged value: "),
        (b"j\xff", "invalid 'j'-tagged value: "),
        (b"j" + b"[" * 100_000 + b"]" * 100_000, "invalid 'j'-tagged value: "),
        (b"x{}", "unknown value tag 0x78 (written by another codec?)"),
        (b"\x01", "unknown value tag 0x01 (written by another codec?)"),
        (
            b"p\x80\x05N.",
            "value was written by PickleCodec; JsonCodec refuses to unpickle "
            "(configure PickleCodec only if every peer is trusted)",
        ),
    ],
)
def test_json_decoding_errors_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(CodecError) as caught:
        J.decode(data)
    assert str(caught.value).startswith(message)


def test_pickle_codec_uses_its_protocol_and_reads_json_values() -> None:
    value = {"t": (1, 2), "s": {3}}
    assert PickleCodec().encode(value) == b"p" + pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    assert PickleCodec(protocol=2).encode(value) == b"p" + pickle.dumps(value, protocol=2)
    assert PickleCodec().decode(PickleCodec(protocol=2).encode(value)) == value
    assert PickleCodec().decode(J.encode("text")) == "text"
    assert PickleCodec().decode(J.encode([1])) == [1]
    with pytest.raises(CodecError, match=r"^invalid pickled value: "):
        PickleCodec().decode(b"p\x80")
    with pytest.raises(CodecError, match="cannot decode an empty encoded value"):
        PickleCodec().decode(b"")


def test_encode_value_stores_bytes_like_values_raw() -> None:
    raw = b"abc"
    data, encoded = encode_value(raw)
    assert data is raw and encoded is False
    for view in (bytearray(b"abc"), memoryview(b"abc")):
        data, encoded = encode_value(view)
        assert type(data) is bytes and data == b"abc" and encoded is False
    assert encode_value("abc") == (b"sabc", True)
    assert encode_value([1], PickleCodec()) == (b"p" + pickle.dumps([1], 5), True)


class Broken:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def encode(self, obj: object) -> bytes:  # pragma: no cover - unused
        raise NotImplementedError

    def decode(self, data: bytes) -> object:
        raise self.error


def test_decode_value_raw_as_is_and_any_codec_failure_as_codec_error() -> None:
    assert decode_value(b"sabc", False) == b"sabc"
    assert decode_value(b"sabc", True) == "abc"
    own = CodecError("mine")
    with pytest.raises(CodecError) as caught:
        decode_value(b"x", True, Broken(own))
    assert caught.value is own
    cause = ValueError("bad")
    with pytest.raises(CodecError) as caught:
        decode_value(b"x", True, Broken(cause))
    assert str(caught.value) == "Broken could not decode the value: ValueError('bad')"
    assert caught.value.__cause__ is cause
