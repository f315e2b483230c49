"""``peer_ring.core.run``: the event loop it picks, and what it does without uvloop."""

from __future__ import annotations

import asyncio
import sys

import pytest

from peer_ring.core import run, uvloop_available


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_use_uvloop_forces_or_forbids_it() -> None:
    pytest.importorskip("uvloop")
    assert run(loop_module(), use_uvloop=True) == "uvloop"
    assert run(loop_module(), use_uvloop=False) == "asyncio"


def test_by_default_uvloop_is_used_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = "uvloop" if uvloop_available() else "asyncio"
    assert run(loop_module()) == expected
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert not uvloop_available()
    assert run(loop_module()) == "asyncio"


def test_the_coroutine_result_and_errors_come_back() -> None:
    async def fails() -> None:
        raise LookupError("from inside")

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert run(answer()) == 42
    with pytest.raises(LookupError, match="from inside"):
        run(fails())
