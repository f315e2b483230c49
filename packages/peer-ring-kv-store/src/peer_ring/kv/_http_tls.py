"""TLS (and optional client certificates) on the HTTP API, reloaded when the files change.

The files are watched by the core's ``peer_ring.core.tls.ReloadingFiles``, as the peer TLS
(``TLSConfig``) is: they are checked (``os.stat``: device, inode, mtime, size) at most once
per ``reload_interval`` when a new connection's handshake starts, and changed files are
loaded for that handshake and every later one, without a restart. A file read half-written
(not complete PEM) or a key that does not match its certificate keeps the previous material
in use, with one warning.

How the swap works: the server's :class:`ssl.SSLContext` (the one given to aiohttp) has a
``sni_callback``; OpenSSL calls it for every ClientHello, with or without a server name,
before the certificate is chosen. The callback points the connection at the newest context
(``SSLObject.context = ...``), so a CA rotation is honoured too, not only a new leaf.
Connections established before a rotation keep their TLS session.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from peer_ring.core.tls import ReloadingFiles, read_pem

logger = logging.getLogger(__name__)


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

    The files are watched by the core's :class:`peer_ring.core.tls.ReloadingFiles` (the
    watcher of the peers' TLS); this builds the contexts and switches connections to them.

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
        try:
            self._files = ReloadingFiles(
                config.paths,
                self._build,
                reload_interval=config.reload_interval,
                monotonic=monotonic,
                name=config.cert_file,
                label="HTTP TLS",
                logger=logger,
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise HttpTLSError(str(exc)) from None
        self._base = self._files.current
        self._base.sni_callback = self._on_hello

    @property
    def context(self) -> ssl.SSLContext:
        """The context to give the listening socket (it switches connections to the newest)."""
        return self._base

    @property
    def reloads(self) -> int:
        """Times changed files were loaded."""
        return self._files.version

    def refresh(self) -> bool:
        """Load the files if they changed (at most once per ``reload_interval``).

        Returns:
            True when new material was loaded.
        """
        return self._files.refresh()

    def _on_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object
    ) -> int | None:
        try:
            self.refresh()
            current = self._files.current
            if current is not self._base:
                connection.context = current
        except Exception:  # an exception here would abort the handshake with no reason
            logger.exception("HTTP TLS: reloading the certificate failed")
        return None

    def _build(self) -> ssl.SSLContext:
        cfg = self.config
        for path, what in ((cfg.cert_file, "certificate"), (cfg.key_file, "private key")):
            read_pem(path, what)  # refuses a half-written file
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
        if cfg.ca_file is not None:
            read_pem(cfg.ca_file, "CA")
            context.load_verify_locations(cafile=cfg.ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context
