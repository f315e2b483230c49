"""A thin client of the node HTTP API (``peer-ring-kv serve``), shared by the workload and
the checker.

Every call is bounded by the session's timeout and classifies its outcome instead of
raising, because the suite counts failures rather than stopping at the first one:

* ``ok`` — the node answered with the success status;
* ``answered`` — the node answered with an error status (it took a decision, e.g. 503
  "quorum not reached": for a write, its version was fixed before the answer);
* ``no_answer`` — timeout, connection refused or reset: the outcome is unknown, and a write
  may still take effect later (a paused coordinator wakes up and applies it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

Outcome = Literal["ok", "answered", "no_answer"]

_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


@dataclass(frozen=True, slots=True)
class Answer:
    """The result of one HTTP call.

    Attributes:
        outcome: see the module docs.
        status: HTTP status, or 0 without an answer.
        body: response body (empty without an answer).
        error: short description of the failure ("" on success).
    """

    outcome: Outcome
    status: int
    body: bytes
    error: str = ""

    @property
    def ok(self) -> bool:
        """True on the expected success status."""
        return self.outcome == "ok"


def new_session(timeout: float = 10.0, connections: int = 64) -> aiohttp.ClientSession:
    """A client session with a total per-request timeout and a bounded connection pool."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(limit=connections, force_close=False),
    )


def kv_url(base: str, key: str, **query: int | float | None) -> str:
    """``{base}/kv/{key}?...`` with the key percent-encoded as one path segment."""
    url = f"{base}/kv/{quote(key, safe='')}"
    params = [f"{k}={v}" for k, v in query.items() if v is not None]
    return f"{url}?{'&'.join(params)}" if params else url


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    expect: tuple[int, ...] = (200,),
    timeout: float | None = None,
) -> Answer:
    """One HTTP request, classified (see the module docs); never raises for I/O errors."""
    kwargs: dict[str, Any] = {}
    if data is not None:
        kwargs["data"] = data
    if timeout is not None:
        kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
    try:
        async with session.request(method, url, **kwargs) as response:
            body = await response.read()
            if response.status in expect:
                return Answer("ok", response.status, body)
            return Answer("answered", response.status, body, _error_text(response.status, body))
    except TimeoutError:
        return Answer("no_answer", 0, b"", "timeout")
    except aiohttp.ClientError as exc:
        return Answer("no_answer", 0, b"", f"{type(exc).__name__}: {exc}"[:200])


def _error_text(status: int, body: bytes) -> str:
    text = body[:300].decode(errors="replace").replace("\n", " ")
    return f"HTTP {status}: {text}"


async def get_json(
    session: aiohttp.ClientSession, url: str, *, timeout: float = 5.0
) -> dict[str, Any] | None:
    """GET a JSON document; ``None`` on any failure."""
    answer = await request(session, "GET", url, timeout=timeout)
    if not answer.ok:
        return None
    try:
        document = json.loads(answer.body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


async def get_metrics(
    session: aiohttp.ClientSession, base: str, *, timeout: float = 5.0
) -> dict[str, float] | None:
    """``GET /metrics`` as ``{name or name{labels}: value}``; ``None`` on failure."""
    answer = await request(session, "GET", f"{base}/metrics", timeout=timeout)
    if not answer.ok:
        return None
    return parse_metrics(answer.body.decode(errors="replace"))


def parse_metrics(text: str) -> dict[str, float]:
    """Parse the Prometheus text format (enough of it for our gauges and counters)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _METRIC_LINE.match(line.strip())
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            values[name + (labels or "")] = float(value)
        except ValueError:
            continue
    return values
