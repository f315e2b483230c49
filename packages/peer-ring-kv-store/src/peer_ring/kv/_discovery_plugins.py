"""Discovery modules that ``peer-ring-kv serve`` finds by name, through entry points.

``static`` and ``kubernetes`` are built in. Every other discovery package (etcd, ZooKeeper,
gossip...) plugs in without this package knowing it, the way third-party storages plug into
the ``limits`` library: it declares an entry point in the group :data:`ENTRY_POINT_GROUP`::

    [project.entry-points."peer_ring.discovery"]
    etcd = "peer_ring.discovery.etcd:from_serve_options"

whose target is a :data:`DiscoveryFactory`. ``serve --discovery etcd --discovery-option
endpoints=127.0.0.1:2379`` then calls ``from_serve_options(listen, {"endpoints": ...},
environ)``. The factory only builds the object (no I/O); reaching the registry is the job
of ``Discovery.start()``, so an unreachable registry fails the node's start, not parsing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points

from peer_ring.core import Discovery

#: The entry-point group discovery packages register their factory in.
ENTRY_POINT_GROUP = "peer_ring.discovery"

#: Discovery kinds handled by ``serve`` itself.
BUILTIN_DISCOVERIES = ("static", "kubernetes")

#: ``factory(listen, options, environ) -> Discovery``: ``listen`` is the ``--listen`` address
#: (``None`` when not given), ``options`` the ``--discovery-option`` pairs, ``environ`` the
#: process environment. Raises ``ValueError`` with a user-facing message on bad options.
DiscoveryFactory = Callable[[str | None, Mapping[str, str], Mapping[str, str]], Discovery]


def plugin_entry_points() -> dict[str, EntryPoint]:
    """Installed discovery plugins by name (built-in names are never overridden)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in BUILTIN_DISCOVERIES:
            found.setdefault(ep.name, ep)
    return found


def available_discoveries() -> tuple[str, ...]:
    """Every name ``--discovery`` accepts on this installation, built-ins first."""
    return BUILTIN_DISCOVERIES + tuple(sorted(plugin_entry_points()))


def load_factory(name: str) -> DiscoveryFactory:
    """The factory registered under ``name``.

    Raises:
        LookupError: no installed package registers ``name``.
        ImportError: the package is installed but its module cannot be imported.
        TypeError: the entry point does not name a callable.
    """
    ep = plugin_entry_points().get(name)
    if ep is None:
        raise LookupError(name)
    factory = ep.load()
    if not callable(factory):
        raise TypeError(f"entry point {ep.value!r} of discovery {name!r} is not callable")
    return factory  # type: ignore[no-any-return]


def parse_options(items: list[tuple[str, str]]) -> dict[str, str]:
    """Turn ``KEY=VALUE`` texts (with where each came from) into a mapping.

    Args:
        items: ``(text, origin)`` pairs; ``text`` may hold several whitespace-separated
            ``KEY=VALUE`` words (the environment variable form).

    Raises:
        ValueError: a word without ``=``, an empty key, or a key given twice.
    """
    options: dict[str, str] = {}
    for text, origin in items:
        for word in text.split():
            key, sep, value = word.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"{origin}: expected KEY=VALUE, got {word!r}")
            if key in options:
                raise ValueError(f"{origin}: option {key!r} given twice")
            options[key] = value
    return options
