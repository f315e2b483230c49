"""Shrinking a failing run: switch fault kinds off while the seed still fails."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from peer_ring.core.testing.sim._network import LinkFaults
from peer_ring.core.testing.sim._simulation import SimConfig


def _candidates(config: SimConfig) -> list[tuple[str, SimConfig]]:
    links = config.links
    out: list[tuple[str, SimConfig]] = []
    if config.crashes:
        out.append(("no crashes", dataclasses.replace(config, crashes=False)))
    if config.partitions:
        out.append(("no partitions", dataclasses.replace(config, partitions=False)))
    if links.loss:
        out.append(
            ("no loss", dataclasses.replace(config, links=dataclasses.replace(links, loss=0.0)))
        )
    if links.duplicate:
        out.append(
            (
                "no duplicates",
                dataclasses.replace(config, links=dataclasses.replace(links, duplicate=0.0)),
            )
        )
    if links.max_delay:
        out.append(
            ("no delay", dataclasses.replace(config, links=LinkFaults(links.loss, links.duplicate)))
        )
    if config.max_drift:
        out.append(("no drift", dataclasses.replace(config, max_drift=0.0)))
    if config.max_skew:
        out.append(("no skew", dataclasses.replace(config, max_skew=0.0)))
    if config.duration > 2.0:
        out.append(("half the duration", dataclasses.replace(config, duration=config.duration / 2)))
    if config.nodes > 3:
        out.append(("one node fewer", dataclasses.replace(config, nodes=config.nodes - 1)))
    return out


def shrink(
    config: SimConfig, fails: Callable[[SimConfig], bool], *, budget: int = 40
) -> tuple[SimConfig, list[str]]:
    """The smallest configuration found that still ``fails`` (greedy, like delta debugging).

    Each step tries to switch one fault kind off (or halve the duration, drop a node) and
    keeps the change when the run still fails. The seed stays the same; the run changes
    with the configuration, so what is kept is "this seed, with only these faults, fails".

    Args:
        config: a configuration that fails.
        fails: runs the seed with a configuration; ``True`` when the checker found an error.
        budget: most runs to try.

    Returns:
        The reduced configuration and the reductions applied, in order.
    """
    applied: list[str] = []
    progress = True
    while progress and budget > 0:
        progress = False
        for name, candidate in _candidates(config):
            if budget <= 0:
                break
            budget -= 1
            if fails(candidate):
                config, progress = candidate, True
                applied.append(name)
                break
    return config, applied
