"""Parsers of ``peer-ring-kv serve`` setting values: addresses, numbers, sizes, files, secrets.

Each takes the raw ``(text, origin)`` pair of a setting (origin: the flag or the environment
variable it came from) and raises :class:`~peer_ring.kv._serve_options.UsageError` naming it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping

from peer_ring.core import TLSConfig
from peer_ring.kv._http_tls import HttpTLSConfig
from peer_ring.kv._serve_options import HTTP_PORT_OFFSET, UsageError


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 as ``[::1]:8101``) into the host to bind and the port."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_http_address(listen: str, port: int | None = None) -> tuple[str, int]:
    """The HTTP address used when ``--http`` is not given.

    The peer host when it is a loopback address (so that nodes on 127.0.0.1, 127.0.0.2...
    get distinct HTTP addresses), else 127.0.0.1: the HTTP API is for the application next to
    the node (a sidecar), and exposing it beyond the host must be a decision (``--http``).
    The port is ``port`` when given, else the peer port + 1000.

    Raises:
        UsageError: the derived port would be above 65535.
    """
    host, peer_port = split_address(listen)
    http_port = peer_port + HTTP_PORT_OFFSET if port is None else port
    if http_port > 65535:
        raise UsageError(
            f"cannot derive the HTTP port from peer port {peer_port} "
            f"(+{HTTP_PORT_OFFSET} > 65535): "
            "pass --http HOST:PORT"
        )
    return (host if is_loopback(host) else "127.0.0.1"), http_port


def _address(item: tuple[str, str], *, allow_port_zero: bool) -> str:
    text, origin = item
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise UsageError(f"{origin}: {text!r} is not of the form host:port")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise UsageError(f"{origin}: {text!r} has a bad IPv6 host") from None
    elif ":" in host:
        raise UsageError(f"{origin}: write IPv6 hosts in brackets, like [::1]:7101 (got {text!r})")
    lowest = 0 if allow_port_zero else 1
    if not port_text.isdigit() or not lowest <= int(port_text) <= 65535:
        raise UsageError(f"{origin}: {text!r} has an invalid port (expected {lowest}..65535)")
    return text


def _int(item: tuple[str, str] | None, *, minimum: int, default: int) -> int:
    value = _int_or_none(item, minimum=minimum)
    return default if value is None else value


def _int_or_none(item: tuple[str, str] | None, *, minimum: int) -> int | None:
    if item is None:
        return None
    text, origin = item
    try:
        value = int(text.strip())
    except ValueError:
        raise UsageError(f"{origin}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise UsageError(f"{origin}: must be >= {minimum}, got {value}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool(item: tuple[str, str] | None, *, default: bool) -> bool:
    if item is None:
        return default
    text, origin = item
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise UsageError(
        f"{origin}: expected true or false ({'/'.join(_TRUE)} or {'/'.join(_FALSE)}), got {text!r}"
    )


def _seconds(item: tuple[str, str] | None, *, default: float) -> float:
    if item is None:
        return default
    text, origin = item
    try:
        value = float(text.strip())
    except ValueError:
        raise UsageError(f"{origin}: expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{origin}: must be a finite number of seconds > 0, got {text!r}")
    return value


def _seconds_or_off(item: tuple[str, str] | None, *, default: float) -> float | None:
    if item is not None and item[0].strip().lower() in ("off", "none", "never"):
        return None
    return _seconds(item, default=default)


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """Parse ``"1048576"``, ``"512K"``, ``"64MiB"``, ``"1g"``... (suffixes are powers of 1024).

    Raises:
        ValueError: not a size, or zero.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"expected a size like 1048576, 512K or 64MiB, got {text!r}")
    value = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if value <= 0:
        raise ValueError(f"must be > 0, got {text!r}")
    return value


def _size_or_none(item: tuple[str, str] | None) -> int | None:
    if item is None:
        return None
    text, origin = item
    try:
        return parse_size(text)
    except ValueError as exc:
        raise UsageError(f"{origin}: {exc}") from None


def _tls(raw: Mapping[str, tuple[str, str] | None]) -> TLSConfig | None:
    files = {name: raw.get(name) for name in ("tls_ca", "tls_cert", "tls_key")}
    given = {name: item for name, item in files.items() if item is not None}
    server_name = raw.get("tls_server_name")
    if not given:
        if server_name is not None:
            raise UsageError(f"{server_name[1]} needs --tls-ca, --tls-cert and --tls-key")
        return None
    if len(given) < len(files):
        missing = ", ".join(f"--{n.replace('_', '-')}" for n in files if n not in given)
        origins = ", ".join(origin for _, origin in given.values())
        raise UsageError(f"{origins}: mutual TLS needs all three files; missing {missing}")
    paths: dict[str, str] = {}
    for name, (text, origin) in given.items():
        path = text.strip()
        # Checked here so that a typo fails at once with exit status 2, not at the first
        # connection; the files are read (and checked as PEM) again when the node starts.
        if not os.path.isfile(path):
            raise UsageError(f"{origin}: {path!r} is not a file")
        if not os.access(path, os.R_OK):
            raise UsageError(f"{origin}: {path!r} is not readable")
        paths[name] = path
    override = server_name[0].strip() if server_name is not None else None
    if server_name is not None and not override:
        raise UsageError(f"{server_name[1]}: must not be empty")
    return TLSConfig(paths["tls_ca"], paths["tls_cert"], paths["tls_key"], server_name=override)


def _http_tls(raw: Mapping[str, tuple[str, str] | None]) -> HttpTLSConfig | None:
    names = ("http_tls_cert", "http_tls_key", "http_tls_ca")
    given = {name: item for name in names if (item := raw.get(name)) is not None}
    if not given:
        return None
    for name in ("http_tls_cert", "http_tls_key"):
        if name not in given:
            origins = ", ".join(origin for _, origin in given.values())
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{origins}: HTTPS needs --http-tls-cert and --http-tls-key; missing {flag}"
            )
    paths = {name: _readable_file(item) for name, item in given.items()}
    return HttpTLSConfig(
        cert_file=paths["http_tls_cert"],
        key_file=paths["http_tls_key"],
        ca_file=paths.get("http_tls_ca"),
    )


def _readable_file(item: tuple[str, str]) -> str:
    text, origin = item
    path = text.strip()
    # Checked here so that a typo fails at once with exit status 2; the contents are
    # loaded (and checked) when the server starts.
    if not os.path.isfile(path):
        raise UsageError(f"{origin}: {path!r} is not a file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{origin}: {path!r} is not readable")
    return path


def _secret(item: tuple[str, str] | None) -> str | None:
    if item is None:
        return None
    text, origin = item
    if any(c.isspace() for c in text):
        # A token with spaces cannot travel in an `Authorization: Bearer` header; it is
        # almost always a copy-paste accident (a trailing newline from a secret file).
        raise UsageError(f"{origin}: a token cannot contain whitespace")
    return text
