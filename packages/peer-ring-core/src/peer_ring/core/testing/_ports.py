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


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
