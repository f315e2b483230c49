"""``peer-ring-kv serve --discovery etcd --discovery-option KEY=VALUE ...``.

The entry point ``peer_ring.discovery: etcd`` names :func:`from_serve_options`. It only
parses (no I/O): an unreachable etcd fails ``start()``, with the endpoint in the message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from peer_ring.core import InvalidArgumentError
from peer_ring.discovery.etcd._discovery import DEFAULT_TTL, EtcdDiscovery
from peer_ring.discovery.etcd._members import DEFAULT_PREFIX

#: Environment variable read for an option not given on the command line:
#: ``PEER_RING_ETCD_<OPTION>`` (``PEER_RING_ETCD_ENDPOINTS``, ``PEER_RING_ETCD_PASSWORD``...).
ENV_PREFIX = "PEER_RING_ETCD_"


def _int(text: str) -> int:
    return int(text)


def _float(text: str) -> float:
    return float(text)


def _metadata(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE[,KEY=VALUE...], got {item!r}")
        result[key.strip()] = value.strip()
    return result


# option -> (constructor argument, parser, help)
_OPTIONS: dict[str, tuple[str, Callable[[str], object], str]] = {
    "endpoints": ("endpoints", str, "comma-separated host:port (default 127.0.0.1:2379)"),
    "prefix": ("prefix", str, f"key prefix of this cluster (default {DEFAULT_PREFIX})"),
    "ttl": ("ttl", _int, f"lease TTL in seconds (default {DEFAULT_TTL})"),
    "keepalive-timeout": ("keepalive_timeout", _float, "deadline of each keep-alive (2)"),
    "request-timeout": ("request_timeout", _float, "deadline of other calls (5)"),
    "startup-timeout": ("startup_timeout", _float, "how long start() retries etcd (10)"),
    "resync-interval": ("resync_interval", _float, "re-list after this quiet time (15)"),
    "metadata": ("metadata", _metadata, "this node's labels, k=v[,k=v...]"),
    "username": ("username", str, "etcd user (authentication on)"),
    "password": ("password", str, "that user's password (prefer PEER_RING_ETCD_PASSWORD)"),
    "address": ("self_address", str, "this node's address when --listen is not given"),
}


def option_help() -> str:
    """One line per option, for error messages and documentation."""
    return "\n".join(f"  {name}: {text}" for name, (_, _, text) in _OPTIONS.items())


def from_serve_options(
    listen: str | None, options: Mapping[str, str], environ: Mapping[str, str]
) -> EtcdDiscovery:
    """Build an :class:`EtcdDiscovery` from ``serve``'s ``--discovery-option`` pairs.

    Args:
        listen: the ``--listen`` ``host:port`` (this node's identity), or None.
        options: ``--discovery-option`` pairs; see :func:`option_help`. An option not given
            is read from ``PEER_RING_ETCD_<OPTION>`` (upper case, ``-`` as ``_``).
            ``meta.KEY=VALUE`` adds one metadata label (as with the ZooKeeper discovery).
        environ: the process environment.

    Raises:
        ValueError: an unknown option (the message lists the valid ones), a malformed
            value, or no address for this node.
    """
    meta = {k.removeprefix("meta."): v for k, v in options.items() if k.startswith("meta.")}
    if "" in meta:
        raise ValueError("option 'meta.' needs a key: meta.zone=eu-1a")
    options = {k: v for k, v in options.items() if not k.startswith("meta.")}
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)}; valid options: "
            f"{', '.join(_OPTIONS)}, meta.KEY"
        )
    kwargs: dict[str, object] = {}
    for name, (argument, parse, _) in _OPTIONS.items():
        env_name = ENV_PREFIX + name.upper().replace("-", "_")
        text = options.get(name, environ.get(env_name))
        if text is None or not text.strip():
            continue
        try:
            kwargs[argument] = parse(text.strip())
        except ValueError as error:
            raise ValueError(f"option {name}={text!r}: {error}") from None
    if meta:
        metadata = kwargs.get("metadata")
        kwargs["metadata"] = {**(metadata if isinstance(metadata, dict) else {}), **meta}
    address = kwargs.pop("self_address", None) or listen
    if not address:
        raise ValueError(
            "etcd discovery needs this node's address: pass --listen HOST:PORT "
            "(or --discovery-option address=HOST:PORT)"
        )
    host = str(address).rpartition(":")[0].strip("[]")
    if host in ("0.0.0.0", "::", ""):
        raise ValueError(
            f"{address} is a wildcard address; peers need one they can reach: pass "
            "--discovery-option address=HOST:PORT"
        )
    try:
        return EtcdDiscovery(self_address=str(address), **kwargs)  # type: ignore[arg-type]
    except InvalidArgumentError as error:
        raise ValueError(str(error)) from None
