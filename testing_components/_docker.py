"""Containers for tests: testcontainers on host networking, no reaper, always removed."""

from __future__ import annotations

import os
import re
import shlex
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING

# The reaper (Ryuk) is a container too, whose image cannot be pulled where no registry is
# reachable; every container here is removed by the context manager that started it instead.
# Set before testcontainers is imported: it reads its configuration once, at import.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

#: Where the images come from when no registry is reachable.
PREPARE_HINT = "run `tools/docker-test-env` (installs docker.io, starts dockerd, builds images)"
#: Names of every container this layer starts (``docker ps -a --filter name=peer-ring-test``).
NAME_PREFIX = "peer-ring-test"
_POLL = 0.1


class ContainerNotReadyError(RuntimeError):
    """A container exited, or was not ready within its deadline; carries its last log lines."""


@cache
def docker_status() -> tuple[bool, str]:
    """Whether a Docker engine answers here, and what it is (or why not).

    Cached for the process: the answer is asked once per test session.
    """
    try:
        import docker  # type: ignore[import-untyped]
        from docker.errors import DockerException  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - requirements-dev.txt installs it
        return False, f"the docker Python package is missing ({exc}); pip install testcontainers"
    # Knock first without docker-py: when no engine answers, docker-py raises from inside its
    # client's constructor and leaves that client's socket unclosed (a ResourceWarning later,
    # in some other test, where warnings are errors).
    problem = _knock()
    if problem is not None:
        return False, f"no Docker engine answers ({problem}); {PREPARE_HINT}"
    try:
        client = docker.from_env(timeout=10)
    except DockerException as exc:
        return False, f"no Docker engine answers ({_first_line(exc)}); {PREPARE_HINT}"
    try:
        client.ping()
        version = client.version().get("Version", "?")
    except (DockerException, OSError) as exc:
        return False, f"no Docker engine answers ({_first_line(exc)}); {PREPARE_HINT}"
    finally:
        client.close()
    return True, f"Docker engine {version}"


def remove_stale_containers() -> list[str]:
    """Remove containers of this layer left by test runs that died (SIGKILL, power loss).

    Names carry the pid of the process that started them (``peer-ring-test-<name>-<pid>-...``);
    a container whose process is gone is removed. Returns the names removed.
    """
    import docker
    from docker.errors import DockerException

    removed: list[str] = []
    client = docker.from_env(timeout=30)
    try:
        for container in client.containers.list(all=True, filters={"name": NAME_PREFIX}):
            match = _NAME_PID.match(container.name)
            if match is None or _alive(int(match.group(1))):
                continue
            try:
                container.remove(force=True, v=True)
                removed.append(container.name)
            except DockerException:  # removed meanwhile by another run's sweep
                pass
    finally:
        client.close()
    return removed


_NAME_PID = re.compile(rf"^{NAME_PREFIX}-[^-]+-(\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _knock() -> str | None:
    """Connect to the engine's socket (``DOCKER_HOST`` or the default); the problem, or None.

    Only plain ``unix://`` and ``tcp://`` endpoints are checked here; others (ssh, ...) are
    left to docker-py.
    """
    host = os.environ.get("DOCKER_HOST", "") or "unix:///var/run/docker.sock"
    try:
        if host.startswith("unix://"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(host.removeprefix("unix://"))
        elif host.startswith("tcp://"):
            address, _, port = host.removeprefix("tcp://").rstrip("/").rpartition(":")
            socket.create_connection((address, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        return f"{host}: {exc}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def container_name(name: str) -> str:
    """``peer-ring-test-<name>-<pid>-<random>``: unique, and sweepable once this process is gone.

    Raises:
        ValueError: ``name`` is empty or has a ``-`` (the pid must stay the third field).
    """
    if not name or "-" in name:
        raise ValueError(f"container name part must be non-empty without '-': {name!r}")
    return f"{NAME_PREFIX}-{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _log_tail(container: DockerContainer, lines: int) -> str:
    try:
        out, err = container.get_logs()
    except Exception as exc:  # the container may already be gone
        return f"(no log: {_first_line(exc)})"
    text = (out + err).decode(errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@contextmanager
def run_container(
    image: str,
    command: Sequence[str] | None,
    *,
    ready: Callable[[], bool],
    deadline: float,
    name: str,
    environment: dict[str, str] | None = None,
    log_lines: int = 30,
) -> Iterator[DockerContainer]:
    """Start ``image`` on host networking, wait until ``ready()``, remove it afterwards.

    The container is removed (``docker rm -f``) when the block ends, also when the test or
    the readiness wait fails. The caller chooses free loopback ports and passes them in
    ``command`` or ``environment``: with host networking nothing is published.

    Args:
        image: A local image; pulled when missing (possible only where a registry answers).
        command: The container's command (``None``: the image's default).
        ready: Polled every 0.1 s until it returns true; must not block for long.
        deadline: Seconds to wait for ``ready()``.
        name: A short name; the container is called ``peer-ring-test-<name>-<random>``.
        environment: Extra environment variables.
        log_lines: How many log lines a :class:`ContainerNotReadyError` carries.

    Raises:
        ContainerNotReadyError: the container exited or was not ready within ``deadline``.
        RuntimeError: the image is missing and cannot be pulled.
    """
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.exceptions import ContainerStartException

    testcontainers_config.ryuk_disabled = True  # also when the variable was set to false
    full_name = container_name(name)
    container = DockerContainer(
        image,
        command=shlex.join(command) if command is not None else None,
        env=environment or {},
        name=full_name,
    ).with_kwargs(network="host")
    _ensure_image(image)
    try:
        container.start()
        _wait_ready(container, full_name, ready, deadline, log_lines)
        yield container
    finally:
        # stop() is `docker rm -f -v`; a container that never got created has nothing to remove.
        try:
            container.get_wrapped_container()
        except ContainerStartException:
            container.get_docker_client().client.close()
        else:
            container.stop()


def _ensure_image(image: str) -> None:
    """Pull ``image`` when it is not local; a clear error when that is impossible."""
    import docker
    from docker.errors import DockerException, ImageNotFound

    client = docker.from_env(timeout=120)
    try:
        try:
            client.images.get(image)
        except ImageNotFound:
            client.images.pull(image)
    except DockerException as exc:
        raise RuntimeError(
            f"image {image} is not here and cannot be pulled ({_first_line(exc)}); {PREPARE_HINT}"
        ) from exc
    finally:
        client.close()


def _wait_ready(
    container: DockerContainer,
    name: str,
    ready: Callable[[], bool],
    deadline: float,
    log_lines: int,
) -> None:
    wrapped = container.get_wrapped_container()
    limit = time.monotonic() + deadline
    # Bounded twice: by the deadline, and by a poll count derived from it.
    for _ in range(int(deadline / _POLL) + 2):
        if ready():
            return
        wrapped.reload()
        if wrapped.status in ("exited", "dead"):
            code = wrapped.attrs.get("State", {}).get("ExitCode")
            raise ContainerNotReadyError(
                f"container {name} ({container.image}) exited with status {code} before it "
                f"was ready; last {log_lines} log lines:\n{_log_tail(container, log_lines)}"
            )
        if time.monotonic() >= limit:
            break
        time.sleep(_POLL)
    raise ContainerNotReadyError(
        f"container {name} ({container.image}) not ready within {deadline:g}s; "
        f"last {log_lines} log lines:\n{_log_tail(container, log_lines)}"
    )
