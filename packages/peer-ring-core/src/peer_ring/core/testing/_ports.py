"""Finding free TCP ports for test clusters on loopback."""

from __future__ import annotations

import socket


def free_port(*hosts: str) -> int:
    """A TCP port that is free on every host in ``hosts`` (default ``127.0.0.1``) right now.

    Nodes on ``127.0.0.1``, ``127.0.0.2``... can then share one port, as pods do. The port
    is released before returning, so another process may take it: good enough for tests.
    """
    targets = hosts or ("127.0.0.1",)
    for _ in range(100):
        with socket.socket() as first:
            first.bind((targets[0], 0))
            port = int(first.getsockname()[1])
            if all(_bindable(host, port) for host in targets[1:]):
                return port
    raise OSError(f"no port free on all of {targets}")


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive TCP ports that are all free on ``host`` right now.

    For programs that take one base port and bind ``base``, ``base + 1``... (the core's
    examples do). Like :func:`free_port`, the ports are released before returning.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    for _ in range(100):
        base = free_port(host)
        if base + count - 1 <= 65535 and all(_bindable(host, base + i) for i in range(1, count)):
            return base
    raise OSError(f"no {count} consecutive ports free on {host}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
