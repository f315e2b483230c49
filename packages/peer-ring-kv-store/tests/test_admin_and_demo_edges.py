"""What `admin` and `demo` print when a cluster is not healthy.

test_admin_serve.py and test_demo.py run both against real nodes, which are healthy; the
states an operator runs these tools for (a member unreachable or suspected, a replica
erroring or holding a tombstone, a node answering errors, writes refused, values lost) are
hard to produce there on demand. Here a small HTTP server answers with those documents
(the JSON shapes of the admin routes, as the real node sends them), over real HTTP.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
from aiohttp import web

from peer_ring.kv import cli
from peer_ring.kv._admin_cli import AdminClient, AdminError, run_admin, table
from peer_ring.kv._demo import Step, _read_all, _Report, _write_all

HANDOFF_IDLE = {
    "pending_partitions": 0,
    "held_for_handoff": 0,
    "hints_pending": 0,
    "records_received": 7,
    "leave_state": "none",
}
CLUSTER = {
    "self": "a:1",
    "members": ["a:1", "b:2", "c:3", "d:4"],
    "suspected": ["b:2"],
    "zones": {"a:1": "z1", "b:2": "z2"},
    "partitions": 8,
    "replication": 3,
    "quorum": 2,
    "owned_partitions": {"a:1": 2, "b:2": 2, "c:3": 2, "d:4": 2},
    "replica_partitions": {"a:1": 6, "b:2": 6, "c:3": 6, "d:4": 6},
}
NODES = {
    "nodes": {
        "a:1": {
            "ok": True,
            "ready": True,
            "stats": {"keys": 3, "size_bytes": 30},
            "handoff": HANDOFF_IDLE,
        },
        "b:2": {"ok": True, "ready": True, "stats": {"keys": 2}, "handoff": HANDOFF_IDLE},
        "c:3": {"ok": False, "error": "PeerUnavailableError: connection refused"},
        "d:4": {
            "ok": True,
            "ready": False,
            "stats": {},
            "handoff": {**HANDOFF_IDLE, "pending_partitions": 2, "leave_state": "none"},
        },
    }
}
VERSION = {"physical": 1700000000500, "logical": 2, "node_id": "a", "wall_time": 1700000000.5}
KEY = {
    "key": "k 1",
    "partition": 5,
    "replication": 4,
    "consistent": False,
    "zones": {"a:1": "z1"},
    "replicas": [
        {
            "node": "a:1",
            "ok": True,
            "found": True,
            "version": VERSION,
            "value_bytes": 3,
            "expires": 1700000100.25,
        },
        {"node": "b:2", "ok": True, "found": True, "tombstone": True, "version": VERSION},
        {"node": "c:3", "ok": False, "error": "TimeoutError: no answer"},
        {"node": "d:4", "ok": True, "found": False},
    ],
}


class CannedAdmin(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, str | None]]] = []

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        CannedAdmin.seen.append(("GET", self.path, self.headers.get("Authorization")))
        path = self.path.split("?")[0]
        docs = {"/cluster": CLUSTER, "/admin/nodes": NODES, "/admin/key/k%201": KEY}
        if path in docs:
            self._send(200, json.dumps(docs[path]).encode())
        elif path == "/admin/key/plain":
            self._send(502, b"upstream broke <html>", "text/plain")
        elif path == "/admin/key/list":
            self._send(400, b'["not", "an", "object"]')
        else:
            self._send(404, b'{"error": "no such route"}')

    def do_POST(self) -> None:
        CannedAdmin.seen.append(("POST", self.path, self.headers.get("Authorization")))
        self._send(200, json.dumps({"self": "a:1", "draining": True}).encode())


@pytest.fixture
def admin_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), CannedAdmin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    CannedAdmin.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def admin(url: str, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    args = cli.build_parser().parse_args(["admin", "--url", url, *argv])
    out = io.StringIO()
    return run_admin(args, env or {}, out), out.getvalue()


def test_members_shows_unreachable_suspected_and_syncing_members(admin_url: str) -> None:
    code, out = admin(admin_url, "members")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:]}
    assert out.splitlines()[0] == "4 members, 8 partitions, N=3 W/R=2 (asked a:1 *)"
    assert rows["a:1"][:4] == ["a:1", "*", "z1", "ready"]
    assert rows["b:2"][:3] == ["b:2", "z2", "suspected"]
    assert rows["c:3"][1:3] == ["unreachable", "2"]  # no zone, owned 2
    assert rows["d:4"][1:2] == ["syncing"]


def test_handoffs_table_and_json(admin_url: str) -> None:
    code, out = admin(admin_url, "handoffs")
    assert code == 0
    lines = out.splitlines()
    assert lines[-1] == "handoffs in progress"  # d:4 still pulls 2 partitions
    rows = {line.split()[0]: line.split() for line in lines[2:-1]}
    assert rows["c:3"] == ["c:3", "unreachable", "-", "-", "-", "-", "-"]
    assert rows["d:4"] == ["d:4", "syncing", "2", "0", "0", "7", "none"]
    code, out = admin(admin_url, "--json", "handoffs")
    assert code == 0
    assert json.loads(out) == {m: info.get("handoff") for m, info in NODES["nodes"].items()}


def test_key_shows_each_replicas_state_version_and_times(admin_url: str) -> None:
    code, out = admin(admin_url, "key", "k 1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "key 'k 1': partition 5, N=4, replicas DIFFER (or some did not answer)"
    assert "/admin/key/k%201" in CannedAdmin.seen[0][1]  # the key is quoted in the path
    by_node = {line.split()[0]: line for line in lines[3:]}
    assert by_node["a:1"].split() == [
        "a:1",
        "z1",
        "value",
        "1700000000500.2@a",
        "2023-11-14T22:13:20.500Z",
        "3",
        "2023-11-14T22:15:00.250Z",
    ]
    assert by_node["b:2"].split()[1:3] == ["deleted", "1700000000500.2@a"]
    assert by_node["c:3"].split()[1:4] == ["error:", "TimeoutError:", "no"]
    assert by_node["d:4"].split() == ["d:4", "absent", "-", "-", "-", "-"]


def test_drain_json_and_the_token_from_a_file(admin_url: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    code, out = admin(admin_url, "--token-file", str(token), "--json", "drain", "--yes")
    assert code == 0
    assert json.loads(out) == {"self": "a:1", "draining": True}
    assert CannedAdmin.seen == [("POST", "/admin/drain", "Bearer s3cret")]


def test_a_missing_token_file_is_a_usage_error(
    admin_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = admin(admin_url, "--token-file", str(tmp_path / "nope"), "members")
    assert (code, out) == (2, "")
    assert "peer-ring-kv admin: error: " in capsys.readouterr().err
    assert CannedAdmin.seen == []  # nothing was sent


def test_error_answers_that_are_not_json_objects_are_shown_as_text(admin_url: str) -> None:
    client = AdminClient(admin_url)
    with pytest.raises(AdminError, match="GET /admin/key/plain: HTTP 502: upstream broke <html>"):
        client.key("plain")
    with pytest.raises(AdminError, match=r'HTTP 400: \["not", "an", "object"\]'):
        client.key("list")
    with pytest.raises(AdminError, match="HTTP 404: no such route"):
        client.request("GET", "/nowhere")


def test_main_runs_admin_and_exits_1_when_the_node_refuses(
    admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["admin", "--url", admin_url, "key", "plain"], environ={}) == 1
    assert "peer-ring-kv admin: GET /admin/key/plain: HTTP 502" in capsys.readouterr().err


def test_tables_render_booleans_and_missing_values() -> None:
    assert table(["flag", "n"], [[True, 1], [False, None]]).splitlines() == [
        "flag  n",
        "----  -",
        " yes  1",  # a bool is an int: the column is right-aligned like numbers
        "  no  -",  # None is not a number: left-aligned
    ]


# ------------------------------------------------------------------- demo: bad answers
@pytest.fixture
async def bad_node() -> Any:
    """PUT: 204 for keys ending in 0, 500 otherwise. GET: the right value for keys ending
    in 0, 404 for 1, another value for 2, 503 otherwise."""

    async def put(request: web.Request) -> web.Response:
        if request.match_info["key"].endswith("0"):
            return web.Response(status=204)
        return web.Response(status=500, text="disk on fire")

    async def get(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if key.endswith("0"):
            return web.Response(body=f"value of {key}".encode())
        if key.endswith("1"):
            return web.Response(status=404)
        if key.endswith("2"):
            return web.Response(body=b"someone else's value")
        return web.Response(status=503, text="quorum not reached")

    app = web.Application()
    app.router.add_put("/kv/{key}", put)
    app.router.add_get("/kv/{key}", get)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_demo_counts_refused_writes_lost_values_and_failed_reads(
    bad_node: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {f"k{i}": f"value of k{i}".encode() for i in range(10)}
    async with aiohttp.ClientSession() as session:
        write = Step("write")
        await _write_all(session, [bad_node], data, write)
        assert (write.ok, write.failed, write.passed) == (1, 9, False)
        read = Step("read")
        await _read_all(session, [bad_node], data, read)
        # k0 right; k1 absent and k2 another value: LOST; k3..k9: 503, failed
        assert (read.ok, read.lost, read.failed) == (1, 2, 7)
    err = capsys.readouterr().err
    assert "PUT k1: HTTP 500 disk on fire" in err
    assert "GET k1: HTTP 404 b''" in err and 'GET k2: HTTP 200 b"someone else\'s value"' in err
    assert "... and 4 more" in err  # 9 problems, 5 shown


async def test_demo_counts_an_unreachable_node_as_failures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A port nothing listens on: every request fails to connect.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    data = {"k0": b"v"}
    async with aiohttp.ClientSession() as session:
        write, read = Step("write"), Step("read")
        await _write_all(session, [dead], data, write)
        await _read_all(session, [dead], data, read)
    assert (write.ok, write.failed) == (0, 1)
    assert (read.ok, read.lost, read.failed) == (0, 0, 1)
    err = capsys.readouterr().err
    assert "PUT k0: ClientConnectorError" in err and "GET k0: ClientConnectorError" in err


async def test_a_demo_step_that_raises_is_reported_failed() -> None:
    out = io.StringIO()
    report = _Report(out)

    async def broken(step: Step) -> None:
        raise OSError("address already in use")

    step = await report.step("start 3 nodes", broken)
    assert step.error == "OSError: address already in use" and not step.passed
    assert (
        out.getvalue()
        .splitlines()[-1]
        .endswith("start 3 nodes: FAILED: OSError: address already in use")
    )


def test_parser_namespace_for_admin_has_the_subparser() -> None:
    args = cli.build_parser().parse_args(["admin", "members"])
    assert isinstance(args, argparse.Namespace) and args.admin_command == "members"
