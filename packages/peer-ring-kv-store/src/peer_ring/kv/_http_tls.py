"""TLS (and optional client certificates) on the HTTP API, reloaded when the files change.

The behaviour follows the peer TLS of ``peer_ring.core`` (``TLSConfig``): the files are
checked (``os.stat``: device, inode, mtime, size) at most once per ``reload_interval`` when a
new connection's handshake starts, and changed files are loaded for that handshake and every
later one, without a restart. A file read half-written (not complete PEM) or a key that does
not match its certificate keeps the previous material in use, with one warning.

How the swap works: the server's :class:`ssl.SSLContext` (the one given to aiohttp) has a
``sni_callback``; OpenSSL calls it for every ClientHello, with or without a server name,
before the certificate is chosen. The callback points the connection at the newest context
(``SSLObject.context = ...``), so a CA rotation is honoured too, not only a new leaf.
Connections established before a rotation keep their TLS session.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int, int], ...]


class HttpTLSError(ValueError):
    """A TLS file of the HTTP API is missing, unreadable, not PEM, or the key does not match."""


@dataclass(frozen=True, slots=True)
class HttpTLSConfig:
    """The certificate files of the HTTPS API.

    Attributes:
        cert_file: PEM certificate chain the server presents (leaf first).
        key_file: PEM private key of ``cert_file`` (unencrypted).
        ca_file: PEM bundle of the CA(s) client certificates must chain to; given, every
            client must present such a certificate (mutual TLS). ``None``: any client may
            connect (use ``--http-token`` to authenticate them).
        reload_interval: seconds between two checks of the files for changes.
    """

    cert_file: str
    key_file: str
    ca_file: str | None = None
    reload_interval: float = 1.0

    @property
    def paths(self) -> tuple[str, ...]:
        """The files watched for changes."""
        files = (self.cert_file, self.key_file)
        return files if self.ca_file is None else (*files, self.ca_file)


class ReloadingServerContext:
    """A server :class:`ssl.SSLContext` whose certificate follows the files on disk.

    Args:
        config: the files and the check interval.
        monotonic: time source of the check interval.

    Raises:
        HttpTLSError: the files cannot be loaded (at construction, so that a bad setting
            fails at start, not at the first client).

    Example:
        >>> tls = ReloadingServerContext(HttpTLSConfig("tls.crt", "tls.key"))  # doctest: +SKIP
        >>> web.TCPSite(runner, host, port, ssl_context=tls.context)
    """

    def __init__(
        self, config: HttpTLSConfig, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._monotonic = monotonic
        try:
            self._stamp = self._stat()
            self._current = self._build()
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise HttpTLSError(str(exc)) from None
        self._base = self._current
        self._base.sni_callback = self._on_hello
        self._next_check = monotonic() + config.reload_interval
        self._rejected: _Stamp | None = None
        #: Times changed files were loaded.
        self.reloads = 0

    @property
    def context(self) -> ssl.SSLContext:
        """The context to give the listening socket (it switches connections to the newest)."""
        return self._base

    def refresh(self) -> bool:
        """Load the files if they changed (at most once per ``reload_interval``).

        Returns:
            True when new material was loaded.
        """
        now = self._monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.config.reload_interval
        try:
            stamp = self._stat()
        except OSError as exc:
            # Mid-rotation a file may be briefly absent; keep serving with what we have.
            self._reject(None, f"cannot stat the certificate files: {exc}")
            return False
        if stamp == self._stamp:
            return False
        try:
            context = self._build()
        except (OSError, ValueError, ssl.SSLError) as exc:
            self._reject(stamp, str(exc))
            return False
        self._stamp = stamp
        self._current = context
        self._rejected = None
        self.reloads += 1
        logger.info("HTTP TLS certificate files changed: reloaded %s", self.config.cert_file)
        return True

    def _on_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object
    ) -> int | None:
        try:
            self.refresh()
            if self._current is not self._base:
                connection.context = self._current
        except Exception:  # an exception here would abort the handshake with no reason
            logger.exception("HTTP TLS: reloading the certificate failed")
        return None

    def _reject(self, stamp: _Stamp | None, reason: str) -> None:
        # One warning per distinct bad state, not one per connection.
        if stamp is not None and stamp == self._rejected:
            return
        self._rejected = stamp
        logger.warning("HTTP TLS: keeping the previous certificate: %s", reason)

    def _stat(self) -> _Stamp:
        # os.stat follows symlinks: a Kubernetes secret volume swaps a `..data` symlink.
        stamps = []
        for path in self.config.paths:
            st = os.stat(path)
            stamps.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def _build(self) -> ssl.SSLContext:
        cfg = self.config
        for path, what in ((cfg.cert_file, "certificate"), (cfg.key_file, "private key")):
            _check_pem(path, what)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
        if cfg.ca_file is not None:
            _check_pem(cfg.ca_file, "CA")
            context.load_verify_locations(cafile=cfg.ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def _check_pem(path: str, what: str) -> None:
    """Refuse a file that is not complete PEM (half-written during a rotation)."""
    with open(path, "rb") as f:
        data = f.read()
    begins = data.count(b"-----BEGIN ")
    if begins == 0:
        raise ValueError(f"{what} file {path} holds no PEM block")
    if begins != data.count(b"-----END ") or not data.rstrip().endswith(b"-----"):
        raise ValueError(f"{what} file {path} is incomplete (being written?)")
