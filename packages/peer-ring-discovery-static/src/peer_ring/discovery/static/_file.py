"""File discovery: a static peer list kept in a file that the node re-reads while it runs.

A plain :class:`~peer_ring.discovery.static.StaticDiscovery` list is fixed at start-up, so a
cluster without a discovery service (VMs, a laptop, the e2e suite's local process driver)
could never grow or shrink without restarting every node. :class:`FileDiscovery` closes that
gap with the smallest possible mechanism: the member list lives in a file (often one file
shared by every node of a machine, or one pushed by configuration management) and each node
polls it. Editing the file is the membership change; every node applies it within one poll
interval, and the core moves the data (a join pulls partitions, a removal re-replicates).

File format: peer addresses (``host:port``) separated by commas, spaces or newlines; ``#``
starts a comment that runs to the end of the line. This node's own address may be listed
or not (it is always a member of its own view).

Replace the file atomically (write a temporary file in the same directory, then rename it
over the old one): a reader may otherwise see a half-written list. As a second guard, a
list that reads as *empty* while the node runs is ignored with a warning — a member list
never legitimately loses every peer at once, and applying it would make the node a
one-member ring that takes ownership of everything.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from peer_ring.core import Clock, InvalidArgumentError, Member, SystemClock
from peer_ring.discovery.static._address import normalize_address

logger = logging.getLogger(__name__)

#: Default seconds between two reads of the peers file.
DEFAULT_POLL_INTERVAL = 1.0


def parse_peers_text(text: str) -> list[str]:
    """The addresses listed in the text of a peers file, in order, without duplicates.

    Raises:
        InvalidArgumentError: an entry is not a valid ``host:port``.
    """
    found: list[str] = []
    for line in text.splitlines():
        content = line.split("#", 1)[0]
        for entry in content.replace(",", " ").split():
            address = normalize_address(entry)
            if address not in found:
                found.append(address)
    return found


class FileDiscovery:
    """Peers listed in a file, re-read every ``poll_interval`` seconds.

    Args:
        path: the peers file (see the module docs for its format). It must exist and be
            valid when the discovery is created, so that a typo fails at start-up.
        self_address: this node's own address; its gRPC listener binds to it.
        poll_interval: seconds between two checks of the file. A check costs one
            ``stat``; the file is read only when its size, modification time or inode
            changed.
        clock: what the poll interval is measured on (default: the real clock). Tests
            pass a :class:`~peer_ring.core.testing.FakeClock` to poll exactly when they
            move it.

    Raises:
        InvalidArgumentError: the file cannot be read or holds a malformed address, or
            ``self_address`` is malformed, or ``poll_interval`` is not > 0.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        self_address: str,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        clock: Clock | None = None,
    ) -> None:
        if not poll_interval > 0:
            raise InvalidArgumentError(f"poll_interval must be > 0, got {poll_interval!r}")
        self._path = Path(path)
        self._self = normalize_address(self_address)
        self._poll_interval = poll_interval
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._stopped = asyncio.Event()
        self._stamp = self._stat()
        if self._stamp is None:
            raise InvalidArgumentError(f"peers file {str(self._path)!r} cannot be read")
        self._members = self._members_of(self._read())

    @property
    def self_address(self) -> str:
        """This node's address."""
        return self._self

    @property
    def path(self) -> Path:
        """The peers file."""
        return self._path

    @property
    def peers(self) -> frozenset[str]:
        """Every member's address, as of the last read of the file."""
        return frozenset(m.address for m in self._members)

    async def start(self) -> frozenset[Member]:
        """Return the member set read from the file."""
        return self._members

    async def watch(self) -> AsyncIterator[frozenset[Member]]:
        """Yield the member set each time the file lists a different one, until ``stop()``.

        A file that disappears, cannot be parsed or lists nobody is ignored (the last good
        list stays in force) and logged once per distinct problem, so that a bad edit never
        shrinks the ring.
        """
        last_problem = ""
        while not self._stopped.is_set():
            await self._pause()
            if self._stopped.is_set():
                return
            stamp = self._stat()
            if stamp is None:
                problem = "cannot be read"
            elif stamp == self._stamp:
                continue
            else:
                try:
                    listed = self._read()
                except (OSError, InvalidArgumentError) as exc:
                    problem = str(exc)
                else:
                    if not listed:
                        problem = "lists no peer"
                    else:
                        self._stamp = stamp
                        last_problem = ""
                        members = self._members_of(listed)
                        if members != self._members:
                            added = sorted(m.address for m in members - self._members)
                            removed = sorted(m.address for m in self._members - members)
                            logger.info(
                                "peers file %s changed: %d members (+%s -%s)",
                                self._path,
                                len(members),
                                added,
                                removed,
                            )
                            self._members = members
                            yield members
                        continue
            if problem != last_problem:
                logger.warning(
                    "peers file %s %s; keeping the previous %d members",
                    self._path,
                    problem,
                    len(self._members),
                )
                last_problem = problem

    async def stop(self) -> None:
        """End ``watch()``; idempotent."""
        self._stopped.set()

    # -- helpers ------------------------------------------------------------------------

    async def _pause(self) -> None:
        """Wait one poll interval on the clock, or less if ``stop()`` is called."""
        sleeper = asyncio.ensure_future(self._clock.sleep(self._poll_interval))
        stopper = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait((sleeper, stopper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()
            await asyncio.gather(sleeper, stopper, return_exceptions=True)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self._path.stat()
        except OSError:
            return None
        # The inode catches an atomic rename even when size and mtime happen to match.
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> list[str]:
        try:
            text = self._path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(
                f"peers file {str(self._path)!r} cannot be read: {exc}"
            ) from None
        try:
            return parse_peers_text(text)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"peers file {str(self._path)!r}: {exc}") from None

    def _members_of(self, listed: list[str]) -> frozenset[Member]:
        addresses = list(listed)
        if self._self not in addresses:
            addresses.append(self._self)
        return frozenset(Member(a) for a in addresses)
