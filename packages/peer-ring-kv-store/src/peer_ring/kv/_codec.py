"""Value codecs: how non-``bytes`` Python values become stored bytes and back.

``bytes`` values are never passed to a codec: they are stored untouched and the record's
``encoded`` flag stays ``False``, so a raw ``set`` then ``get`` returns identical bytes (and
clients in other languages see exactly what they wrote). Any other value goes through the
store's :class:`Codec` and the record is flagged ``encoded=True``; :func:`decode_value` uses
that flag, not a guess from the bytes, to decide whether to call the codec.

The default :class:`JsonCodec` is safe with untrusted peers: decoding is ``json.loads`` (or
UTF-8 for plain strings), which cannot run code. :class:`PickleCodec` round-trips any
picklable object but **must not be used when any peer or client may be untrusted**: unpickling
attacker-controlled bytes runs arbitrary code.

Both built-in codecs start their output with a one-byte tag (``s`` string, ``j`` JSON,
``p`` pickle), so a store configured with one of them fails cleanly (:class:`CodecError`) on
bytes written by another instead of misreading them.
"""

from __future__ import annotations

import json
import pickle
from typing import Protocol, runtime_checkable

from peer_ring.core import PeerRingError

_TAG_STR = 0x73  # "s": UTF-8 text, the most common non-bytes value, without JSON quoting
_TAG_JSON = 0x6A  # "j": JSON document
_TAG_PICKLE = 0x70  # "p": pickle (PickleCodec only)


class CodecError(PeerRingError, ValueError):
    """Stored bytes could not be decoded into a value (corrupt, foreign or unknown format)."""


@runtime_checkable
class Codec(Protocol):
    """Turns application values into bytes and back.

    ``decode`` receives bytes that may come from another node: it must raise (preferably
    :class:`CodecError`) on bad input and must never execute anything the input asks for.
    """

    def encode(self, obj: object) -> bytes:
        """Serialize ``obj``; raise ``TypeError`` for values this codec cannot represent."""
        ...

    def decode(self, data: bytes) -> object:
        """Deserialize what :meth:`encode` produced."""
        ...


class JsonCodec:
    """The default codec: ``str`` as tagged UTF-8, everything else as tagged JSON.

    Every value it accepts comes back as an equal value of the same type: exactly ``str``,
    ``int``, ``float``, ``bool``, ``None``, and ``list``s and ``dict``s (with ``str`` keys)
    of them, nested at most :data:`MAX_DEPTH` deep. Everything JSON would silently change is
    refused with ``TypeError``: tuples (they would come back as lists), sets, dict keys that
    are not ``str`` (``1`` would come back as ``"1"``), and subclasses such as enums,
    ``defaultdict`` or ``OrderedDict`` (they would come back as their base type). Decoding is
    safe on untrusted input.
    """

    __slots__ = ()

    def encode(self, obj: object) -> bytes:
        """Encode ``obj``.

        Raises:
            TypeError: ``obj`` is not JSON-serializable (for example a ``set``).
        """
        if type(obj) is str:
            return b"s" + obj.encode("utf-8", "surrogatepass")
        _check_round_trip(obj)
        try:
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"JsonCodec cannot encode {type(obj).__name__}: {exc}") from None
        return b"j" + text.encode("utf-8", "surrogatepass")

    def decode(self, data: bytes) -> object:
        """Decode bytes written by :meth:`encode`.

        Raises:
            CodecError: the bytes are empty, not tagged by this codec, or not valid.
        """
        if not data:
            raise CodecError("cannot decode an empty encoded value")
        tag = data[0]
        try:
            if tag == _TAG_STR:
                return data[1:].decode("utf-8", "surrogatepass")
            if tag == _TAG_JSON:
                return json.loads(data[1:].decode("utf-8", "surrogatepass"))
        except (ValueError, RecursionError) as exc:
            # ValueError covers JSONDecodeError, UnicodeDecodeError and over-long ints;
            # RecursionError a maliciously deep document.
            raise CodecError(f"invalid {chr(tag)!r}-tagged value: {exc}") from None
        if tag == _TAG_PICKLE:
            raise CodecError(
                "value was written by PickleCodec; JsonCodec refuses to unpickle "
                "(configure PickleCodec only if every peer is trusted)"
            )
        raise CodecError(f"unknown value tag 0x{tag:02x} (written by another codec?)")


#: Deepest nesting of lists and dicts :class:`JsonCodec` accepts.
MAX_DEPTH = 100

_SCALARS = frozenset({str, int, float, bool, type(None)})


def _check_round_trip(obj: object) -> None:
    """Raise ``TypeError`` unless JSON gives ``obj`` back with the same types."""
    stack: list[tuple[object, int, str]] = [(obj, 0, "value")]
    while stack:
        item, depth, where = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if depth >= MAX_DEPTH:
            raise TypeError(f"JsonCodec: {where} is nested more than {MAX_DEPTH} deep")
        if kind is list:
            assert isinstance(item, list)
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(item))
        elif kind is dict:
            assert isinstance(item, dict)
            for k, v in item.items():
                if type(k) is not str:
                    raise TypeError(
                        f"JsonCodec: {where} has a {type(k).__name__} key {k!r}; only str "
                        "keys come back unchanged"
                    )
                stack.append((v, depth + 1, f"{where}[{k!r}]"))
        else:
            hint = " (use a list)" if kind is tuple else ""
            raise TypeError(
                f"JsonCodec cannot encode {kind.__name__} ({where}): it would not come back as "
                f"the same type{hint}; use PickleCodec or encode it yourself"
            )


class PickleCodec:
    """Opt-in codec for any picklable object. **Unsafe with untrusted peers.**

    Unpickling runs code chosen by whoever produced the bytes; use this only when every
    node and client of the cluster is trusted. It still reads values written by
    :class:`JsonCodec`, so a store can switch to it without rewriting data.

    Args:
        protocol: the pickle protocol (default: ``pickle.HIGHEST_PROTOCOL``).
    """

    __slots__ = ("_json", "_protocol")

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self._protocol = protocol
        self._json = JsonCodec()

    def encode(self, obj: object) -> bytes:
        """Pickle ``obj`` (``TypeError``/``pickle.PicklingError`` if it cannot be)."""
        return b"p" + pickle.dumps(obj, protocol=self._protocol)

    def decode(self, data: bytes) -> object:
        """Unpickle (or JSON-decode a :class:`JsonCodec` value).

        Raises:
            CodecError: the bytes are not a valid pickle or JSON value.
        """
        if data and data[0] == _TAG_PICKLE:
            try:
                return pickle.loads(data[1:])  # opt-in, documented as unsafe
            except Exception as exc:
                raise CodecError(f"invalid pickled value: {exc!r}") from None
        return self._json.decode(data)


#: The codec a store uses when none is given.
DEFAULT_CODEC: Codec = JsonCodec()


def encode_value(value: object, codec: Codec = DEFAULT_CODEC) -> tuple[bytes, bool]:
    """Turn a user value into stored bytes and the record's ``encoded`` flag.

    ``bytes`` pass through untouched (flag ``False``); ``bytearray`` and ``memoryview`` are
    copied to ``bytes`` and also stored raw. Anything else goes through ``codec``.

    Returns:
        ``(data, encoded)``.
    """
    if type(value) is bytes:
        return value, False
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), False
    return codec.encode(value), True


def decode_value(data: bytes, encoded: bool, codec: Codec = DEFAULT_CODEC) -> object:
    """Inverse of :func:`encode_value`: raw bytes as-is, encoded values through ``codec``.

    Raises:
        CodecError: ``encoded`` is set and ``codec`` cannot decode ``data``.
    """
    if not encoded:
        return data
    try:
        return codec.decode(data)
    except CodecError:
        raise
    except Exception as exc:
        # A third-party codec may raise anything on bad input; callers catch one type.
        raise CodecError(f"{type(codec).__name__} could not decode the value: {exc!r}") from exc
