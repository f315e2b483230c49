"""Turning validated ``peer-ring-kv serve`` settings into a discovery module and a store.

The only place of the ``serve`` configuration that imports the store and discovery packages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from peer_ring.core import Discovery, InvalidArgumentError
from peer_ring.kv._discovery_plugins import BUILTIN_DISCOVERIES, load_factory
from peer_ring.kv._serve_options import UsageError
from peer_ring.kv._serve_values import split_address

if TYPE_CHECKING:
    from peer_ring.kv import KVStore
    from peer_ring.kv._serve_config import ServeConfig


def build_discovery(config: ServeConfig, environ: Mapping[str, str] | None = None) -> Discovery:
    """The discovery module that ``config`` names.

    Args:
        config: the validated settings.
        environ: the environment Kubernetes discovery and plugins read (``POD_IP``...);
            default ``os.environ``.

    Raises:
        UsageError: Kubernetes discovery is asked for but not installed, misconfigured,
            or it disagrees with ``--listen``; a discovery plugin refuses its options or
            cannot be loaded.
    """
    if config.discovery not in BUILTIN_DISCOVERIES:
        return _plugin_discovery(config, os.environ if environ is None else environ)
    if config.discovery == "kubernetes":
        try:
            from peer_ring.discovery.k8s import (  # type: ignore[attr-defined,unused-ignore]
                KubernetesDiscovery,
            )
        except ImportError as exc:
            raise UsageError(
                "--discovery kubernetes needs the peer-ring-discovery-k8s package "
                f"(pip install peer-ring-discovery-k8s): {exc}"
            ) from None
        # The pod IP comes from the environment (downward API); --listen, when given,
        # supplies the port and must name the same host.
        port = split_address(config.listen)[1] if config.listen is not None else None
        try:
            discovery: Discovery = KubernetesDiscovery.from_env(port=port, environ=environ)
        except InvalidArgumentError as exc:
            raise UsageError(f"kubernetes discovery: {exc}") from None
        if config.listen is not None and discovery.self_address != config.listen:
            raise UsageError(
                f"--listen {config.listen} differs from the address Kubernetes discovery "
                f"publishes for this pod ({discovery.self_address}); drop --listen or make "
                "them agree"
            )
        return discovery
    from peer_ring.discovery.static import FileDiscovery, StaticDiscovery

    assert config.listen is not None  # checked by _validate for static discovery
    if config.peers_file is not None:
        try:
            return FileDiscovery(config.peers_file, self_address=config.listen)
        except InvalidArgumentError as exc:
            raise UsageError(f"--peers-file: {exc}") from None
    peers = list(config.peers) or [config.listen]
    return StaticDiscovery(peers, self_address=config.listen)


def _plugin_discovery(config: ServeConfig, environ: Mapping[str, str]) -> Discovery:
    name = config.discovery
    try:
        factory = load_factory(name)
    except LookupError:
        raise UsageError(f"--discovery {name}: no installed package provides it") from None
    except Exception as exc:  # a broken plugin: say which and why, do not crash
        raise UsageError(f"--discovery {name}: cannot load its package: {exc}") from None
    try:
        discovery = factory(config.listen, dict(config.discovery_options), environ)
    except ValueError as exc:
        raise UsageError(f"{name} discovery: {exc}") from None
    if not isinstance(discovery, Discovery):
        raise UsageError(f"{name} discovery: its factory returned {type(discovery).__name__}")
    if config.listen is not None and discovery.self_address != config.listen:
        raise UsageError(
            f"--listen {config.listen} differs from the address {name} discovery publishes "
            f"for this node ({discovery.self_address})"
        )
    return discovery


def build_store(config: ServeConfig, discovery: Discovery | None = None) -> KVStore:
    """The :class:`~peer_ring.kv.KVStore` that ``config`` describes (not started).

    Raises:
        UsageError: a TLS file is not usable (not PEM, say).
    """
    from peer_ring.kv import KVStore

    discovery = discovery if discovery is not None else build_discovery(config)
    peer = config.peer_config()
    try:
        return KVStore(
            discovery,
            replication=config.replication,
            quorum=config.quorum,
            max_bytes=config.max_bytes,
            max_value_bytes=config.max_value_bytes,
            config=peer,
        )
    except InvalidArgumentError as exc:
        if config.tls is None:
            raise
        raise UsageError(f"--tls-*: {exc}") from None
