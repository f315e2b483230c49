"""The active expiry loop survives a failing step and says so (tools/mutation)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from peer_ring.core.testing import FakeClock, settle_loop
from peer_ring.kv._expiry import run_active_expiry


class FailingEngine:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def expire_step(self, sample: int) -> None:
        self.steps.append(sample)
        raise RuntimeError("broken step")


async def test_a_failing_step_is_logged_with_the_retry_interval_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, engine = FakeClock(), FailingEngine()
    with caplog.at_level(logging.ERROR, logger="peer_ring.kv._expiry"):
        task = asyncio.create_task(run_active_expiry(engine, clock, 0.25, sample=7))  # type: ignore[arg-type]
        await settle_loop()
        await clock.advance_async(0.25)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert engine.steps == [7, 7]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["active expiry step failed; retrying in 0.250 s"] * 2
    assert all(r.exc_info is not None for r in caplog.records)
