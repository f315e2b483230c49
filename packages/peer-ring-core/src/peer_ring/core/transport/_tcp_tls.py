"""TLS and mutual TLS for the TCP transport (``ssl``), with certificate reload.

Same :class:`~._tls.TLSConfig` and the same files as the gRPC transport. The server's
context re-checks the files at each handshake (from the SNI callback, which runs at the
start of every handshake) and swaps in a new context when they changed; the client builds
its context from the current files at each (re)connect.
"""

from __future__ import annotations

import logging
import ssl

from peer_ring.core.transport._tls import CertificateFiles, TLSConfig

logger = logging.getLogger(__name__)


def _load(ctx: ssl.SSLContext, files: CertificateFiles) -> None:
    material = files.current
    ctx.load_verify_locations(cadata=material.ca.decode("ascii", "replace"))
    cfg = files.config
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)


class ServerContexts:
    """The listener's SSL context, renewed when the certificate files change."""

    def __init__(self, files: CertificateFiles, config: TLSConfig) -> None:
        self._files = files
        self._config = config
        self._version = files.version
        self._current = self._build()
        self.handshakes = 0
        #: The context given to the server: only its SNI callback matters after the swap.
        self.root = self._current

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        _load(ctx, self._files)
        ctx.verify_mode = ssl.CERT_REQUIRED if self._config.require_client_auth else ssl.CERT_NONE
        ctx.sni_callback = self._on_hello
        return ctx

    def _on_hello(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        self.handshakes += 1
        self._files.refresh()
        if self._files.version != self._version:
            try:
                self._current = self._build()
                self._version = self._files.version
            except (OSError, ssl.SSLError) as exc:
                logger.warning("TLS: keeping the previous certificate: %s", exc)
        if sslobj.context is not self._current:
            sslobj.context = self._current


def client_context(files: CertificateFiles) -> ssl.SSLContext:
    """A client context from the current files (refreshed first)."""
    files.refresh()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, files)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
