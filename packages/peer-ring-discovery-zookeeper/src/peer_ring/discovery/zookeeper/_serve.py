"""``from_serve_options``: how ``peer-ring-kv serve --discovery zookeeper`` builds discovery."""

from __future__ import annotations

from collections.abc import Mapping

from peer_ring.discovery.zookeeper._discovery import DEFAULT_PATH, ZooKeeperDiscovery

#: Environment variable read when the ``hosts`` option is not given.
ENV_HOSTS = "PEER_RING_ZOOKEEPER_HOSTS"
#: Environment variable read when the ``digest`` option is not given (keeps the password
#: off the command line, where ``ps`` shows it).
ENV_DIGEST = "PEER_RING_ZOOKEEPER_DIGEST"

# Option -> constructor keyword, for the options that are seconds.
_SECONDS = {
    "session-timeout": "session_timeout",
    "startup-timeout": "startup_timeout",
    "request-timeout": "request_timeout",
    "reconnect-max-delay": "reconnect_max_delay",
}
_KEYS = ("hosts", "path", "address", "digest", *_SECONDS)
_META = "meta."


def from_serve_options(
    listen: str | None, options: Mapping[str, str], environ: Mapping[str, str]
) -> ZooKeeperDiscovery:
    """Build :class:`ZooKeeperDiscovery` from ``--discovery-option KEY=VALUE`` settings.

    Options: ``hosts`` (required, or ``$PEER_RING_ZOOKEEPER_HOSTS``), ``path`` (default
    ``/peer-ring/members``), ``address`` (default: ``--listen``), ``session-timeout``,
    ``startup-timeout``, ``request-timeout``, ``reconnect-max-delay`` (seconds),
    ``digest`` (``user:password``, or ``$PEER_RING_ZOOKEEPER_DIGEST``), and
    ``meta.KEY=VALUE`` for this node's metadata (``meta.zone=eu-1a``). No I/O here:
    ``start()`` connects.

    Args:
        listen: the ``--listen`` address (this node's identity), or None.
        options: the ``--discovery-option`` pairs.
        environ: the process environment.

    Raises:
        ValueError: an unknown option (the message names the valid ones), a missing
            ``hosts`` or address, a malformed value.
    """
    unknown = sorted(k for k in options if k not in _KEYS and not k.startswith(_META))
    if unknown:
        raise ValueError(
            f"unknown option {', '.join(unknown)}; valid: {', '.join(_KEYS)}, meta.<key>"
        )
    hosts = (options.get("hosts") or environ.get(ENV_HOSTS, "")).strip()
    if not hosts:
        raise ValueError(
            f"hosts is required: --discovery-option hosts=zk1:2181,zk2:2181 (or {ENV_HOSTS})"
        )
    address = (options.get("address") or listen or "").strip()
    if not address:
        raise ValueError(
            "this node's address is unknown: give --listen HOST:PORT or "
            "--discovery-option address=HOST:PORT"
        )
    seconds: dict[str, float] = {}
    for option, keyword in _SECONDS.items():
        if option in options:
            text = options[option]
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not value > 0:
                raise ValueError(f"{option}={text!r}: expected a number of seconds > 0")
            seconds[keyword] = value
    metadata = {k[len(_META) :]: v for k, v in options.items() if k.startswith(_META)}
    if "" in metadata:
        raise ValueError("meta.=...: the metadata key is empty (use meta.zone=eu-1a)")
    # InvalidArgumentError (bad path, address...) is a ValueError: serve reports it as is.
    return ZooKeeperDiscovery(
        hosts,
        address,
        path=options.get("path") or DEFAULT_PATH,
        metadata=metadata,
        session_timeout=seconds.get("session_timeout", 10.0),
        startup_timeout=seconds.get("startup_timeout", 10.0),
        request_timeout=seconds.get("request_timeout", 10.0),
        reconnect_max_delay=seconds.get("reconnect_max_delay", 1.0),
        digest=(options.get("digest") or environ.get(ENV_DIGEST, "")).strip() or None,
    )
