"""``free_port`` / ``free_port_block``: ports that really are free, and clear failures."""

from __future__ import annotations

import socket

import pytest

from peer_ring.core.testing import _ports, free_port, free_port_block


def bind(host: str, port: int) -> None:
    with socket.socket() as sock:
        sock.bind((host, port))  # raises if the port is taken


def test_a_free_port_binds_on_every_host_asked() -> None:
    hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    port = free_port(*hosts)
    for host in hosts:
        bind(host, port)
    bind("127.0.0.1", free_port())


def test_a_block_is_consecutive_and_free() -> None:
    base = free_port_block(4)
    for port in range(base, base + 4):
        bind("127.0.0.1", port)
    with pytest.raises(ValueError, match="count must be at least 1, got 0"):
        free_port_block(0)


def test_a_taken_port_is_not_bindable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not _ports._bindable("127.0.0.1", port)
    assert _ports._bindable("127.0.0.1", port)  # released again


def test_no_free_port_after_the_attempts_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a machine whose second address has every port taken.
    monkeypatch.setattr(_ports, "_bindable", lambda host, port: False)
    with pytest.raises(OSError, match=r"no port free on all of \('127.0.0.1', '127.0.0.2'\)"):
        free_port("127.0.0.1", "127.0.0.2")
    with pytest.raises(OSError, match=r"no 2 consecutive ports free on 127\.0\.0\.1"):
        free_port_block(2)
    assert free_port_block(1) > 0  # a block of one needs no neighbour
