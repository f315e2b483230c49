"""The checker: after the faults, is every acknowledged write still there, on N replicas?

Three checks, each against the nodes' HTTP API only (they run unchanged on any driver):

1. :func:`wait_converged` — every serving node answers ``/readyz``, lists the same ring
   members in ``GET /cluster`` (optionally an expected set), and reports no pending
   partition transfer (when ``/cluster``'s ``handoff`` document tells).
2. :func:`verify_acknowledged` — every key with an acknowledged write is read with quorum R
   through the nodes in turn; the value must be the acknowledged write or a newer one.
   Verdicts per key:

   * ``ok`` — ``seq >= acked``;
   * ``late_unanswered`` — an *older* write whose request got no answer (timeout,
     connection reset): its outcome was unknown, so it may legitimately take effect after
     the acknowledged one (a paused coordinator that wakes up). Allowed, and counted;
   * ``lost`` — absent, older than the acknowledged write (and not the case above), or a
     value that no write of this key produced;
   * ``unreadable`` — no node could serve the read (the check cannot conclude: the
     scenario fails too).

3. :func:`replica_report` / :func:`wait_replicas` — the checker computes each key's
   preference list with :class:`peer_ring.core.Ring` from the members and partition count
   in ``GET /cluster`` (the ring is a public, specified function: docs/hash-spec.md),
   then reads the key on each of its N replicas with ``quorum=1``. On a replica, a
   ``quorum=1`` read is served from the local copy with no network hop (``KVStore.get``'s
   local fast path) — so it shows what *that* node holds. Caveat: a replica whose
   partition is still being pulled forwards the read instead; the check therefore runs
   after :func:`wait_converged` saw no pending transfer (when the node reports them).
   A debug endpoint that returns the local record unconditionally would remove the caveat
   (see e2e/README.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from e2e.api import get_json, kv_url, request
from e2e.drivers.base import Endpoint
from e2e.workload import KeyHistory, parse_value
from peer_ring.core import Ring

Verdict = Literal["ok", "late_unanswered", "lost", "unreadable"]

_POLL = 0.25


def judge(history: KeyHistory, status: int, body: bytes) -> tuple[Verdict, str]:
    """The verdict on one read of a key (see the module docs) and a short explanation."""
    if status == 404:
        return "lost", f"absent (acknowledged seq {history.acked})"
    parsed = parse_value(body)
    if parsed is None or parsed[0] != history.writer:
        return "lost", f"unknown value {body[:40]!r}"
    seq = parsed[1]
    if seq >= history.acked:
        # A seq beyond the history's attempts is a write issued after a snapshot: newer.
        return "ok", ""
    if seq not in history.attempts:
        return "lost", f"seq {seq} was never written"
    if history.attempts[seq] == "no_answer":
        return "late_unanswered", f"seq {seq} (unanswered) after acknowledged {history.acked}"
    return "lost", f"stale seq {seq} < acknowledged {history.acked}"


# -- 1. convergence ------------------------------------------------------------------------


@dataclass(slots=True)
class ClusterView:
    """What the serving nodes said in their last ``GET /cluster``."""

    documents: dict[str, dict[str, Any]] = field(default_factory=dict)  # endpoint name -> doc
    unreachable: list[str] = field(default_factory=list)

    def member_sets(self) -> dict[str, frozenset[str]]:
        """Ring members per endpoint name."""
        return {n: frozenset(d.get("members", ())) for n, d in self.documents.items()}

    def agreed_members(self) -> frozenset[str] | None:
        """The member set every node reports, or None when they differ (or none answered)."""
        sets = set(self.member_sets().values())
        if len(sets) != 1 or self.unreachable:
            return None
        return next(iter(sets))

    def pending_transfers(self) -> int | None:
        """Partitions still to pull or hand off, summed; None when no node reports it."""
        total, known = 0, False
        for doc in self.documents.values():
            count = _pending(doc.get("handoff"))
            if count is not None:
                known = True
                total += count
        return total if known else None

    def not_ready(self) -> list[str]:
        """Endpoint names whose ``/cluster`` says ``ready: false``."""
        return [n for n, d in self.documents.items() if d.get("ready") is False]

    def sync_counter(self, name: str) -> float | None:
        """Sum over nodes of ``handoff.partitions.<name>`` (e.g. ``bytes_received``)."""
        total, known = 0.0, False
        for doc in self.documents.values():
            handoff = doc.get("handoff")
            parts = handoff.get("partitions") if isinstance(handoff, Mapping) else None
            value = parts.get(name) if isinstance(parts, Mapping) else None
            if isinstance(value, int | float):
                known = True
                total += float(value)
        return total if known else None


def _pending(handoff: object) -> int | None:
    # Two shapes: the placeholder {"pending": 0} of the HTTP API, and the core's
    # sync_status() ({"partitions": {"pending": P, "held_for_handoff": H, ...}, ...}).
    if not isinstance(handoff, Mapping):
        return None
    parts = handoff.get("partitions")
    if isinstance(parts, Mapping):
        pending = parts.get("pending", 0)
        held = parts.get("held_for_handoff", 0)
        if isinstance(pending, int) and isinstance(held, int):
            return pending + held
    pending = handoff.get("pending")
    return pending if isinstance(pending, int) else None


async def cluster_view(
    session: aiohttp.ClientSession, endpoints: Sequence[Endpoint]
) -> ClusterView:
    """``GET /cluster`` of every endpoint, concurrently."""
    docs = await asyncio.gather(*(get_json(session, f"{e.url}/cluster") for e in endpoints))
    view = ClusterView()
    for endpoint, doc in zip(endpoints, docs, strict=True):
        if doc is None:
            view.unreachable.append(endpoint.name)
        else:
            view.documents[endpoint.name] = doc
    return view


@dataclass(frozen=True, slots=True)
class Convergence:
    """Result of :func:`wait_converged`."""

    converged: bool
    seconds: float
    members: frozenset[str] | None
    detail: str


async def wait_converged(
    session: aiohttp.ClientSession,
    endpoints: Callable[[], Sequence[Endpoint]],
    *,
    expected: Iterable[str] | None = None,
    within: float = 120.0,
    require_no_pending: bool = True,
) -> Convergence:
    """Poll until the serving nodes agree on the ring (see the module docs).

    Args:
        session: HTTP session.
        endpoints: the nodes to ask (called at each poll).
        expected: the peer addresses the ring must have; ``None``: any agreed set.
        within: deadline, seconds.
        require_no_pending: also wait until no node reports a pending transfer.
    """
    started = time.monotonic()
    want = frozenset(expected) if expected is not None else None
    detail = "no poll yet"
    while True:
        view = await cluster_view(session, endpoints())
        agreed = view.agreed_members()
        pending = view.pending_transfers()
        if view.unreachable:
            detail = f"unreachable: {view.unreachable}"
        elif agreed is None:
            detail = f"members differ: { {n: sorted(s) for n, s in view.member_sets().items()} }"
        elif want is not None and agreed != want:
            detail = f"members {sorted(agreed)} != expected {sorted(want)}"
        elif view.not_ready():
            detail = f"not ready: {view.not_ready()}"
        elif require_no_pending and pending:
            detail = f"{pending} partition transfers pending"
        else:
            return Convergence(True, time.monotonic() - started, agreed, "")
        if time.monotonic() - started >= within:
            return Convergence(False, time.monotonic() - started, agreed, detail)
        await asyncio.sleep(_POLL)


# -- 2. acknowledged writes ----------------------------------------------------------------


@dataclass(slots=True)
class AckCheck:
    """Result of :func:`verify_acknowledged`."""

    keys: int = 0
    acknowledged_writes: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        """Keys whose acknowledged write is gone."""
        return self.verdicts["lost"]

    @property
    def unreadable(self) -> int:
        """Keys no node could read."""
        return self.verdicts["unreadable"]

    def figures(self) -> dict[str, Any]:
        """JSON-friendly figures."""
        return {
            "keys_checked": self.keys,
            "acknowledged_writes": self.acknowledged_writes,
            "lost": self.lost,
            "unreadable": self.unreadable,
            "late_unanswered": self.verdicts["late_unanswered"],
            "check_seconds": round(self.seconds, 2),
            "lost_examples": self.examples[:10],
        }


async def _bounded(
    items: Sequence[Any], work: Callable[[int, Any], Any], concurrency: int
) -> list[Any]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int, item: Any) -> Any:
        async with semaphore:
            return await work(i, item)

    return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))


async def verify_acknowledged(
    session: aiohttp.ClientSession,
    endpoints: Sequence[Endpoint],
    keys: Mapping[str, KeyHistory],
    *,
    replication: int = 3,
    quorum: int = 2,
    tries: int = 3,
    concurrency: int = 16,
    timeout: float = 10.0,
) -> AckCheck:
    """Read every key of ``keys`` with quorum ``quorum``, through the endpoints in turn.

    A read that fails (no answer, 5xx) is retried on the next endpoints, up to ``tries``
    times in all, before the key counts as unreadable.
    """
    if not endpoints:
        raise ValueError("no endpoint to read through")
    started = time.monotonic()
    result = AckCheck(keys=len(keys), acknowledged_writes=sum(h.acked_count for h in keys.values()))
    items = sorted(keys.items())

    async def check(i: int, item: tuple[str, KeyHistory]) -> tuple[str, Verdict, str]:
        key, history = item
        last = ""
        for attempt in range(tries):
            endpoint = endpoints[(i + attempt) % len(endpoints)]
            url = kv_url(endpoint.url, key, replication=replication, quorum=quorum)
            answer = await request(session, "GET", url, expect=(200, 404), timeout=timeout)
            if answer.ok:
                verdict, why = judge(history, answer.status, answer.body)
                return key, verdict, f"via {endpoint.name}: {why}"
            last = f"via {endpoint.name}: {answer.error}"
        return key, "unreadable", last

    for key, verdict, why in await _bounded(items, check, concurrency):
        result.verdicts[verdict] += 1
        if verdict in ("lost", "unreadable") and len(result.examples) < 20:
            result.examples.append(f"{key}: {verdict} {why}")
    result.seconds = time.monotonic() - started
    return result


# -- 3. replicas ---------------------------------------------------------------------------


@dataclass(slots=True)
class ReplicaCheck:
    """Result of :func:`replica_report`."""

    members: list[str] = field(default_factory=list)
    keys: int = 0
    complete_keys: int = 0  # keys with N good replicas
    replicas_expected: int = 0
    replicas_ok: int = 0
    replicas_missing: int = 0  # absent on a replica
    replicas_stale: int = 0  # older than the acknowledged write
    replicas_unreadable: int = 0  # the replica did not answer
    incomplete: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def complete(self) -> bool:
        """True when every key has N good replicas."""
        return not self.error and self.complete_keys == self.keys

    def figures(self) -> dict[str, Any]:
        """JSON-friendly figures."""
        return {
            "replica_keys": self.keys,
            "replica_keys_complete": self.complete_keys,
            "replicas_expected": self.replicas_expected,
            "replicas_ok": self.replicas_ok,
            "replicas_missing": self.replicas_missing,
            "replicas_stale": self.replicas_stale,
            "replicas_unreadable": self.replicas_unreadable,
            "replica_examples": self.examples[:10],
            "replica_error": self.error,
        }


async def replica_report(
    session: aiohttp.ClientSession,
    endpoints: Sequence[Endpoint],
    keys: Mapping[str, KeyHistory],
    *,
    replication: int = 3,
    concurrency: int = 24,
    timeout: float = 5.0,
) -> ReplicaCheck:
    """Count the good copies of every key on its N replicas (see the module docs)."""
    report = ReplicaCheck(keys=len(keys))
    view = await cluster_view(session, endpoints)
    members = view.agreed_members()
    if members is None:
        report.error = f"no agreed ring: {view.unreachable or view.member_sets()}"
        return report
    partitions = {d.get("partitions") for d in view.documents.values()}
    count = next(iter(partitions)) if len(partitions) == 1 else None
    if not isinstance(count, int):
        report.error = f"nodes disagree on the partition count: {partitions}"
        return report
    by_peer = {e.peer: e for e in endpoints}
    missing_endpoints = sorted(set(members) - set(by_peer))
    if missing_endpoints:
        report.error = f"ring members without a serving endpoint: {missing_endpoints}"
        return report
    report.members = sorted(members)
    # Zone-aware clusters publish each member's zone; the ring depends on them.
    zones: dict[str, str] = {}
    for document in view.documents.values():
        zones.update(document.get("zones") or {})
    ring = Ring.build(members, count, zones or None)
    n = min(replication, len(members))
    items = sorted(keys.items())

    async def check(i: int, item: tuple[str, KeyHistory]) -> tuple[str, list[tuple[str, str]]]:
        key, history = item
        prefs = ring.preference_list(ring.partition_for_key(key.encode()), n)
        out: list[tuple[str, str]] = []
        for peer in prefs:
            endpoint = by_peer[peer]
            url = kv_url(endpoint.url, key, replication=replication, quorum=1)
            answer = await request(session, "GET", url, expect=(200, 404), timeout=timeout)
            if not answer.ok:
                out.append((endpoint.name, "unreadable"))
                continue
            verdict, _why = judge(history, answer.status, answer.body)
            if verdict in ("ok", "late_unanswered"):
                out.append((endpoint.name, "ok"))
            elif answer.status == 404:
                out.append((endpoint.name, "missing"))
            else:
                out.append((endpoint.name, "stale"))
        return key, out

    for key, replicas in await _bounded(items, check, concurrency):
        report.replicas_expected += len(replicas)
        states = Counter(state for _name, state in replicas)
        report.replicas_ok += states["ok"]
        report.replicas_missing += states["missing"]
        report.replicas_stale += states["stale"]
        report.replicas_unreadable += states["unreadable"]
        if states["ok"] == n:
            report.complete_keys += 1
        else:
            report.incomplete.append(key)
            if len(report.examples) < 20:
                bad = ", ".join(f"{name}={state}" for name, state in replicas if state != "ok")
                report.examples.append(f"{key}: {bad}")
    return report


@dataclass(frozen=True, slots=True)
class ReplicaConvergence:
    """Result of :func:`wait_replicas`."""

    report: ReplicaCheck
    seconds: float
    rounds: int


async def wait_replicas(
    session: aiohttp.ClientSession,
    endpoints: Callable[[], Sequence[Endpoint]],
    keys: Mapping[str, KeyHistory],
    *,
    replication: int = 3,
    within: float = 120.0,
    interval: float = 2.0,
) -> ReplicaConvergence:
    """Repeat :func:`replica_report` until every key has N good replicas or ``within``
    seconds passed. Later rounds re-check only the keys still incomplete (cheap), and a
    last full round confirms the result."""
    started = time.monotonic()
    todo: Mapping[str, KeyHistory] = keys
    rounds = 0
    while True:
        rounds += 1
        report = await replica_report(session, endpoints(), todo, replication=replication)
        if report.complete:
            if todo is keys:
                return ReplicaConvergence(report, time.monotonic() - started, rounds)
            todo = keys  # confirm with every key (the ring may have moved meanwhile)
            continue
        if time.monotonic() - started >= within:
            if todo is not keys:
                report = await replica_report(session, endpoints(), keys, replication=replication)
            return ReplicaConvergence(report, time.monotonic() - started, rounds)
        if not report.error:
            todo = {k: keys[k] for k in report.incomplete}
        await asyncio.sleep(interval)
