"""The container layer of the test components (testing_components/) on a real Docker engine.

Needs a Docker engine and the images of ``tools/docker-test-env``; skips without one on a
laptop and fails in CI (``docker_engine`` fixture). Run by ``.ci/run``'s container step.
"""

from __future__ import annotations

import contextlib
import os
import socket

import docker  # type: ignore[import-untyped]
import pytest

from testing_components import REDIS_IMAGE, ContainerNotReadyError, run_container
from testing_components._docker import NAME_PREFIX, remove_stale_containers
from testing_components.redis import redis_via_container


def _leftovers(name: str) -> list[str]:
    """Containers (running or not) of this process whose name starts with ``name``."""
    client = docker.from_env(timeout=10)
    try:
        prefix = f"{NAME_PREFIX}-{name}-{os.getpid()}-"
        # The list call's own names (no inspect per container): a container that another
        # process removes meanwhile cannot fail the listing with NotFound.
        names = [n.lstrip("/") for c in client.api.containers(all=True) for n in c["Names"]]
        return [n for n in names if n.startswith(prefix)]
    finally:
        client.close()


def test_redis_container_serves_on_loopback_and_is_removed(docker_engine: str) -> None:
    # Another test's session-scoped Redis container of this process may be running (the
    # order is shuffled): count only the containers this test adds.
    before = set(_leftovers("redis"))
    with redis_via_container() as endpoint:
        assert endpoint.via == "container"
        assert endpoint.version.startswith("7.")
        with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(64) == b"+PONG\r\n"
        assert len(set(_leftovers("redis")) - before) == 1
    assert set(_leftovers("redis")) - before == set()


def test_not_ready_within_deadline_fails_with_log_tail(docker_engine: str) -> None:
    script = "echo peer-ring-marker-line; sleep 60"
    with (
        pytest.raises(ContainerNotReadyError, match=r"not ready within 2s(.|\n)*marker-line"),
        run_container(
            REDIS_IMAGE, ["sh", "-c", script], ready=lambda: False, deadline=2, name="slow"
        ),
    ):
        pass  # pragma: no cover - never ready
    assert _leftovers("slow") == []


def test_exited_container_fails_at_once_with_status_and_log(docker_engine: str) -> None:
    script = "echo cannot-start-here >&2; exit 3"
    with (
        pytest.raises(ContainerNotReadyError, match=r"exited with status 3(.|\n)*cannot-start"),
        run_container(
            REDIS_IMAGE, ["sh", "-c", script], ready=lambda: False, deadline=60, name="dies"
        ),
    ):
        pass  # pragma: no cover - never ready
    assert _leftovers("dies") == []


def test_container_is_removed_when_the_test_body_fails(docker_engine: str) -> None:
    class BodyFailed(Exception):
        pass

    with (
        pytest.raises(BodyFailed),
        run_container(
            REDIS_IMAGE, ["sleep", "60"], ready=lambda: True, deadline=5, name="bodyfails"
        ),
    ):
        assert len(_leftovers("bodyfails")) == 1
        raise BodyFailed
    assert _leftovers("bodyfails") == []


def test_missing_image_says_how_to_get_it(docker_engine: str) -> None:
    with (
        pytest.raises(RuntimeError, match="tools/docker-test-env"),
        run_container(
            "peer-ring-no-such-image:never",
            None,
            ready=lambda: True,
            deadline=5,
            name="noimage",
        ),
    ):
        pass  # pragma: no cover
    assert _leftovers("noimage") == []


def test_containers_of_dead_runs_are_swept(docker_engine: str) -> None:
    dead = _dead_pid()
    stale = f"{NAME_PREFIX}-stale-{dead}-000000"
    live = f"{NAME_PREFIX}-stale-{os.getpid()}-000000"
    client = docker.from_env(timeout=30)
    try:
        for name in (stale, live):
            client.containers.create(REDIS_IMAGE, ["true"], name=name, network="host")
        try:
            assert remove_stale_containers() == [stale]
            assert _leftovers("stale") == [live]  # this process is alive: kept
        finally:
            for name in (stale, live):
                with contextlib.suppress(docker.errors.NotFound):
                    client.containers.get(name).remove(force=True)
    finally:
        client.close()


def _dead_pid() -> int:
    """A pid that no process has right now."""
    for pid in range(4_000_000, 3_000_000, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("no free pid found")  # pragma: no cover
