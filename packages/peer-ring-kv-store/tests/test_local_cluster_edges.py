"""LocalCluster's own failure handling: bad arguments, nodes that die, hang or ignore SIGTERM.

The HTTP tests use LocalCluster with real ``serve`` nodes and only ever see it work; these
drive its error paths with stand-in processes (small shell scripts given as the "python"
that runs the node), so each case takes a second, not a cluster start.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
from pathlib import Path

import pytest

from peer_ring.kv._local_cluster import (
    HTTP_PORT_OFFSET,
    LocalCluster,
    LocalNode,
    NodeAddress,
    NodeFailedError,
    _common_free_ports,
    allocate_addresses,
    loopback_aliases_available,
)


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# ----------------------------------------------------------------------------- addresses
def test_allocate_addresses_refuses_bad_counts_hosts_and_ports() -> None:
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        allocate_addresses(0)
    with pytest.raises(ValueError, match="need 1 host or at least 3 hosts, got 2"):
        allocate_addresses(3, hosts=("127.0.0.1", "127.0.0.2"))
    with pytest.raises(ValueError, match="base port 0 leaves no room for 2 nodes"):
        allocate_addresses(2, base_port=0)
    with pytest.raises(ValueError, match="base port 64535 leaves no room for 2 nodes"):
        allocate_addresses(2, base_port=65535 - HTTP_PORT_OFFSET)  # the 2nd node's HTTP: 65536
    # The last port that fits:
    top = allocate_addresses(2, base_port=65534 - HTTP_PORT_OFFSET)
    assert top[1].http == "127.0.0.1:65535"


def test_allocate_addresses_with_a_base_port_one_host_and_many_hosts() -> None:
    one = allocate_addresses(3, base_port=20000)
    assert [(a.peer, a.http) for a in one] == [
        ("127.0.0.1:20000", "127.0.0.1:21000"),
        ("127.0.0.1:20001", "127.0.0.1:21001"),
        ("127.0.0.1:20002", "127.0.0.1:21002"),
    ]
    many = allocate_addresses(2, hosts=("127.0.0.1", "127.0.0.2", "127.0.0.3"), base_port=30000)
    assert [(a.peer, a.http) for a in many] == [
        ("127.0.0.1:30000", "127.0.0.1:31000"),
        ("127.0.0.2:30000", "127.0.0.2:31000"),
    ]
    assert NodeAddress("::1", "[::1]:9").url == "http://[::1]:9"


def test_allocate_addresses_with_free_ports_on_many_hosts_shares_the_ports() -> None:
    hosts = ("127.0.0.1", "127.0.0.2")
    if not loopback_aliases_available(hosts):
        pytest.skip("127.0.0.2 cannot be bound here (not Linux)")
    addresses = allocate_addresses(2, hosts=hosts)
    peer_ports = {a.peer.rsplit(":", 1)[1] for a in addresses}
    http_ports = {a.http.rsplit(":", 1)[1] for a in addresses}
    assert len(peer_ports) == 1 and len(http_ports) == 1 and peer_ports != http_ports
    assert [a.peer.rsplit(":", 1)[0] for a in addresses] == list(hosts)


def test_ipv6_hosts_are_bracketed() -> None:
    if not loopback_aliases_available(["::1"]):
        pytest.skip("no IPv6 loopback here")
    (address,) = allocate_addresses(1, hosts=("::1",))
    assert address.peer.startswith("[::1]:") and address.http.startswith("[::1]:")


def test_common_free_ports_gives_up_when_a_host_cannot_bind() -> None:
    # 192.0.2.1 (TEST-NET-1) is not an address of this machine: no port binds on it.
    with pytest.raises(ValueError, match=re.escape("no port free on all of 127.0.0.1, 192.0.2.1")):
        _common_free_ports(["127.0.0.1", "192.0.2.1"], 1)
    assert not loopback_aliases_available(["127.0.0.1", "192.0.2.1"])


def test_common_free_ports_skips_a_port_taken_on_another_host() -> None:
    hosts = ["127.0.0.1", "127.0.0.2"]
    if not loopback_aliases_available(hosts):
        pytest.skip("127.0.0.2 cannot be bound here (not Linux)")
    ports = _common_free_ports(hosts, 3)
    assert len(set(ports)) == 3
    for port in ports:  # each is free on both hosts
        for host in hosts:
            with socket.socket() as sock:
                sock.bind((host, port))


# ----------------------------------------------------------------------------- LocalNode
async def test_a_node_never_started_has_no_pid_waits_with_an_error_and_stops_as_0(
    tmp_path: Path,
) -> None:
    node = LocalNode(0, NodeAddress("a:1", "a:2"), ["true"], tmp_path / "n.log", {})
    assert (node.name, node.pid, node.running) == ("node 1", None, False)
    with pytest.raises(RuntimeError, match="node 1 was never started"):
        await node.wait(1.0)
    assert await node.stop() == 0
    node.send_signal(signal.SIGTERM)  # no process: nothing to do, no error
    assert node.log_tail() == "(no log)"


async def test_a_running_node_cannot_start_twice_and_its_exit_status_is_returned(
    tmp_path: Path,
) -> None:
    sleeper = script(tmp_path, "sleeper", "exec sleep 30")
    node = LocalNode(1, NodeAddress("a:1", "a:2"), [sleeper], tmp_path / "n.log", dict(os.environ))
    await node.start()
    try:
        assert node.running and node.pid is not None
        with pytest.raises(RuntimeError, match="node 2 is already running"):
            await node.start()
    finally:
        code = await node.kill(signal.SIGKILL, within=10.0)
    assert code == -signal.SIGKILL and not node.running
    node.send_signal(signal.SIGTERM)  # exited: a no-op
    assert "--- starting: " + sleeper in node.log_tail()


async def test_stop_kills_a_node_that_ignores_sigterm_after_the_grace(tmp_path: Path) -> None:
    stubborn = script(tmp_path, "stubborn", "trap '' TERM\necho up\nwhile :; do sleep 0.05; done")
    node = LocalNode(0, NodeAddress("a:1", "a:2"), [stubborn], tmp_path / "n.log", dict(os.environ))
    await node.start()
    # SIGTERM before the script has set its trap would simply end it: wait for its "up"
    # (bounded; the log file is the only thing the script can tell us through).
    for _ in range(1000):
        if "up" in node.log_tail():
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the script never started")
    assert await node.stop(grace=0.5) == -signal.SIGKILL


async def test_log_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "n.log"
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    node = LocalNode(0, NodeAddress("a:1", "a:2"), ["true"], log, {})
    assert node.log_tail(3) == "line 47\nline 48\nline 49"


# --------------------------------------------------------------------------- LocalCluster
def test_cluster_argument_errors(tmp_path: Path) -> None:
    addresses = allocate_addresses(1)
    with pytest.raises(ValueError, match="give peers_file or discovery_args, not both"):
        LocalCluster(addresses, peers_file=tmp_path / "peers", discovery_args=lambda a: [])
    cluster = LocalCluster(addresses, log_dir=tmp_path / "logs")
    with pytest.raises(RuntimeError, match="adding nodes needs a cluster created with peers_file"):
        cluster.add_node(allocate_addresses(1)[0])
    with pytest.raises(RuntimeError, match="membership changes need a cluster created"):
        cluster.set_members([0])


async def test_discovery_args_replace_the_peers_list_and_allow_adding_nodes(
    tmp_path: Path,
) -> None:
    addresses = allocate_addresses(2)
    seen: list[str] = []

    def discovery(address: NodeAddress) -> list[str]:
        seen.append(address.peer)
        return ["--discovery", "etcd", "--discovery-option", f"name={address.peer}"]

    cluster = LocalCluster(addresses[:1], discovery_args=discovery, log_dir=tmp_path)
    node = cluster.add_node(addresses[1])
    assert seen == [addresses[0].peer, addresses[1].peer]
    assert node.index == 1
    assert node.command[-4:] == ["--discovery", "etcd", "--discovery-option", f"name={seen[1]}"]
    assert "--peers" not in node.command and "--peers-file" not in node.command
    await cluster.close()
    assert cluster.log_dir == tmp_path and not cluster._own_log_dir  # never removed


async def test_a_node_exiting_before_ready_fails_the_start_with_its_log(tmp_path: Path) -> None:
    failing = script(tmp_path, "failing", 'echo "boom: $*"\nexit 3')
    cluster = LocalCluster(allocate_addresses(1), python=failing, keep_logs=True)
    try:
        with pytest.raises(NodeFailedError) as err:
            await cluster.start(ready_within=10.0)
        message = str(err.value)
        assert "node 1" in message and "exited with status 3 before it was ready" in message
        assert "boom: -m peer_ring.kv.cli serve --listen" in message  # the log tail
    finally:
        await cluster.close()
    assert cluster.log_dir.is_dir()  # keep_logs
    (cluster.log_dir / "node-1.log").unlink()
    cluster.log_dir.rmdir()


async def test_a_node_that_never_answers_readyz_times_out_and_is_stopped(tmp_path: Path) -> None:
    silent = script(tmp_path, "silent", "echo waiting\nexec sleep 30")
    cluster = LocalCluster(allocate_addresses(1), python=silent)
    try:
        with pytest.raises(NodeFailedError) as err:
            await cluster.start(ready_within=0.3)
        message = str(err.value)
        # The last poll's error (connection refused: nothing listens) and the log path.
        assert "not ready after 0.3s (ClientConnectorError" in message
        assert str(cluster.nodes[0].log_path) in message
        assert cluster.nodes[0].running
    finally:
        await cluster.close(grace=5.0)
    assert not cluster.nodes[0].running
    assert not cluster.log_dir.exists()  # its own temporary log folder is removed


async def test_wait_ready_reports_a_node_that_was_never_started(tmp_path: Path) -> None:
    cluster = LocalCluster(allocate_addresses(1), log_dir=tmp_path)
    with pytest.raises(NodeFailedError, match="exited with status None before it was ready"):
        await cluster.wait_ready(0, within=1.0)
    await cluster.close()
