"""A small, strict binary codec for records and command payloads.

Fields are written in a fixed order per message type: unsigned/signed 64-bit integers,
doubles, and length-prefixed byte strings. Decoding a truncated or malformed buffer raises
:class:`CodecError` (never a bare ``struct.error``), so bad input from a peer becomes a
typed error and never crashes a handler.
"""

from __future__ import annotations

import struct
from typing import Any

_Q = struct.Struct(">Q")
_q = struct.Struct(">q")
_D = struct.Struct(">d")
_I = struct.Struct(">I")


class CodecError(ValueError):
    """A buffer could not be decoded (truncated, trailing bytes, or bad values)."""


class Writer:
    """Appends fields to a growing buffer."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u64(self, value: int) -> Writer:
        self._parts.append(_Q.pack(value))
        return self

    def i64(self, value: int) -> Writer:
        self._parts.append(_q.pack(value))
        return self

    def f64(self, value: float) -> Writer:
        self._parts.append(_D.pack(value))
        return self

    def bytes_(self, value: bytes) -> Writer:
        self._parts.append(_I.pack(len(value)))
        self._parts.append(value)
        return self

    def str_(self, value: str) -> Writer:
        return self.bytes_(value.encode())

    def raw(self, value: bytes) -> Writer:
        """Append bytes as they are (a caller-packed fixed-size block)."""
        self._parts.append(value)
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads fields back in the order they were written."""

    __slots__ = ("_buf", "_pos", "_raw")

    def __init__(self, buf: bytes) -> None:
        self._raw = buf if type(buf) is bytes else bytes(buf)
        self._buf = memoryview(self._raw)
        self._pos = 0

    def raw(self) -> tuple[bytes, int]:
        """The whole buffer and the read position, for decoders that unpack in bulk
        (they call :meth:`seek` with where they stopped)."""
        return self._raw, self._pos

    def seek(self, pos: int) -> None:
        """Continue reading at ``pos`` (at most the end of the buffer)."""
        if not self._pos <= pos <= len(self._raw):
            raise CodecError("truncated buffer")
        self._pos = pos

    def _take(self, n: int) -> memoryview:
        end = self._pos + n
        if n < 0 or end > len(self._buf):
            raise CodecError("truncated buffer")
        view = self._buf[self._pos : end]
        self._pos = end
        return view

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        """Read one fixed-size block packed with ``fmt``."""
        return tuple(fmt.unpack(self._take(fmt.size)))

    def take_bytes(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        return bytes(self._take(n))

    def peek(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end), without consuming them."""
        return bytes(self._buf[self._pos : self._pos + n])

    def skip(self, n: int) -> None:
        """Consume ``n`` bytes."""
        self._take(n)

    # The fixed-size reads unpack straight from the buffer (no view, no copy): they are the
    # most frequent calls of every decoder.
    def u64(self) -> int:
        pos = self._pos
        if pos + 8 > len(self._raw):
            raise CodecError("truncated buffer")
        self._pos = pos + 8
        value: int = _Q.unpack_from(self._raw, pos)[0]
        return value

    def i64(self) -> int:
        pos = self._pos
        if pos + 8 > len(self._raw):
            raise CodecError("truncated buffer")
        self._pos = pos + 8
        value: int = _q.unpack_from(self._raw, pos)[0]
        return value

    def f64(self) -> float:
        pos = self._pos
        if pos + 8 > len(self._raw):
            raise CodecError("truncated buffer")
        self._pos = pos + 8
        value: float = _D.unpack_from(self._raw, pos)[0]
        return value

    def bytes_(self) -> bytes:
        pos = self._pos
        raw = self._raw
        if pos + 4 > len(raw):
            raise CodecError("truncated buffer")
        (n,) = _I.unpack_from(raw, pos)
        end = pos + 4 + n
        if end > len(raw):
            raise CodecError("truncated buffer")
        self._pos = end
        return raw[pos + 4 : end]

    def str_(self) -> str:
        try:
            return self.bytes_().decode()
        except UnicodeDecodeError as exc:
            raise CodecError("invalid UTF-8 string") from exc

    def at_end(self) -> bool:
        return self._pos == len(self._buf)

    def done(self) -> None:
        """Raise unless every byte was consumed."""
        if self._pos != len(self._buf):
            raise CodecError("trailing bytes")
