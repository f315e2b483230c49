"""``peer-ring-kv admin``: inspect and operate a cluster through any node's HTTP API.

::

    peer-ring-kv admin [--url URL] [--json] members      members, zones, state and load
    peer-ring-kv admin partitions [-n N] [-p P ...]      owners and preference lists
    peer-ring-kv admin handoffs                          data movement in progress
    peer-ring-kv admin key KEY [-n N]                    a key's replicas and their versions
    peer-ring-kv admin drain --yes                       graceful leave of the node at --url

``--url`` (or ``$PEER_RING_ADMIN_URL``) is one node's HTTP API, ``http://127.0.0.1:8101`` by
default; the bearer token comes from ``--token-file`` or ``$PEER_RING_HTTP_TOKEN``. Tables by
default, the raw documents with ``--json``. Exit status: 0, 1 when the node cannot be
reached or refuses, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:8101"
URL_ENV = "PEER_RING_ADMIN_URL"
TOKEN_ENV = "PEER_RING_HTTP_TOKEN"


class AdminError(Exception):
    """The node could not be reached, or answered with an error."""


class AdminClient:
    """A tiny synchronous client of the admin routes (standard library only).

    Args:
        url: base URL of one node's HTTP API.
        token: bearer token, when the API requires one.
        timeout: seconds per request.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout

    def request(self, method: str, path: str, query: Mapping[str, object] | None = None) -> Any:
        """``method path`` → the decoded JSON answer.

        Raises:
            AdminError: connection failure, or an HTTP error status (with its message).
        """
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: str(v) for k, v in query.items()})
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = b"" if method == "POST" else None
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            try:
                message = json.loads(body).get("error", body)
            except (ValueError, AttributeError):
                message = body
            raise AdminError(f"{method} {path}: HTTP {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach {self.url}: {reason}") from None

    def cluster(self) -> Any:
        """``GET /cluster``."""
        return self.request("GET", "/cluster")

    def nodes(self) -> Any:
        """``GET /admin/nodes``: every member's load and handoff state."""
        return self.request("GET", "/admin/nodes")

    def ring(self, replication: int | None = None) -> Any:
        """``GET /admin/ring`` with preference lists."""
        query: dict[str, object] = {"lists": 1}
        if replication is not None:
            query["replication"] = replication
        return self.request("GET", "/admin/ring", query)

    def key(self, key: str, replication: int | None = None) -> Any:
        """``GET /admin/key/{key}``: the key's replicas and their versions."""
        query = {"replication": replication} if replication is not None else None
        return self.request("GET", "/admin/key/" + urllib.parse.quote(key, safe=""), query)

    def drain(self) -> Any:
        """``POST /admin/drain``: the node leaves the ring gracefully, then exits."""
        return self.request("POST", "/admin/drain")


# -- tables ------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, columns padded, numbers right-aligned."""
    cells = [[_text(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _when(seconds: float | None) -> str:
    if not seconds:
        return "-"
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- commands ----------------------------------------------------------------------------------


def cmd_members(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    cluster = client.cluster()
    nodes = client.nodes()["nodes"]
    if args.json:
        _dump({"cluster": cluster, "nodes": nodes}, out)
        return
    suspected = set(cluster.get("suspected", ()))
    zones = cluster.get("zones") or {}
    rows = []
    for member in cluster["members"]:
        info = nodes.get(member, {})
        stats, handoff = info.get("stats", {}), info.get("handoff", {})
        if not info.get("ok", False):
            state = "unreachable"
        elif member in suspected:
            state = "suspected"
        else:
            state = "ready" if info.get("ready") else "syncing"
        rows.append(
            [
                member + (" *" if member == cluster["self"] else ""),
                zones.get(member, ""),
                state,
                cluster["owned_partitions"].get(member),
                cluster["replica_partitions"].get(member),
                stats.get("keys"),
                stats.get("size_bytes"),
                handoff.get("pending_partitions"),
                handoff.get("hints_pending"),
            ]
        )
    print(
        f"{len(cluster['members'])} members, {cluster['partitions']} partitions, "
        f"N={cluster['replication']} W/R={cluster['quorum']} (asked {cluster['self']} *)",
        file=out,
    )
    headers = ["member", "zone", "state", "owned", "replicas", "keys", "bytes", "pulls", "hints"]
    print(table(headers, rows), file=out)


def cmd_partitions(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    ring = client.ring(args.replication)
    members = ring["members"]
    wanted = args.partition or range(ring["partitions"])
    for p in wanted:
        if not 0 <= p < ring["partitions"]:
            raise AdminError(f"partition {p} is out of range (0..{ring['partitions'] - 1})")
    rows = [
        [p, members[ring["owners"][p]], ", ".join(members[i] for i in ring["preference_lists"][p])]
        for p in wanted
    ]
    if args.json:
        _dump(
            [{"partition": r[0], "owner": r[1], "preference_list": r[2].split(", ")} for r in rows],
            out,
        )
        return
    print(
        f"{ring['partitions']} partitions, preference lists of {ring['replication']} "
        f"(view of {ring['self']})",
        file=out,
    )
    print(table(["partition", "owner", "preference list"], rows), file=out)


def cmd_handoffs(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    nodes = client.nodes()["nodes"]
    if args.json:
        _dump({m: info.get("handoff") for m, info in nodes.items()}, out)
        return
    rows = []
    busy = False
    for member, info in sorted(nodes.items()):
        if not info.get("ok", False):
            rows.append([member, "unreachable", None, None, None, None, None])
            continue
        h = info["handoff"]
        busy |= bool(h["pending_partitions"] or h["held_for_handoff"] or h["hints_pending"])
        busy |= h["leave_state"] not in ("none", "done")
        rows.append(
            [
                member,
                "ready" if info.get("ready") else "syncing",
                h["pending_partitions"],
                h["held_for_handoff"],
                h["hints_pending"],
                h["records_received"],
                h["leave_state"],
            ]
        )
    headers = ["member", "state", "pulls", "held", "hints", "records in", "leave"]
    print(table(headers, rows), file=out)
    print("handoffs in progress" if busy else "no handoff in progress", file=out)


def cmd_key(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    doc = client.key(args.key, args.replication)
    if args.json:
        _dump(doc, out)
        return
    zones = doc.get("zones") or {}
    rows = []
    for replica in doc["replicas"]:
        version = replica.get("version") or {}
        if not replica.get("ok"):
            status = "error: " + replica.get("error", "?")
        elif not replica.get("found"):
            status = "absent"
        else:
            status = "deleted" if replica.get("tombstone") else "value"
        rows.append(
            [
                replica["node"],
                zones.get(replica["node"], ""),
                status,
                f"{version['physical']}.{version['logical']}@{version['node_id']}"
                if version
                else None,
                _when(version.get("wall_time")),
                replica.get("value_bytes"),
                _when(replica.get("expires")),
            ]
        )
    print(
        f"key {doc['key']!r}: partition {doc['partition']}, N={doc['replication']}, "
        + ("replicas agree" if doc["consistent"] else "replicas DIFFER (or some did not answer)"),
        file=out,
    )
    headers = ["replica", "zone", "status", "version", "written", "bytes", "expires"]
    print(table(headers, rows), file=out)


def cmd_drain(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    if not args.yes:
        raise AdminUsageError(
            f"drain makes {client.url} leave the ring and exit: add --yes to confirm"
        )
    doc = client.drain()
    if args.json:
        _dump(doc, out)
        return
    print(
        f"{doc['self']} is draining: it hands its partitions over, then exits "
        "(watch with `admin handoffs` on another node)",
        file=out,
    )


class AdminUsageError(Exception):
    """Bad usage found after parsing (exit status 2)."""


def _dump(value: object, out: TextIO) -> None:
    json.dump(value, out, indent=2, sort_keys=True)
    out.write("\n")


Command = Callable[[AdminClient, argparse.Namespace, TextIO], None]
_COMMANDS: dict[str, Command] = {
    "members": cmd_members,
    "partitions": cmd_partitions,
    "handoffs": cmd_handoffs,
    "key": cmd_key,
    "drain": cmd_drain,
}


def add_admin_parser(commands: Any) -> None:
    """Add the ``admin`` sub-command to the ``peer-ring-kv`` parser's sub-parsers."""
    admin = commands.add_parser(
        "admin",
        help="inspect or operate a cluster through a node's HTTP API",
        description=(
            "Inspect a running cluster through any node's HTTP API: members and load, "
            "partition owners and preference lists, handoffs, a key's replicas and versions; "
            "drain a node (graceful leave)."
        ),
    )
    admin.add_argument(
        "--url", default=None, help=f"a node's HTTP API (${URL_ENV}). Default: {DEFAULT_URL}"
    )
    admin.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help=f"file holding the bearer token (default: ${TOKEN_ENV})",
    )
    admin.add_argument("--json", action="store_true", help="print JSON instead of tables")
    admin.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per request. Default: 10"
    )
    sub = admin.add_subparsers(dest="admin_command", metavar="ACTION")
    sub.required = True
    sub.add_parser("members", help="members, zones, state, partitions and load")
    parts = sub.add_parser("partitions", help="partition owners and preference lists")
    parts.add_argument("-n", "--replication", type=int, default=None, help="list length")
    parts.add_argument(
        "-p", "--partition", type=int, action="append", help="only this partition (repeatable)"
    )
    sub.add_parser("handoffs", help="partitions being pulled, hints pending, leaves")
    key = sub.add_parser("key", help="a key's replicas and the version each one holds")
    key.add_argument("key")
    key.add_argument("-n", "--replication", type=int, default=None, help="replicas to ask")
    drain = sub.add_parser("drain", help="make the node at --url leave the ring and exit")
    drain.add_argument("--yes", action="store_true", help="confirm the drain")
    admin.set_defaults(subparser=admin)


def run_admin(
    args: argparse.Namespace, environ: Mapping[str, str], out: TextIO = sys.stdout
) -> int:
    """Run one ``admin`` action; returns the exit status."""
    url = args.url or environ.get(URL_ENV) or DEFAULT_URL
    if args.token_file is not None:
        try:
            token: str | None = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"peer-ring-kv admin: error: {exc}", file=sys.stderr)
            return 2
    else:
        token = environ.get(TOKEN_ENV) or None
    client = AdminClient(url, token, args.timeout)
    try:
        _COMMANDS[args.admin_command](client, args, out)
    except AdminUsageError as exc:
        print(f"peer-ring-kv admin: error: {exc}", file=sys.stderr)
        return 2
    except AdminError as exc:
        print(f"peer-ring-kv admin: {exc}", file=sys.stderr)
        return 1
    return 0
