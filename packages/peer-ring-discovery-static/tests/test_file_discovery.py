"""FileDiscovery: a peer list in a file, re-read while the node runs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from peer_ring.core import InvalidArgumentError, Member
from peer_ring.core.testing import FakeClock, settle_loop
from peer_ring.discovery.static import FileDiscovery, parse_peers_text

A, B, C, D = (f"127.0.0.{i}:7101" for i in range(1, 5))
POLL = 0.01


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` the way the docs recommend (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def members(*addresses: str) -> frozenset[Member]:
    return frozenset(Member(a) for a in addresses)


async def next_change(it: AsyncIterator[frozenset[Member]]) -> frozenset[Member]:
    # Bounded: a watch that never reports the change fails the test instead of hanging it.
    return await asyncio.wait_for(anext(it), 5.0)


async def finish(d: FileDiscovery, it: AsyncIterator[frozenset[Member]]) -> None:
    """Stop the discovery; its watch must then end (promptly)."""
    await d.stop()

    async def drain() -> None:
        async for _ in it:
            pass

    await asyncio.wait_for(drain(), 5.0)


def test_parse_commas_spaces_newlines_comments_and_duplicates() -> None:
    text = f"# the cluster\n{A}, {B}\n\n  {C} {A}  # again\n#{D}\n"
    assert parse_peers_text(text) == [A, B, C]


def test_parse_rejects_a_bad_address() -> None:
    with pytest.raises(InvalidArgumentError, match="not of the form"):
        parse_peers_text(f"{A}\n127.0.0.2\n")


async def test_start_reads_the_file_and_adds_self(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    path.write_text(f"{A}\n{B}\n")
    d = FileDiscovery(path, self_address=C, poll_interval=POLL)
    assert d.self_address == C
    assert d.path == path
    assert await d.start() == members(A, B, C)
    assert d.peers == {A, B, C}


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot be read"), ("127.0.0.1:0\n", "invalid port")],
)
def test_bad_file_fails_at_construction(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "peers"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidArgumentError, match=message):
        FileDiscovery(path, self_address=A)


def test_bad_poll_interval(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    path.write_text(A)
    with pytest.raises(InvalidArgumentError, match="poll_interval"):
        FileDiscovery(path, self_address=A, poll_interval=0)


async def test_watch_reports_additions_and_removals(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    path.write_text(f"{A},{B},{C}")
    d = FileDiscovery(path, self_address=A, poll_interval=POLL)
    await d.start()
    it = d.watch()
    try:
        write_atomically(path, f"{A},{B},{C},{D}")
        assert await next_change(it) == members(A, B, C, D)
        write_atomically(path, f"{A}\n{D}\n")
        assert await next_change(it) == members(A, D)
        assert d.peers == {A, D}
    finally:
        await finish(d, it)


class Watching:
    """A watch consumed by a task from the start, polled when the test moves the clock."""

    def __init__(self, d: FileDiscovery, clock: FakeClock) -> None:
        self.d = d
        self.clock = clock
        self.seen: list[frozenset[Member]] = []
        self.task = asyncio.ensure_future(self._consume())

    async def _consume(self) -> None:
        async for snapshot in self.d.watch():
            self.seen.append(snapshot)

    async def poll(self) -> None:
        """Exactly one poll of the file (the watch sleeps on the fake clock)."""
        await self.clock.advance_async(POLL_FAKE)

    async def close(self) -> None:
        await self.d.stop()
        await asyncio.wait_for(self.task, 5.0)


POLL_FAKE = 1.0


async def watching(path: Path) -> Watching:
    clock = FakeClock()
    d = FileDiscovery(path, self_address=A, poll_interval=POLL_FAKE, clock=clock)
    await d.start()
    w = Watching(d, clock)
    await settle_loop()  # the watch is waiting for its first poll
    return w


async def test_watch_ignores_rewrites_with_the_same_members(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    path.write_text(f"{A},{B}")
    w = await watching(path)
    try:
        # Same set in another order and spelling, seen by a poll: no event...
        write_atomically(path, f"# reordered\n{B}\n{A}\n")
        await w.poll()
        assert w.seen == []
        # ...and the poll did read it: a real change is reported by the very next poll.
        write_atomically(path, f"{A},{B},{C}")
        await w.poll()
        assert w.seen == [members(A, B, C)]
        # Another rewrite with the same members, and an unchanged file: still one event.
        write_atomically(path, f"{C} {B} {A}")
        await w.poll()
        await w.poll()
        assert w.seen == [members(A, B, C)]
    finally:
        await w.close()


async def test_watch_polls_on_its_clock_only(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    path.write_text(f"{A},{B}")
    w = await watching(path)
    try:
        write_atomically(path, f"{A},{C}")
        await w.clock.advance_async(POLL_FAKE * 0.99)
        assert w.seen == []  # the interval has not passed on the discovery's clock
        await w.clock.advance_async(POLL_FAKE * 0.01)
        assert w.seen == [members(A, C)]
    finally:
        await w.close()


@pytest.mark.parametrize("bad", ["", "# nobody\n", f"{A}\n127.0.0.9\n", None])
async def test_watch_keeps_the_last_good_list(
    tmp_path: Path, bad: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "peers"
    path.write_text(f"{A},{B}")
    w = await watching(path)
    d = w.d
    try:
        if bad is None:
            path.unlink()
        else:
            write_atomically(path, bad)
        # The problem is logged (once, over several polls) and the members stay...
        for _ in range(3):
            await w.poll()
        assert caplog.text.count("keeping the previous 2 members") == 1
        assert w.seen == []
        assert d.peers == {A, B}
        # ...and a later good file applies.
        write_atomically(path, f"{A},{C}")
        await w.poll()
        assert w.seen == [members(A, C)]
    finally:
        await w.close()


async def test_watch_ends_on_stop(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    path.write_text(A)
    d = FileDiscovery(path, self_address=A, poll_interval=60.0)
    await d.start()
    seen: list[frozenset[Member]] = []

    async def consume() -> None:
        async for snapshot in d.watch():
            seen.append(snapshot)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    assert not task.done()
    await d.stop()
    await asyncio.wait_for(task, 1.0)
    assert seen == []
