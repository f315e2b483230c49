"""Command declarations: what the coordinator must know about an application command."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from peer_ring.core._errors import InvalidArgumentError
from peer_ring.core._result import CommandContext

#: A command handler: ``handler(ctx, key, payload) -> result bytes``. Plain functions run
#: inline (fastest: no Task); coroutine functions are awaited. ``bytearray`` and
#: ``memoryview`` results are accepted and converted to ``bytes``, locally and remotely.
Handler = Callable[
    [CommandContext, bytes, bytes], bytes | bytearray | memoryview | Awaitable[bytes]
]


@dataclass(frozen=True, slots=True)
class Command:
    """One application command, declared once and used to register and to execute it.

    Args:
        name: the command name inside its namespace (non-empty).
        reads: the command reads data. A replica that is still pulling the key's partition
            refuses it (an empty new replica must not answer "not found" in a read quorum)
            and the coordinator asks the partition's previous holders in its place.
        mutates: the command changes data. The replica notes the write for data movement
            (a partition written during its pull is pulled again).
        hinted: a replica that is suspected or fails may be replaced by the next healthy
            node of the ring walk, which stores the command as a *hint* and replays it to
            the replica later (sloppy quorum and hinted handoff, Dynamo §4.6). Defaults to
            ``mutates``. A hinted command may run twice and late, so it must be idempotent
            (for example "store this version if newer"); use ``hinted=False`` for
            mutations that are not (a counter increment).

    Raises:
        InvalidArgumentError: an empty name, or ``hinted=True`` without ``mutates=True``.

    Example:
        >>> GET = Command("get", reads=True)
        >>> SET = Command("set", mutates=True)
        >>> SET.hinted
        True
    """

    name: str
    reads: bool = False
    mutates: bool = False
    hinted: bool = field(default=None)  # type: ignore[assignment]  # None: like mutates

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError("a command name must be a non-empty string")
        hinted = self.mutates if self.hinted is None else self.hinted
        if hinted and not self.mutates:
            raise InvalidArgumentError(
                f"command {self.name!r}: hinted=True requires mutates=True "
                "(only writes are stored as hints)"
            )
        object.__setattr__(self, "reads", bool(self.reads))
        object.__setattr__(self, "mutates", bool(self.mutates))
        object.__setattr__(self, "hinted", bool(hinted))


def as_command(command: Command | str) -> Command:
    """``command`` itself, or a plain command (neither reads nor mutates) of that name."""
    if isinstance(command, Command):
        return command
    if isinstance(command, str):
        return Command(command)
    raise InvalidArgumentError(f"a command is a Command or a name, not {type(command).__name__}")
