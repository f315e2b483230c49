"""TLS and mutual TLS between peers, with certificate files reloaded while the node runs.

A :class:`TLSConfig` names three PEM files: the cluster's CA bundle, this node's certificate
chain and its private key. The same files serve both directions of a peer link:

- the *server* presents the certificate and, with ``require_client_auth`` (the default),
  accepts only clients whose certificate chains to the CA (mutual TLS). It uses gRPC's
  dynamic credentials: gRPC asks for the current certificate before every new connection's
  handshake, and :class:`CertificateFiles` re-reads the files when they changed on disk.
- the *client* presents the same certificate and verifies the server against the CA and
  against the name it dialled: peers are dialled by ``IP:port``, so either every
  certificate carries its node's IP as an IP SAN, or the cluster shares a name
  (``server_name``, a DNS SAN every certificate carries) checked instead. Channels are
  built from the files current when a connection is (re)established, so a rotated
  certificate is used by every new connection and reconnect, without restart.

Rotation is what cert-manager (or any tool) does: it replaces the files; Kubernetes swaps
a secret volume atomically (a symlink flip). A file that is replaced non-atomically and read
half-written fails the PEM check below and the previous certificate stays in use until the
file is complete. Connections established before a rotation keep their TLS session; set
``TransportLimits.max_connection_age`` when a policy demands that none outlives the old
certificate.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from peer_ring.core._errors import InvalidArgumentError
from peer_ring.core.tls import ReloadingFiles, read_pem
from peer_ring.core.transport._stats import TransportStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Where a node's TLS material lives and how peers are verified.

    Attributes:
        ca_file: PEM bundle of the CA certificate(s) peers are verified against. Several
            CAs may be listed (a CA rotation trusts the old and the new one for a while).
        cert_file: PEM certificate chain of this node (leaf first), used both as server
            and as client certificate: give it the ``serverAuth`` and ``clientAuth``
            extended key usages, or none.
        key_file: PEM private key of ``cert_file`` (unencrypted).
        server_name: the name a client checks the server's certificate against instead
            of the dialled IP (gRPC's ``grpc.ssl_target_name_override``). ``None``: every
            certificate must carry its node's IP address as an IP SAN.
        require_client_auth: the server refuses clients that present no certificate
            signed by the CA (mutual TLS). ``False`` only encrypts and authenticates the
            server; then use a cluster token to authenticate peers.
        reload_interval: files are checked for changes (``stat``) at most once per this
            many seconds; 0 checks on every new connection.
    """

    ca_file: str
    cert_file: str
    key_file: str
    server_name: str | None = None
    require_client_auth: bool = True
    reload_interval: float = 1.0

    def __post_init__(self) -> None:
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if not isinstance(value, str | os.PathLike) or not os.fspath(value):
                raise InvalidArgumentError(f"TLSConfig.{name} must be a file path, got {value!r}")
            # Accept pathlib paths, store plain strings (frozen: set through object).
            object.__setattr__(self, name, os.fspath(value))
        if not self.reload_interval >= 0:
            raise InvalidArgumentError(
                f"TLSConfig.reload_interval must be >= 0, got {self.reload_interval!r}"
            )
        if self.server_name is not None and not self.server_name.strip():
            raise InvalidArgumentError("TLSConfig.server_name must not be empty")


@dataclass(frozen=True, slots=True)
class CertificateSet:
    """The PEM contents of the three files, read together."""

    ca: bytes
    cert: bytes
    key: bytes


class CertificateFiles(ReloadingFiles[CertificateSet]):
    """The files of a :class:`TLSConfig`, re-read when they change on disk.

    The watcher is :class:`peer_ring.core.tls.ReloadingFiles` (public, for applications'
    own TLS listeners); this adds the three PEM files, the errors and the stats.
    Thread-safe: gRPC calls the server's certificate fetcher from its own threads.

    Args:
        config: the files and the check interval.
        stats: counters (``certificate_reloads``).
        monotonic: time source of the check interval.

    Raises:
        InvalidArgumentError: a file is missing, unreadable or not PEM (at construction,
            so that a misconfigured node fails at start, not at its first connection).
    """

    def __init__(
        self,
        config: TLSConfig,
        stats: TransportStats | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._stats = stats if stats is not None else TransportStats()
        try:
            super().__init__(
                (config.ca_file, config.cert_file, config.key_file),
                self._read,
                reload_interval=config.reload_interval,
                monotonic=monotonic,
                name=config.cert_file,
                label="TLS",
                logger=logger,
            )
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"TLS: {exc}") from None

    def refresh(self) -> bool:
        """Re-read the files if they changed (at most once per ``reload_interval``).

        Returns:
            True when new material was loaded.
        """
        if not super().refresh():
            return False
        self._stats.certificate_reloads += 1
        return True

    def _read(self) -> CertificateSet:
        cfg = self.config
        return CertificateSet(
            ca=read_pem(cfg.ca_file, "CA"),
            cert=read_pem(cfg.cert_file, "certificate"),
            key=read_pem(cfg.key_file, "private key"),
        )


def server_credentials(files: CertificateFiles, stats: TransportStats) -> grpc.ServerCredentials:
    """Dynamic server credentials that follow ``files``.

    gRPC calls the fetcher (on one of its threads) before each new connection's handshake;
    it counts the handshake and hands gRPC the new material when the files changed.
    """

    def configuration(material: CertificateSet) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert)], root_certificates=material.ca
        )

    # gRPC may run handshakes on several threads: keep the counter exact.
    lock = threading.Lock()

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        with lock:
            stats.tls_handshakes += 1
        try:
            if files.refresh():
                return configuration(files.current)
        except Exception:  # never let an exception escape into gRPC's C core
            logger.exception("TLS: reloading the server certificate failed")
        return None

    return grpc.dynamic_ssl_server_credentials(
        configuration(files.current),
        fetch,  # type: ignore[arg-type]  # grpc-stubs omit the documented None ("no change")
        require_client_authentication=files.config.require_client_auth,
    )


class ClientCredentials:
    """Channel credentials built from the current files, rebuilt after they change."""

    def __init__(self, files: CertificateFiles) -> None:
        self._files = files
        self._version = -1
        self._credentials: grpc.ChannelCredentials | None = None

    def current(self) -> tuple[int, grpc.ChannelCredentials]:
        """``(version, credentials)``: the version changes whenever the files did."""
        self._files.refresh()
        version = self._files.version
        if self._credentials is None or version != self._version:
            material = self._files.current
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=material.ca,
                private_key=material.key,
                certificate_chain=material.cert,
            )
            self._version = version
        return self._version, self._credentials
