"""A throwaway PKI for tests: a CA, node certificates, and the files of a ``TLSConfig``.

Mutual-TLS tests need a cluster CA, node certificates carrying the address a peer dials
(an IP SAN, or a shared DNS name), "rogue" material from another CA, and certificate files
rotated on disk the way a secret volume is. This module makes all of that with
``cryptography``, which is *not* a dependency of ``peer-ring-core``: install the
``testing`` extra (``pip install 'peer-ring-core[testing]'``). ``peer_ring.core.testing``
imports this module only when one of its names is used, so the rest of the testing
helpers work without it::

    ca = CertificateAuthority.create("cluster CA")
    files = ca.write_node_files(tmp_path / "node-1", "node-1", ips=("127.0.0.1",))
    transport = GrpcTransport("127.0.0.1:7000", tls=files.config())
    files.write(ca.pem, *ca.issue("node-1-renewed", ips=("127.0.0.1",)))  # a rotation

Keys are ECDSA P-256 (fast to generate); certificates are valid from five minutes ago (a
little clock skew between processes) for an hour (two for the CA).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any, NamedTuple

from peer_ring.core.transport import TLSConfig

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the certificate helpers of peer_ring.core.testing (CertificateAuthority, TLSFiles) "
        "need the 'cryptography' package: pip install 'peer-ring-core[testing]'"
    ) from exc

__all__ = ["CertificateAuthority", "IssuedCertificate", "TLSFiles", "write_file_atomically"]

#: Certificates start this long before "now", so a peer whose clock is a bit behind accepts them.
_BACKDATE = timedelta(minutes=5)
_CA_LIFETIME = timedelta(hours=2)
_LEAF_LIFETIME = timedelta(hours=1)


class IssuedCertificate(NamedTuple):
    """A node's private key and certificate, both PEM; unpacks as ``key_pem, cert_pem``."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def serial_number(self) -> int:
        """The certificate's serial number (to tell which certificate a server presents)."""
        return int(x509.load_pem_x509_certificate(self.cert_pem).serial_number)


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that issues node certificates.

    Attributes:
        name: the CA's common name.
        key: its private key.
        cert: its self-signed certificate.
    """

    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> CertificateAuthority:
        """A new CA with a fresh key, its certificate's subject and issuer being ``CN=name``.

        Args:
            name: the common name of the CA.

        Returns:
            The CA.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, cert)

    @property
    def pem(self) -> bytes:
        """The CA certificate, PEM (what peers trust: a ``ca.crt`` file)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, common_name: str, ips: tuple[str, ...] = (), dns: tuple[str, ...] = ()
    ) -> IssuedCertificate:
        """A node certificate signed by this CA, usable as server and as client certificate.

        Args:
            common_name: the certificate's ``CN``.
            ips: IP addresses (v4 or v6) put in the subject alternative names: a peer dialled
                by IP is verified against them.
            dns: DNS names put in the subject alternative names (e.g. a name shared by all
                nodes, checked through ``TLSConfig.server_name``).

        Returns:
            The new key and certificate (PEM); without ``ips`` and ``dns`` the certificate
            has no subject alternative name at all.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        sans: list[x509.GeneralName] = [x509.IPAddress(ip_address(ip)) for ip in ips]
        sans += [x509.DNSName(name) for name in dns]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _LEAF_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return IssuedCertificate(key_pem, cert.public_bytes(serialization.Encoding.PEM))

    def write_node_files(
        self,
        directory: Path,
        common_name: str,
        ips: tuple[str, ...] = ("127.0.0.1",),
        dns: tuple[str, ...] = (),
    ) -> TLSFiles:
        """Issue a node certificate and write it, its key and this CA to ``directory``.

        Args:
            directory: where the three files go (created if missing).
            common_name: the certificate's ``CN``.
            ips: its IP SANs (by default loopback, where tests run).
            dns: its DNS SANs.

        Returns:
            The files, ready for :meth:`TLSFiles.config`.
        """
        files = TLSFiles(directory)
        files.write(self.pem, *self.issue(common_name, ips=ips, dns=dns))
        return files


def write_file_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` the way a Kubernetes secret volume does: a reader never sees half a file.

    Args:
        path: the file to replace (its directory must exist).
        data: its new content.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class TLSFiles:
    """The three files of one node's TLS material, named as in a cert-manager secret.

    Attributes:
        directory: the folder holding ``ca.crt``, ``tls.crt`` and ``tls.key``.
    """

    directory: Path

    @property
    def ca(self) -> Path:
        """The CA bundle peers are verified against."""
        return self.directory / "ca.crt"

    @property
    def cert(self) -> Path:
        """The node's certificate."""
        return self.directory / "tls.crt"

    @property
    def key(self) -> Path:
        """The node's private key."""
        return self.directory / "tls.key"

    def write(self, ca_pem: bytes, key_pem: bytes, cert_pem: bytes) -> None:
        """Write (or rotate) the three files, each atomically.

        Args:
            ca_pem: the CA bundle (several CAs concatenated during a CA rotation).
            key_pem: the node's private key.
            cert_pem: the node's certificate.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        # Key first, certificate last: a reader that sees the new certificate sees its key.
        write_file_atomically(self.ca, ca_pem)
        write_file_atomically(self.key, key_pem)
        write_file_atomically(self.cert, cert_pem)

    def config(self, **kwargs: Any) -> TLSConfig:
        """A :class:`~peer_ring.core.transport.TLSConfig` reading these files.

        Args:
            **kwargs: further ``TLSConfig`` fields. ``reload_interval`` defaults to 0 here
                (not 1s as in ``TLSConfig``): tests rotate files and expect the very next
                connection to use them.

        Returns:
            The configuration.
        """
        kwargs.setdefault("reload_interval", 0.0)
        return TLSConfig(str(self.ca), str(self.cert), str(self.key), **kwargs)
