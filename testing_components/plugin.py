"""pytest fixtures of the test components (loaded by the root ``conftest.py``).

* ``docker_engine``: a Docker engine answers, or the test skips (fails in CI).
* ``redis_server``: a :class:`~testing_components.redis.RedisEndpoint`, from the binary or
  a container as ``PEER_RING_COMPONENTS`` says (session-scoped: one server per run; tests
  use their own keys, or call ``FLUSHALL`` themselves).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from testing_components._docker import docker_status, remove_stale_containers
from testing_components._mode import COMPONENTS_ENV, components_mode
from testing_components.redis import (
    INSTALL_HINT,
    RedisEndpoint,
    redis_binary,
    redis_via_binary,
    redis_via_container,
)

RequireComponent = Callable[..., None]


@pytest.fixture(scope="session")
def docker_engine(require_component: RequireComponent) -> str:
    """The running Docker engine's description; skips (fails in CI) when none answers."""
    available, what = docker_status()
    require_component("docker engine", available, what)
    remove_stale_containers()
    return what


@pytest.fixture(scope="session")
def redis_server(require_component: RequireComponent) -> Iterator[RedisEndpoint]:
    """A real Redis server on a free loopback port, for the whole session."""
    mode = components_mode()
    if mode == "auto":
        # Prefer the binary (fast, no engine needed); a container when there is none.
        if redis_binary() is not None:
            mode = "binary"
        else:
            available, what = docker_status()
            require_component(
                "redis-server",
                available,
                f"neither the binary ({INSTALL_HINT}) nor a container ({what})",
            )
            mode = "container"
    if mode == "binary":
        require_component(
            "redis-server", redis_binary() is not None, f"{INSTALL_HINT}; {COMPONENTS_ENV}=binary"
        )
        with redis_via_binary() as endpoint:
            yield endpoint
    else:
        available, what = docker_status()
        require_component("docker engine", available, f"{what}; {COMPONENTS_ENV}=container")
        remove_stale_containers()
        with redis_via_container() as endpoint:
            yield endpoint
