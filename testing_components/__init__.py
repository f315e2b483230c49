"""Test components shared by every package's tests: real servers, from a binary or a container.

A test component (Redis today; ZooKeeper and etcd can follow the same pattern) is started
either from a **binary** found on ``PATH`` (what ``.ci/run`` installs with apt) or from a
**container** (testcontainers, on a local Docker engine: what a contributor on a laptop with
Docker and no apt uses). ``PEER_RING_COMPONENTS`` chooses:

* ``auto`` (default): the binary when present, else a container when Docker answers;
* ``binary``: only the binary;
* ``container``: only a container (CI runs the component tests once this way too).

Containers use host networking on a free loopback port, the testcontainers reaper (Ryuk) is
disabled -- its image cannot be pulled where no registry is reachable -- and every container
is removed by the code that started it, also when a test fails. A component that is not
ready within its deadline fails with the last lines of its log.

The pytest fixtures are in :mod:`testing_components.plugin`, which the root ``conftest.py``
loads for every test under the repository.
"""

from __future__ import annotations

from testing_components._docker import (
    ContainerNotReadyError,
    docker_status,
    run_container,
)
from testing_components._mode import COMPONENTS_ENV, ComponentsMode, components_mode
from testing_components.redis import (
    REDIS_IMAGE,
    RedisEndpoint,
    redis_binary,
    redis_via_binary,
    redis_via_container,
)

__all__ = [
    "COMPONENTS_ENV",
    "REDIS_IMAGE",
    "ComponentsMode",
    "ContainerNotReadyError",
    "RedisEndpoint",
    "components_mode",
    "docker_status",
    "redis_binary",
    "redis_via_binary",
    "redis_via_container",
    "run_container",
]
