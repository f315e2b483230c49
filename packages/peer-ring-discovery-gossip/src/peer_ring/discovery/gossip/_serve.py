"""``peer-ring-kv serve --discovery gossip``: build a :class:`GossipDiscovery` from options.

Options (``--discovery-option KEY=VALUE``, or ``PEER_RING_DISCOVERY_OPTIONS``):

==================  =====================================================================
``bind``            gossip ``host:port`` (default: the ``--listen`` host, port 7946)
``seeds``           comma-separated gossip addresses to join through (default: none)
``advertise``       gossip address announced to others (default: the bound one)
``cluster``         cluster name; nodes of other clusters are ignored (default ``peer-ring``)
``preset``          ``lan`` (default), ``local`` or ``wan``
``key``             base64 AES key (16, 24 or 32 bytes) encrypting all gossip; also read
                    from ``PEER_RING_GOSSIP_KEY``. ``keys``: extra accepted keys, comma-sep.
``meta.NAME``       a metadata label of this node, e.g. ``meta.zone=eu-1``
``join_timeout``    seconds ``start`` waits for a seed (default 5)
any setting of      e.g. ``probe_interval=0.5``, ``suspicion_mult=4``, ``lifeguard=false``
``GossipConfig``
==================  =====================================================================
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping

from peer_ring.core import InvalidArgumentError
from peer_ring.discovery.gossip._address import DEFAULT_PORT, parse_address
from peer_ring.discovery.gossip._config import GossipConfig
from peer_ring.discovery.gossip._discovery import GossipDiscovery
from peer_ring.discovery.gossip._keyring import Keyring

#: Environment variable with the base64 gossip key (keeps it out of the command line).
ENV_KEY = "PEER_RING_GOSSIP_KEY"

_OWN = ("bind", "seeds", "advertise", "preset", "key", "keys", "join_timeout", "leave_timeout")


def _key(text: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("gossip key must be base64 (e.g. `openssl rand -base64 32`)") from None


def _convert(name: str, kind: object, text: str) -> object:
    if kind in (bool, "bool"):
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"gossip option {name}: expected true or false, got {text!r}")
    try:
        if kind in (int, "int"):
            return int(text)
        if kind in (float, "float"):
            return float(text)
    except ValueError:
        raise ValueError(f"gossip option {name}: not a number: {text!r}") from None
    return text


def _seconds(options: Mapping[str, str], name: str, default: float) -> float:
    if name not in options:
        return default
    value = _convert(name, float, options[name])
    assert isinstance(value, float)
    if not value > 0:
        raise ValueError(f"gossip option {name} must be > 0")
    return value


def from_serve_options(
    listen: str | None, options: Mapping[str, str], environ: Mapping[str, str]
) -> GossipDiscovery:
    """The gossip discovery described by ``--discovery-option`` values (see module docs).

    Args:
        listen: the node's ``--listen`` ``host:port`` (its peer-ring identity).
        options: the ``KEY=VALUE`` options.
        environ: the environment (for ``PEER_RING_GOSSIP_KEY``).

    Raises:
        ValueError: missing ``--listen``, unknown option or bad value (the message says
            which, and lists the valid options).
    """
    if not listen:
        raise ValueError("gossip discovery needs --listen host:port (this node's address)")
    config_fields = {f.name: f.type for f in dataclasses.fields(GossipConfig)}
    valid = sorted({*_OWN, *config_fields, "meta.<name>"})
    changes: dict[str, object] = {}
    metadata: dict[str, str] = {}
    normalized: dict[str, str] = {}
    for raw, value in options.items():
        # `probe-interval` and `probe_interval` are the same option.
        normalized[raw if raw.startswith("meta.") else raw.replace("-", "_")] = value
    options = normalized
    for name, value in options.items():
        if name.startswith("meta.") and len(name) > 5:
            metadata[name[5:]] = value
        elif name in config_fields:
            changes[name] = _convert(name, config_fields[name], value)
        elif name not in _OWN:
            raise ValueError(f"unknown gossip option {name!r}; valid: {', '.join(valid)}")
    try:
        config = GossipConfig.preset(options.get("preset", "lan"), **changes)
        listen_host = parse_address(listen, default_port=None)[0]
        bind = options.get("bind") or f"{listen_host}:{DEFAULT_PORT}"
        seeds = [s for s in options.get("seeds", "").split(",") if s.strip()]
        key_text = options.get("key") or environ.get(ENV_KEY, "")
        keyring = None
        if key_text:
            extra = [_key(k) for k in options.get("keys", "").split(",") if k.strip()]
            keyring = Keyring(_key(key_text), extra)
        elif options.get("keys"):
            raise ValueError(
                "gossip option keys needs a primary key (key=... or $PEER_RING_GOSSIP_KEY)"
            )
        return GossipDiscovery(
            bind,
            seeds,
            self_address=listen,
            metadata=metadata,
            config=config,
            keyring=keyring,
            advertise=options.get("advertise") or None,
            join_timeout=_seconds(options, "join_timeout", 5.0),
            leave_timeout=_seconds(options, "leave_timeout", 1.0),
        )
    except InvalidArgumentError as exc:
        raise ValueError(f"gossip discovery: {exc}") from None
