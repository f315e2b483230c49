"""The e2e workload: writers and readers going through several nodes' HTTP APIs.

Checkable by construction:

* every key belongs to one writer (``{prefix}:w{writer}:k{index}``), and each writer writes
  one key at a time, so the writes of a key form one sequence;
* the value of write number ``seq`` of writer ``w`` is ``"w:seq:"`` padded to
  ``value_bytes`` — a value read back names the exact write it came from, and "the
  acknowledged value or a newer one" is ``seq >= the last acknowledged seq``;
* every attempt is recorded with its outcome (:mod:`e2e.api`): an *acknowledged* write is one
  that got HTTP 204.

Writers cycle over their keys, so each key is overwritten several times during a run (a
stale replica would then show an older value, not just a missing one). Readers pick keys
that already have an acknowledged write and check online that the read returns that write
or a newer one; stale reads are counted (a figure, not a failure: during membership changes
Dynamo-style stores may serve them, the final check is what must hold).

Load is bounded three ways: a rate per task (the machine has 2 shared cores, and an
overloaded machine turns every probe into a timeout), a count of operations per task, and a
duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from e2e.api import Outcome, kv_url, request
from e2e.drivers.base import Endpoint

OpKind = Literal["write", "read"]


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """Shape and bounds of the load.

    Attributes:
        writers: concurrent writer tasks (each owns its keys).
        readers: concurrent reader tasks.
        keys_per_writer: keys each writer cycles over.
        value_bytes: size of every value.
        replication: ``replication`` query parameter of every operation (N).
        quorum: ``quorum`` query parameter of every operation (W = R).
        rate_per_task: operations per second of one task at most.
        max_ops_per_task: operations of one task at most.
        request_timeout: client-side deadline of one HTTP request, seconds. Longer than
            the nodes' own request deadline (2 s), so that a node that is merely slow gets
            to answer: a write without an answer has an unknown outcome.
    """

    writers: int = 4
    readers: int = 2
    keys_per_writer: int = 250
    value_bytes: int = 100
    replication: int = 3
    quorum: int = 2
    rate_per_task: float = 40.0
    max_ops_per_task: int = 20_000
    request_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Op:
    """One operation as the client saw it (times are ``time.monotonic()``)."""

    kind: OpKind
    key: str
    node: str
    start: float
    end: float
    outcome: Outcome
    status: int
    error: str = ""
    seq: int = 0  # writes: the seq written; reads: the seq read (0: absent or unreadable)
    stale: bool = False  # reads only: older than the last write acknowledged before it


@dataclass(slots=True)
class KeyHistory:
    """The writes of one key, in the order the writer issued them."""

    writer: int
    attempts: dict[int, Outcome] = field(default_factory=dict)  # seq -> outcome
    acked: int = 0  # highest acknowledged seq (0: none)
    acked_count: int = 0


def make_value(writer: int, seq: int, size: int) -> bytes:
    """The value of write ``seq`` of ``writer``, padded to ``size`` bytes."""
    head = f"{writer}:{seq}:".encode()
    return head + b"x" * max(0, size - len(head))


def parse_value(value: bytes) -> tuple[int, int] | None:
    """``(writer, seq)`` of a value made by :func:`make_value`, or None."""
    parts = value.split(b":", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1])


class Workload:
    """Writers and readers against whatever nodes ``targets()`` returns at each operation.

    Args:
        session: the HTTP client session (its own timeout is overridden per request).
        targets: the endpoints to use now (typically ``driver.endpoints``: the nodes that
            serve); called before every operation, so faults change the routing at once.
        config: shape and bounds of the load.
        prefix: prefix of every key (unique per scenario run).
        seed: seed of the random choices (target nodes, keys read).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        targets: Callable[[], Sequence[Endpoint]],
        config: WorkloadConfig | None = None,
        *,
        prefix: str = "e2e",
        seed: int = 0,
    ) -> None:
        self.session = session
        self.targets = targets
        self.config = config or WorkloadConfig()
        self.prefix = prefix
        self.seed = seed
        self.keys: dict[str, KeyHistory] = {}
        self.ops: list[Op] = []
        self._acked_keys: list[str] = []
        self._next_seq: dict[int, int] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = 0.0
        self.stopped_at = 0.0

    # -- running ---------------------------------------------------------------------------

    def key(self, writer: int, index: int) -> str:
        """The key ``index`` of ``writer``."""
        return f"{self.prefix}:w{writer}:k{index}"

    def start(self, duration: float) -> None:
        """Start every task; they end after ``duration`` seconds, their op count, or
        :meth:`stop`, whichever comes first."""
        if self._tasks:
            raise RuntimeError("the workload is already running")
        self._stop.clear()
        self.started_at = time.monotonic()
        deadline = self.started_at + duration
        for w in range(self.config.writers):
            self._tasks.append(asyncio.create_task(self._writer(w, deadline), name=f"writer-{w}"))
        for r in range(self.config.readers):
            self._tasks.append(asyncio.create_task(self._reader(r, deadline), name=f"reader-{r}"))

    async def stop(self) -> None:
        """Stop the tasks (in-flight requests finish or time out) and wait for them."""
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks)
        self._tasks = []
        self.stopped_at = time.monotonic()

    async def run(self, duration: float) -> None:
        """:meth:`start`, then wait until the tasks end by themselves."""
        self.start(duration)
        await asyncio.gather(*self._tasks)
        self._tasks = []
        self.stopped_at = time.monotonic()

    async def wait_acknowledged(self, count: int, within: float) -> bool:
        """Wait until at least ``count`` writes were acknowledged; False after ``within`` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.acknowledged_writes >= count:
                return True
            await asyncio.sleep(0.05)
        return self.acknowledged_writes >= count

    async def wait_all_keys(self, within: float) -> bool:
        """Wait until every key has an acknowledged write (the data set has its full size:
        later writes only overwrite); False after ``within`` seconds."""
        total = self.config.writers * self.config.keys_per_writer
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if len(self._acked_keys) >= total:
                return True
            await asyncio.sleep(0.05)
        return len(self._acked_keys) >= total

    async def _pace(self, started: float, done: int, deadline: float) -> bool:
        """Sleep until operation ``done`` is due; False when the task must end."""
        if self._stop.is_set() or done >= self.config.max_ops_per_task:
            return False
        due = started + done / self.config.rate_per_task
        delay = min(due, deadline) - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
        return not self._stop.is_set() and time.monotonic() < deadline

    def _target(self, rng: random.Random) -> Endpoint | None:
        # Random, not round-robin: with a fixed stride a key could always be written
        # through the same node (keys_per_writer a multiple of the node count).
        targets = self.targets()
        if not targets:
            return None
        return rng.choice(targets)

    async def _writer(self, writer: int, deadline: float) -> None:
        cfg = self.config
        rng = random.Random(f"{self.seed}:writer:{writer}")
        started = time.monotonic()
        done = 0
        # Sequence numbers continue across start()/stop() cycles, so a key's writes stay
        # one increasing sequence however many load phases a scenario runs.
        while await self._pace(started, done, deadline):
            done += 1
            seq = self._next_seq.get(writer, 1)
            self._next_seq[writer] = seq + 1
            key = self.key(writer, (seq - 1) % cfg.keys_per_writer)
            history = self.keys.setdefault(key, KeyHistory(writer))
            target = self._target(rng)
            t0 = time.monotonic()
            if target is None:
                history.attempts[seq] = "answered"  # nothing sent: it cannot take effect
                self.ops.append(Op("write", key, "-", t0, t0, "answered", 0, "no target", seq))
                continue
            url = kv_url(target.url, key, replication=cfg.replication, quorum=cfg.quorum)
            answer = await request(
                self.session,
                "PUT",
                url,
                data=make_value(writer, seq, cfg.value_bytes),
                expect=(204,),
                timeout=cfg.request_timeout,
            )
            history.attempts[seq] = answer.outcome
            if answer.ok:
                if history.acked == 0:
                    self._acked_keys.append(key)
                history.acked = seq
                history.acked_count += 1
            self.ops.append(
                Op(
                    "write",
                    key,
                    target.name,
                    t0,
                    time.monotonic(),
                    answer.outcome,
                    answer.status,
                    answer.error,
                    seq,
                )
            )

    async def _reader(self, reader: int, deadline: float) -> None:
        cfg = self.config
        rng = random.Random(f"{self.seed}:reader:{reader}")
        started = time.monotonic()
        done = 0
        while await self._pace(started, done, deadline):
            done += 1
            if not self._acked_keys:
                continue
            key = rng.choice(self._acked_keys)
            expected = self.keys[key].acked
            target = self._target(rng)
            if target is None:
                continue
            t0 = time.monotonic()
            url = kv_url(target.url, key, replication=cfg.replication, quorum=cfg.quorum)
            answer = await request(
                self.session, "GET", url, expect=(200, 404), timeout=cfg.request_timeout
            )
            seq, stale = 0, False
            if answer.ok:
                parsed = parse_value(answer.body) if answer.status == 200 else None
                seq = parsed[1] if parsed is not None else 0
                stale = seq < expected
            self.ops.append(
                Op(
                    "read",
                    key,
                    target.name,
                    t0,
                    time.monotonic(),
                    answer.outcome,
                    answer.status,
                    answer.error,
                    seq,
                    stale,
                )
            )

    # -- figures ---------------------------------------------------------------------------

    @property
    def acknowledged_writes(self) -> int:
        """Writes answered with 204."""
        return sum(h.acked_count for h in self.keys.values())

    def acknowledged_keys(self) -> dict[str, KeyHistory]:
        """A snapshot of the keys with at least one acknowledged write (copies: checks may
        run while the load goes on)."""
        return {
            k: KeyHistory(h.writer, dict(h.attempts), h.acked, h.acked_count)
            for k, h in self.keys.items()
            if h.acked
        }

    def summary(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """Counts of operations (optionally only those started in ``[since, until)``)."""
        ops = [
            op
            for op in self.ops
            if (since is None or op.start >= since) and (until is None or op.start < until)
        ]
        writes = [op for op in ops if op.kind == "write"]
        reads = [op for op in ops if op.kind == "read"]
        failed = [op for op in ops if op.outcome != "ok"]
        reasons = Counter(_reason(op) for op in failed)
        examples: dict[str, str] = {}
        for op in failed:
            examples.setdefault(_reason(op), f"{op.node}: {op.error}"[:240])
        return {
            "writes": len(writes),
            "acknowledged_writes": sum(1 for op in writes if op.outcome == "ok"),
            "failed_writes": sum(1 for op in writes if op.outcome != "ok"),
            "unanswered_writes": sum(1 for op in writes if op.outcome == "no_answer"),
            "reads": len(reads),
            "ok_reads": sum(1 for op in reads if op.outcome == "ok"),
            "failed_reads": sum(1 for op in reads if op.outcome != "ok"),
            "stale_reads": sum(1 for op in reads if op.stale),
            "failed_ops": len(failed),
            "failure_reasons": dict(reasons.most_common(8)),
            "failure_examples": [examples[r] for r, _n in reasons.most_common(4)],
            "keys": len(self.keys),
        }

    def ops_through(self, nodes: Sequence[str], since: float, until: float) -> tuple[int, int]:
        """``(ok, failed)`` operations sent to ``nodes`` and started in ``[since, until)``."""
        chosen = [op for op in self.ops if op.node in nodes and since <= op.start < until]
        ok = sum(1 for op in chosen if op.outcome == "ok")
        return ok, len(chosen) - ok


def _reason(op: Op) -> str:
    if op.outcome == "no_answer":
        return f"{op.kind}: no answer ({op.error.split(':', 1)[0]})"
    return f"{op.kind}: HTTP {op.status}"
