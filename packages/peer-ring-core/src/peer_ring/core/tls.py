"""Certificate files reloaded while a process runs: the watcher behind the peers' TLS, public.

The peer transports (``TLSConfig``) re-read their certificate files when they change on
disk, so that a certificate rotated by cert-manager (or any tool) is used by the next
connection without a restart. :class:`ReloadingFiles` is that watcher, for any material
built from files (an application's own HTTPS listener, say)::

    files = ReloadingFiles(
        ("tls.crt", "tls.key"), load=build_ssl_context, name="tls.crt", logger=logger
    )
    ...
    files.refresh()          # before each new connection's handshake
    context = files.current  # the newest material that loaded

How it decides (the same for the peers' TLS and its users):

- the files are checked with ``os.stat`` (device, inode, mtime, size; symlinks followed, so a
  Kubernetes secret volume's ``..data`` symlink flip is seen) at most once per
  ``reload_interval`` seconds, on :meth:`~ReloadingFiles.refresh`;
- when they changed, ``load()`` builds the new material; if it fails (a file half-written,
  absent mid-rotation, a key that does not match its certificate: ``OSError`` or
  ``ValueError``) the previous material stays in use and one warning is logged per distinct
  bad state, not one per connection;
- :func:`read_pem` reads a PEM file and refuses one whose blocks are incomplete (being
  written), for ``load`` functions to use.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["ReloadingFiles", "read_pem"]

T = TypeVar("T")

_Stamp = tuple[tuple[int, int, int, int], ...]


def read_pem(path: str, what: str) -> bytes:
    """Read a PEM file and check that its blocks are complete (not a half-written file).

    Args:
        path: the file.
        what: what it holds, for the error message ("certificate", "CA", ...).

    Returns:
        The file's content.

    Raises:
        OSError: the file cannot be read.
        ValueError: it holds no PEM block, or an incomplete one.
    """
    with open(path, "rb") as f:
        data = f.read()
    begins = data.count(b"-----BEGIN ")
    ends = data.count(b"-----END ")
    if begins == 0:
        raise ValueError(f"{what} file {path} holds no PEM block")
    if begins != ends or not data.rstrip().endswith(b"-----"):
        raise ValueError(f"{what} file {path} is incomplete (being written?)")
    return data


class ReloadingFiles(Generic[T]):
    """Material built from files, rebuilt when the files change on disk (see the module docs).

    Thread-safe: :meth:`refresh` may be called from several threads (gRPC's handshakes).

    Args:
        paths: the files watched.
        load: builds the material from the files; raises ``OSError`` or ``ValueError``
            when they are not usable.
        reload_interval: seconds between two checks of the files (0: every refresh).
        monotonic: time source of the check interval.
        name: what the reload log line names (e.g. the certificate file).
        label: prefix of the log lines ("TLS", "HTTP TLS").
        logger: where the reload (info) and the rejected files (warning) are logged.

    Raises:
        OSError, ValueError: the files cannot be loaded now (at construction, so that a bad
            setting fails at start, not at the first connection).
    """

    def __init__(
        self,
        paths: Sequence[str],
        load: Callable[[], T],
        *,
        reload_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        name: str = "",
        label: str = "TLS",
        logger: logging.Logger | None = None,
    ) -> None:
        self.paths = tuple(paths)
        self.reload_interval = reload_interval
        self._load = load
        self._monotonic = monotonic
        self._name = name or ", ".join(self.paths)
        self._label = label
        self._logger = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._current = load()
        self._version = 0
        self._next_check = monotonic() + reload_interval
        self._rejected: _Stamp | None = None

    @property
    def current(self) -> T:
        """The material in use (the newest that loaded)."""
        return self._current

    @property
    def version(self) -> int:
        """Increases by one each time changed files were loaded."""
        return self._version

    def refresh(self) -> bool:
        """Reload the material if the files changed (at most once per ``reload_interval``).

        Returns:
            True when new material was loaded.
        """
        with self._lock:
            now = self._monotonic()
            if now < self._next_check:
                return False
            self._next_check = now + self.reload_interval
            try:
                stamp = self._stat()
            except OSError as exc:
                # Mid-rotation a file may be briefly absent; keep serving with what we have.
                self._reject(None, f"cannot stat the certificate files: {exc}")
                return False
            if stamp == self._stamp:
                return False
            try:
                material = self._load()
            except (OSError, ValueError) as exc:
                self._reject(stamp, str(exc))
                return False
            self._stamp = stamp
            self._current = material
            self._version += 1
            self._rejected = None
        self._logger.info("%s certificate files changed: reloaded %s", self._label, self._name)
        return True

    def _reject(self, stamp: _Stamp | None, reason: str) -> None:
        # One warning per distinct bad state, not one per connection attempt.
        if stamp is not None and stamp == self._rejected:
            return
        self._rejected = stamp
        self._logger.warning("%s: keeping the previous certificate: %s", self._label, reason)

    def _stat(self) -> _Stamp:
        # os.stat follows symlinks: a Kubernetes secret volume swaps a `..data` symlink,
        # which changes the inode and mtime seen through the file's path.
        stamps = []
        for path in self.paths:
            st = os.stat(path)
            stamps.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)
