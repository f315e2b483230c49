"""The ``kind`` driver: the Deployment of ``deploy/`` on a kind cluster, driven by kubectl.

Used by the kind workflow (``.github/workflows/e2e-kind.yml``), which creates the cluster,
loads the image, applies ``deploy/`` in ``$PEER_RING_E2E_NAMESPACE`` and runs
``pytest e2e -m e2e`` with ``PEER_RING_E2E_DRIVER=kind``. It does not run on the development
machines (no Docker engine there): the local driver covers the same scenarios.

Mapping of the driver contract (:mod:`e2e.drivers.base`) onto Kubernetes:

* nodes are the Deployment's pods (named by their pod name); a node's identity is
  ``<pod IP>:7101`` (what Kubernetes discovery publishes), its HTTP API is reached through a
  ``kubectl port-forward`` per pod (the sidecar binds its API to the pod's loopback);
* :meth:`start` scales the Deployment to 0, then to ``count`` (every pod starts at once);
* :meth:`kill` is a real ``kill -9`` of the node process, from the kind node container
  (``docker exec <node> crictl inspect`` gives its host pid); then the pod is deleted with
  the Deployment scaled down by one (the pod gets ``pod-deletion-cost`` -1e6 so the
  ReplicaSet removes that one), so it stays dead like a local killed process instead of
  being restarted by the kubelet;
* :meth:`restart` and :meth:`add_node` scale up by one and return the *new* pod's name (a
  restarted node on Kubernetes is a new pod with a new IP: a new identity in the ring);
  a graceful restart deletes the pod normally (preStop, then SIGTERM: the node leaves);
* :meth:`remove_node` scales down by one, choosing the pod the same way (graceful);
* :meth:`pause` / :meth:`resume` send SIGSTOP / SIGCONT to the node process (crictl pid);
* :meth:`partition` adds DROP rules for the pod IP's peer traffic to the FORWARD chain
  (through a chain of ours) of the kind node hosting the pod: with kindnet, all traffic of a
  pod, to pods on the same or other nodes, is routed through its node's FORWARD chain.

Environment: ``PEER_RING_E2E_NAMESPACE`` (default ``peer-ring``),
``PEER_RING_E2E_DEPLOYMENT`` (``peer-ring-kv``), ``PEER_RING_E2E_CONTAINER``
(``peer-ring``), ``PEER_RING_E2E_IMAGE`` (when set, the Deployment must run this image).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from e2e.drivers.base import (
    Capability,
    ClusterDriver,
    DriverError,
    Endpoint,
    StopResult,
)

logger = logging.getLogger(__name__)

PEER_PORT = 7101
HTTP_PORT = 8080
LABEL = "app.kubernetes.io/name=peer-ring-kv"
CHAIN = "PEER_RING_E2E"
_FORWARDING = re.compile(rb"Forwarding from 127\.0\.0\.1:(\d+)")
_POLL = 0.5


async def _run(*argv: str, timeout: float = 120.0, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise DriverError(f"{' '.join(argv)}: no answer within {timeout:g}s") from None
    text = out.decode(errors="replace")
    if check and process.returncode != 0:
        raise DriverError(f"{' '.join(argv)} failed ({process.returncode}): {text.strip()}")
    return text


@dataclass(slots=True)
class _Pod:
    name: str
    ip: str
    node: str  # the kind node (a docker container of the same name)
    forward: asyncio.subprocess.Process | None = None
    local_port: int = 0


class KindDriver(ClusterDriver):
    """The Deployment on a kind cluster (see the module docs).

    Args:
        namespace: where ``deploy/`` is applied.
        deployment: the Deployment's name.
        container: the peer-ring container (a native sidecar, in ``initContainers``).
        image: when given, the image the Deployment must run (checked at start).
        capacity: most pods a scenario asks for (informational).
    """

    name = "kind"

    def __init__(
        self,
        namespace: str,
        *,
        deployment: str = "peer-ring-kv",
        container: str = "peer-ring",
        image: str | None = None,
        capacity: int = 5,
    ) -> None:
        self.namespace = namespace
        self.deployment = deployment
        self.container = container
        self.image = image
        self.capacity = capacity
        self._pods: dict[str, _Pod] = {}
        self._order: list[str] = []
        self._paused: set[str] = set()
        self._killed: set[str] = set()
        self._isolated: dict[str, _Pod] = {}
        self._session: aiohttp.ClientSession | None = None
        caps = {Capability.KILL, Capability.RESTART, Capability.SCALE}
        if shutil.which("docker") is not None:
            caps |= {Capability.PAUSE, Capability.PARTITION}
        self.capabilities = frozenset(caps)

    @classmethod
    def from_env(cls, *, capacity: int = 5) -> KindDriver:
        """A driver configured from the ``PEER_RING_E2E_*`` variables (module docs)."""
        env = os.environ
        return cls(
            env.get("PEER_RING_E2E_NAMESPACE", "peer-ring"),
            deployment=env.get("PEER_RING_E2E_DEPLOYMENT", "peer-ring-kv"),
            container=env.get("PEER_RING_E2E_CONTAINER", "peer-ring"),
            image=env.get("PEER_RING_E2E_IMAGE") or None,
            capacity=capacity,
        )

    # -- kubectl -----------------------------------------------------------------------------

    async def _kubectl(self, *args: str, timeout: float = 120.0, check: bool = True) -> str:
        return await _run("kubectl", "-n", self.namespace, *args, timeout=timeout, check=check)

    async def _replicas(self) -> int:
        out = await self._kubectl(
            "get", "deployment", self.deployment, "-o", "jsonpath={.spec.replicas}"
        )
        return int(out.strip() or 0)

    async def _scale(self, replicas: int) -> None:
        await self._kubectl("scale", f"deployment/{self.deployment}", f"--replicas={replicas}")

    async def _list_pods(self) -> list[dict[str, Any]]:
        out = await self._kubectl("get", "pods", "-l", LABEL, "-o", "json")
        items = json.loads(out).get("items", [])
        # Terminating pods are on their way out: not members.
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    async def _wait_pods(self, count: int, within: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        pods: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            pods = await self._list_pods()
            running = [p for p in pods if p.get("status", {}).get("podIP")]
            if len(pods) == count and len(running) == count:
                return pods
            await asyncio.sleep(_POLL)
        raise DriverError(f"expected {count} pods with an IP, got {len(pods)} after {within:g}s")

    async def _adopt(self, item: dict[str, Any]) -> _Pod:
        name = item["metadata"]["name"]
        pod = _Pod(name, item["status"]["podIP"], item["spec"]["nodeName"])
        pod.forward, pod.local_port = await self._port_forward(name)
        self._pods[name] = pod
        self._order.append(name)
        return pod

    async def _port_forward(self, pod: str) -> tuple[asyncio.subprocess.Process, int]:
        process = await asyncio.create_subprocess_exec(
            "kubectl",
            "-n",
            self.namespace,
            "port-forward",
            f"pod/{pod}",
            f":{HTTP_PORT}",
            "--address",
            "127.0.0.1",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 30.0)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise DriverError(f"port-forward to {pod}: no answer within 30s") from None
        match = _FORWARDING.search(line)
        if match is None:
            process.kill()
            await process.wait()
            raise DriverError(f"port-forward to {pod}: {line.decode(errors='replace')}")
        return process, int(match.group(1))

    async def _forget(self, name: str) -> None:
        pod = self._pods.pop(name, None)
        with contextlib.suppress(ValueError):
            self._order.remove(name)
        self._paused.discard(name)
        self._killed.discard(name)
        if pod is not None and pod.forward is not None and pod.forward.returncode is None:
            pod.forward.kill()
            await pod.forward.wait()

    async def _container_pid(self, pod: _Pod) -> int:
        # crictl on the kind node knows the container's host pid (the node process is the
        # container's pid 1: the image's ENTRYPOINT is `peer-ring-kv`).
        ids = await _run(
            "docker",
            "exec",
            pod.node,
            "crictl",
            "ps",
            "-q",
            "--name",
            self.container,
            "--label",
            f"io.kubernetes.pod.name={pod.name}",
        )
        container = ids.split()[0] if ids.split() else ""
        if not container:
            raise DriverError(f"no running {self.container} container in {pod.name}")
        out = await _run(
            "docker",
            "exec",
            pod.node,
            "crictl",
            "inspect",
            "--output",
            "go-template",
            "--template",
            "{{.info.pid}}",
            container,
        )
        return int(out.strip())

    async def _signal(self, pod: _Pod, signal_name: str) -> None:
        pid = await self._container_pid(pod)
        await _run("docker", "exec", pod.node, "kill", f"-{signal_name}", str(pid))

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3.0))
        return self._session

    def _pod(self, name: str) -> _Pod:
        try:
            return self._pods[name]
        except KeyError:
            raise DriverError(f"no pod named {name!r}") from None

    async def _scale_down_removing(self, pod: _Pod, *, force: bool) -> None:
        # The ReplicaSet removes the pods of lowest deletion cost first: make it this one.
        await self._kubectl(
            "annotate",
            "pod",
            pod.name,
            "controller.kubernetes.io/pod-deletion-cost=-1000000",
            "--overwrite",
        )
        await self._scale(await self._replicas() - 1)
        if force:
            await self._kubectl(
                "delete", "pod", pod.name, "--grace-period=0", "--force", check=False
            )

    async def _scale_up_one(self, ready_within: float) -> str:
        before = {p["metadata"]["name"] for p in await self._list_pods()}
        await self._scale(await self._replicas() + 1)
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            fresh = [
                p
                for p in await self._list_pods()
                if p["metadata"]["name"] not in before and p.get("status", {}).get("podIP")
            ]
            if fresh:
                pod = await self._adopt(fresh[0])
                await self.wait_ready(pod.name, max(1.0, deadline - time.monotonic()))
                return pod.name
            await asyncio.sleep(_POLL)
        raise DriverError(f"no new pod after {ready_within:g}s")

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, count: int, *, ready_within: float = 180.0) -> list[str]:
        if self.image is not None:
            images = await self._kubectl(
                "get",
                "deployment",
                self.deployment,
                "-o",
                "jsonpath={.spec.template.spec.initContainers[*].image}",
            )
            if self.image not in images.split():
                raise DriverError(f"the Deployment runs {images!r}, not {self.image!r}")
        for name in list(self._pods):
            await self._forget(name)
        # From zero, then all at once: every pod starts with an empty memory, together.
        await self._scale(0)
        await self._wait_pods(0, ready_within)
        await self._scale(count)
        for item in await self._wait_pods(count, ready_within):
            await self._adopt(item)
        await asyncio.gather(*(self.wait_ready(n, ready_within) for n in self._order))
        return list(self._order)

    async def close(self) -> None:
        for name in list(self._isolated):
            with contextlib.suppress(DriverError):
                await self.heal(name)
        for name in list(self._paused):
            with contextlib.suppress(DriverError):
                await self.resume(name)
        for name in list(self._pods):
            await self._forget(name)
        if self._session is not None:
            await self._session.close()
            self._session = None
        # Leave the Deployment as the workflow applied it (3 replicas) for the next step.
        with contextlib.suppress(DriverError):
            await self._scale(3)

    # -- observation -------------------------------------------------------------------------

    def members(self) -> list[str]:
        # Killed pods stay listed until restart() replaces them, as the contract says
        # (their endpoint names the identity the survivors must stop counting on).
        return list(self._order)

    def endpoint(self, name: str) -> Endpoint:
        pod = self._pod(name)
        return Endpoint(name, f"{pod.ip}:{PEER_PORT}", f"http://127.0.0.1:{pod.local_port}")

    def is_serving(self, name: str) -> bool:
        return name in self._pods and name not in self._paused and name not in self._killed

    async def wait_ready(self, name: str, within: float = 120.0) -> None:
        url = f"{self.endpoint(name).url}/readyz"
        deadline = time.monotonic() + within
        last = "no answer yet"
        while time.monotonic() < deadline:
            try:
                async with self._http().get(url) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(_POLL)
        raise DriverError(f"{name} not ready after {within:g}s ({last})")

    def describe(self) -> str:
        return f"kind: deployment/{self.deployment} in namespace {self.namespace}"

    # -- faults ----------------------------------------------------------------------------

    async def kill(self, name: str) -> None:
        pod = self._pod(name)
        self._paused.discard(name)
        with contextlib.suppress(DriverError):  # already dead: fine
            await self._signal(pod, "KILL")
        self._killed.add(name)
        await self._scale_down_removing(pod, force=True)

    async def pause(self, name: str) -> None:
        self.require(Capability.PAUSE)
        await self._signal(self._pod(name), "STOP")
        self._paused.add(name)

    async def resume(self, name: str) -> None:
        self.require(Capability.PAUSE)
        await self._signal(self._pod(name), "CONT")
        self._paused.discard(name)

    async def restart(
        self, name: str, *, graceful: bool = True, grace: float = 90.0, ready_within: float = 180.0
    ) -> str:
        pod = self._pod(name)
        if name not in self._killed:
            if name in self._paused:
                await self.resume(name)
            if graceful:
                # A normal deletion: preStop, SIGTERM (graceful leave), the ReplicaSet
                # replaces the pod. Wait for the old one to be gone first.
                await self._kubectl("delete", "pod", pod.name, f"--timeout={grace:.0f}s")
                await self._forget(name)
                return await self._adopted_replacement(ready_within)
            await self.kill(name)
        await self._forget(name)
        return await self._scale_up_one(ready_within)

    async def _adopted_replacement(self, ready_within: float) -> str:
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            fresh = [
                p
                for p in await self._list_pods()
                if p["metadata"]["name"] not in self._pods and p.get("status", {}).get("podIP")
            ]
            if fresh:
                pod = await self._adopt(fresh[0])
                await self.wait_ready(pod.name, max(1.0, deadline - time.monotonic()))
                return pod.name
            await asyncio.sleep(_POLL)
        raise DriverError(f"no replacement pod after {ready_within:g}s")

    async def add_node(self, *, ready_within: float = 180.0) -> str:
        return await self._scale_up_one(ready_within)

    async def remove_node(self, name: str, *, grace: float = 90.0) -> StopResult:
        pod = self._pod(name)
        started = time.monotonic()
        await self._scale_down_removing(pod, force=False)
        await self._kubectl(
            "wait", "--for=delete", f"pod/{pod.name}", f"--timeout={grace:.0f}s", check=False
        )
        await self._forget(name)
        return StopResult(name, time.monotonic() - started, None, False)

    def _rules(self, ip: str) -> list[list[str]]:
        port = str(PEER_PORT)
        return [
            ["-s", ip, "-p", "tcp", "--dport", port],
            ["-d", ip, "-p", "tcp", "--dport", port],
            ["-s", ip, "-p", "tcp", "--sport", port],
            ["-d", ip, "-p", "tcp", "--sport", port],
        ]

    async def partition(self, name: str) -> None:
        self.require(Capability.PARTITION)
        pod = self._pod(name)
        if name in self._isolated:
            return
        node = pod.node
        # Our own chain, hooked first into FORWARD (created once per kind node).
        exists = await _run("docker", "exec", node, "iptables", "-w", "-S", CHAIN, check=False)
        if not exists.startswith(f"-N {CHAIN}"):
            await _run("docker", "exec", node, "iptables", "-w", "-N", CHAIN)
            await _run("docker", "exec", node, "iptables", "-w", "-I", "FORWARD", "1", "-j", CHAIN)
        self._isolated[name] = pod
        for rule in self._rules(pod.ip):
            await _run("docker", "exec", node, "iptables", "-w", "-A", CHAIN, *rule, "-j", "DROP")

    async def heal(self, name: str) -> None:
        self.require(Capability.PARTITION)
        pod = self._isolated.pop(name, None)
        if pod is None:
            return
        for rule in self._rules(pod.ip):
            await _run(
                "docker",
                "exec",
                pod.node,
                "iptables",
                "-w",
                "-D",
                CHAIN,
                *rule,
                "-j",
                "DROP",
                check=False,
            )
