"""Letting a frame fill up before the single writer cuts it.

Each grpc.aio message costs far more CPU than the operations inside it (on 2 cores,
~190 µs per message against ~20 µs per operation, see docs/benchmarks.md). When a writer
wakes up for the first queued item and sends at once, a closed-loop workload settles into
one or two operations per frame: the tasks woken by the previous response frame have not
yet queued their next request. Two measures, both in the writer loops:

- :func:`linger` (both transports): yielding to the event loop a few times lets those
  tasks queue their requests. The loop stops as soon as one turn queues nothing new, so a
  lone request pays one loop turn of latency, not ``MAX_YIELDS``.
- :func:`hold` (the gRPC transport's outbound writer only, like Nagle's algorithm): while
  the previous frame to a peer is unanswered and at least ``HOLD_MIN_IN_FLIGHT`` requests
  are in flight to it, new requests wait for that frame's answers, at most
  ``HOLD_SECONDS``. Under load the answers of one frame wake the tasks that fill the next
  one, so each frame carries what queued during a round trip (at 64 operations in flight
  per node: 15-32 messages per frame instead of 8-13; before, half of all frames carried a
  single message). A request to a peer with nothing or a single request in flight is never
  held; one queued behind a frame waits at most until that frame's answers arrive (a round
  trip, often less than the CPU a message of its own would have cost on busy cores); the
  cap bounds the wait behind a frame with a slow request. TCP writes cost little, so the
  TCP transport does not hold.
- The cap follows the peer (:func:`hold_cap`): ``HOLD_RTT_FACTOR`` times the connection's
  measured round trip when that is longer than ``HOLD_SECONDS``, at most
  ``HOLD_MAX_SECONDS``. A fixed cap shorter than the round trip (busy cores: 5-30 ms at 64
  in flight) ends about half the holds before the answers; the next frame then goes out
  while the previous one is still unanswered, and from then on two or more frames per
  peer are in flight, each carrying half of what one would. With the cap stretched, 68-92%
  of the holds end on the answers instead of 37-57% (docs/benchmarks.md, "gRPC transport,
  round 6"). The round trip is the moving average the connection already keeps (one
  request sampled at a time), so a peer that answers in 1 ms keeps the 5 ms cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: Upper bound of event-loop turns a writer waits for more items (3-10 measured best).
MAX_YIELDS = 8

#: Default cap (seconds) of the wait of requests held behind an unanswered frame (gRPC),
#: the shortest: :func:`hold_cap` stretches it to the peer's round trip. 5 ms measured best
#: as a fixed cap at 64 in flight per node; 2 ms often expired before the answers.
HOLD_SECONDS = 0.005

#: Fewest requests in flight to a peer for the hold to apply: a request queued behind a
#: single one goes out at once. At low and moderate rates (0 or 1 in flight per peer) the
#: hold would add up to a round trip to save little; under load there are always more.
HOLD_MIN_IN_FLIGHT = 2

#: The hold's cap is at least this many times the peer's measured round trip: a frame's
#: answers arrive after about one round trip, and the cap must not end the hold before them.
HOLD_RTT_FACTOR = 1.5

#: ... but never longer than this (seconds): the longest a request waits behind a frame with
#: a slow request, whatever the round trip (unless ``hold`` itself is longer). 20 ms kept
#: the frames as full as 50 ms did at c64 on busy cores, and a sampled slow request (the
#: round trip is a moving average of single requests) stretches the cap less.
HOLD_MAX_SECONDS = 0.02


async def linger(size: Callable[[], int], max_yields: int = MAX_YIELDS) -> None:
    """Yield to the loop while the queue measured by ``size`` keeps growing."""
    before = size()
    for _ in range(max_yields):
        await asyncio.sleep(0)
        now = size()
        if now == before:
            return
        before = now


def hold_cap(seconds: float, rtt: float | None) -> float:
    """The longest a hold waits: ``seconds``, or ``HOLD_RTT_FACTOR`` times the round trip
    ``rtt`` (seconds, None before the first sample) when that is longer, at most
    ``HOLD_MAX_SECONDS`` (or ``seconds`` when that is longer still)."""
    if rtt is None:
        return seconds
    stretched = rtt * HOLD_RTT_FACTOR
    if stretched <= seconds:
        return seconds
    if stretched > HOLD_MAX_SECONDS:
        return max(seconds, HOLD_MAX_SECONDS)
    return stretched


async def hold(wakeup: asyncio.Event, seconds: float, rtt: float | None = None) -> None:
    """Wait until ``wakeup`` is set (the previous frame is answered, or a cancel is queued)
    or the cap has passed, whichever comes first. Clears ``wakeup`` first.

    Args:
        wakeup: the connection's writer event.
        seconds: the connection's ``hold`` (0 is never passed: the writer does not hold).
        rtt: the connection's measured round trip (see :func:`hold_cap`), or None.
    """
    wakeup.clear()
    timer = asyncio.get_running_loop().call_later(hold_cap(seconds, rtt), wakeup.set)
    try:
        await wakeup.wait()
    finally:
        timer.cancel()
