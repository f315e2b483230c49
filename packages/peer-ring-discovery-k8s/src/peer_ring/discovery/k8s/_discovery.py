"""``KubernetesDiscovery``: the member set from a headless Service's EndpointSlices (or Pods)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from kubernetes_asyncio.client import ApiClient

from peer_ring.core import Clock, InvalidArgumentError, Member, SystemClock
from peer_ring.discovery.k8s._api import ENDPOINT_SLICES, PODS, KubeApi
from peer_ring.discovery.k8s._backoff import Backoff
from peer_ring.discovery.k8s._client import (
    SERVICE_ACCOUNT_DIR,
    create_api_client,
    running_in_cluster,
)
from peer_ring.discovery.k8s._members import (
    META_POD,
    AddressType,
    Obj,
    address_type_of,
    format_address,
    members_from_endpoint_slices,
    members_from_pods,
    snapshot_key,
)
from peer_ring.discovery.k8s._reflector import Reflector, WatchStats

logger = logging.getLogger(__name__)

#: How peers are found: EndpointSlices of a Service, or Pods matching a label selector.
Mode = Literal["endpointslices", "pods"]

#: The label the EndpointSlice controller puts on every slice of a Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# Environment variables read by :meth:`KubernetesDiscovery.from_env`.
ENV_POD_IP = "POD_IP"
ENV_POD_NAME = "POD_NAME"
ENV_POD_NAMESPACE = "POD_NAMESPACE"
ENV_MODE = "PEER_RING_K8S_MODE"
ENV_SERVICE = "PEER_RING_K8S_SERVICE"
ENV_LABEL_SELECTOR = "PEER_RING_K8S_LABEL_SELECTOR"
ENV_PORT_NAME = "PEER_RING_K8S_PORT_NAME"
ENV_PEER_PORT = "PEER_RING_PEER_PORT"


class KubernetesDiscovery:
    """Discovers peer-ring members through the Kubernetes API (implements ``Discovery``).

    Two modes:

    * ``"endpointslices"`` (default, recommended): the EndpointSlices of a headless
      Service (label ``kubernetes.io/service-name=<service>``). Gives each peer's zone
      (``Member.metadata["zone"]``) for zone-aware placement. Needs ``list`` and ``watch``
      on ``endpointslices.discovery.k8s.io`` in the namespace.
    * ``"pods"``: Pods matching ``label_selector``. For clusters where the Service cannot
      publish not-ready addresses. Needs ``list`` and ``watch`` on ``pods``.

    Readiness: endpoints that are not ready yet *are* members (so that pods starting
    together form one ring; the Service must set ``publishNotReadyAddresses: true``);
    terminating ones are not. This node is always in its own snapshots, even before the
    Service lists it.

    Snapshots are deduplicated: ``watch()`` yields only when the member set or a member's
    metadata changed, never the same snapshot twice in a row.

    Args:
        namespace: the namespace of the Service or Pods.
        port: the peer (gRPC) port of this node, and of every peer unless ``port_name``
            is given.
        pod_ip: this pod's IP (``status.podIP`` through the downward API); with ``port``
            it makes this node's address.
        service: the headless Service's name (``"endpointslices"`` mode).
        label_selector: which Pods (``"pods"`` mode); in ``"endpointslices"`` mode, an
            optional extra selector on the slices.
        mode: ``"endpointslices"`` or ``"pods"``.
        port_name: read each peer's port from the EndpointSlice port of this name (for
            peers listening on different ports).
        pod_name: this pod's name, kept in this node's metadata.
        api_client: a ready ``kubernetes_asyncio`` client (not closed by discovery). When
            None, one is built from the in-cluster service account or a kubeconfig.
        kubeconfig: kubeconfig path when not in cluster (default ``$KUBECONFIG``, then
            ``~/.kube/config``).
        context: kubeconfig context.
        in_cluster: force (True) or forbid (False) the in-cluster configuration; None
            detects it (``KUBERNETES_SERVICE_HOST`` set and a token mounted).
        clock: time source for retries.
        watch_timeout: seconds after which the server ends each watch (randomised up to
            twice that); discovery then resumes from the last resourceVersion.
        idle_timeout: seconds of silence after which a watch connection is deemed dead
            and reopened (default ``2 * watch_timeout + 30``).
        startup_timeout: how long ``start()`` retries an unreachable API server.
        request_timeout: seconds allowed for each LIST.
        backoff: retry delays (default 0.5 s doubling to 30 s, ±20 % jitter).
        environ: environment for the in-cluster configuration (default ``os.environ``).
        service_account_dir: where the service account is mounted.

    Raises:
        InvalidArgumentError: inconsistent arguments (missing service or selector, bad IP
            or port, unknown mode).
    """

    def __init__(
        self,
        *,
        namespace: str,
        port: int,
        pod_ip: str,
        service: str | None = None,
        label_selector: str | None = None,
        mode: Mode = "endpointslices",
        port_name: str | None = None,
        pod_name: str | None = None,
        api_client: ApiClient | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        in_cluster: bool | None = None,
        clock: Clock | None = None,
        watch_timeout: float = 300.0,
        idle_timeout: float | None = None,
        startup_timeout: float = 60.0,
        request_timeout: float = 30.0,
        backoff: Backoff | None = None,
        environ: Mapping[str, str] | None = None,
        service_account_dir: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR,
    ) -> None:
        if not namespace:
            raise InvalidArgumentError("namespace is required")
        if not 0 < port < 65536:
            raise InvalidArgumentError(f"port {port} is not in 1..65535")
        try:
            self._address_type: AddressType = address_type_of(pod_ip)
        except ValueError:
            raise InvalidArgumentError(f"pod_ip {pod_ip!r} is not an IP address") from None
        if mode == "endpointslices":
            if not service:
                raise InvalidArgumentError("mode 'endpointslices' needs the Service name")
            selector = f"{SERVICE_NAME_LABEL}={service}"
            if label_selector:
                selector = f"{selector},{label_selector}"
            self._kind = ENDPOINT_SLICES
        elif mode == "pods":
            if not label_selector:
                raise InvalidArgumentError("mode 'pods' needs a label selector")
            selector = label_selector
            self._kind = PODS
        else:
            raise InvalidArgumentError(f"unknown mode {mode!r}: use 'endpointslices' or 'pods'")
        self._namespace = namespace
        self._port = port
        self._port_name = port_name
        self._mode: Mode = mode
        self._selector = selector
        self._self_address = format_address(pod_ip, port)
        self._self_member = Member(
            self._self_address, MappingProxyType({META_POD: pod_name} if pod_name else {})
        )
        self._given_client = api_client
        self._kubeconfig = kubeconfig
        self._context = context
        self._environ = dict(os.environ if environ is None else environ)
        self._service_account_dir = service_account_dir
        self._in_cluster = (
            in_cluster
            if in_cluster is not None
            else kubeconfig is None
            and api_client is None
            and running_in_cluster(self._environ, service_account_dir)
        )
        self._clock: Clock = clock or SystemClock()
        self._watch_timeout = watch_timeout
        self._idle_timeout = idle_timeout
        self._startup_timeout = startup_timeout
        self._request_timeout = request_timeout
        self._backoff = backoff or Backoff()

        self._owned_client: ApiClient | None = None
        self._reflector: Reflector | None = None
        self._task: asyncio.Task[None] | None = None
        self._members: frozenset[Member] = frozenset({self._self_member})
        self._key = snapshot_key(self._members)
        self._version = 0
        self._started_version = 0
        self._changed = asyncio.Event()
        self._stopped = False

    @classmethod
    def from_env(
        cls,
        *,
        port: int | None = None,
        environ: Mapping[str, str] | None = None,
        service_account_dir: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR,
        **options: object,
    ) -> KubernetesDiscovery:
        """Configure from the pod's environment (what ``peer-ring-kv serve`` uses).

        Reads ``POD_IP`` (required), ``POD_NAME``, ``POD_NAMESPACE`` (default: the
        service account's namespace), ``PEER_RING_K8S_MODE`` (``endpointslices`` or
        ``pods``), ``PEER_RING_K8S_SERVICE``, ``PEER_RING_K8S_LABEL_SELECTOR``,
        ``PEER_RING_K8S_PORT_NAME``, and ``PEER_RING_PEER_PORT`` when ``port`` is not
        given. Connects in cluster when ``KUBERNETES_SERVICE_HOST`` is set and a token is
        mounted, else through ``$KUBECONFIG``.

        Args:
            port: this node's peer port (overrides ``PEER_RING_PEER_PORT``).
            environ: the environment (default ``os.environ``).
            service_account_dir: where the service account is mounted.
            **options: further keyword arguments of the constructor (timeouts, clock...).

        Raises:
            InvalidArgumentError: a required variable is missing or malformed.
        """
        env = dict(os.environ if environ is None else environ)
        pod_ip = env.get(ENV_POD_IP, "").strip()
        if not pod_ip:
            raise InvalidArgumentError(
                f"{ENV_POD_IP} is not set: expose the pod IP through the downward API "
                "(env: valueFrom: fieldRef: fieldPath: status.podIP)"
            )
        namespace = env.get(ENV_POD_NAMESPACE, "").strip()
        if not namespace:
            ns_file = Path(service_account_dir) / "namespace"
            namespace = ns_file.read_text().strip() if ns_file.is_file() else ""
        if not namespace:
            raise InvalidArgumentError(
                f"{ENV_POD_NAMESPACE} is not set (downward API: fieldPath: metadata.namespace)"
            )
        if port is None:
            port_text = env.get(ENV_PEER_PORT, "").strip()
            if not port_text.isdigit():
                raise InvalidArgumentError(
                    f"{ENV_PEER_PORT} must be the peer port, got {port_text!r}"
                )
            port = int(port_text)
        mode = env.get(ENV_MODE, "endpointslices").strip() or "endpointslices"
        if mode not in ("endpointslices", "pods"):
            raise InvalidArgumentError(f"{ENV_MODE}={mode!r}: use 'endpointslices' or 'pods'")
        return cls(
            namespace=namespace,
            port=port,
            pod_ip=pod_ip,
            service=env.get(ENV_SERVICE, "").strip() or None,
            label_selector=env.get(ENV_LABEL_SELECTOR, "").strip() or None,
            mode=mode,  # type: ignore[arg-type]  # checked just above
            port_name=env.get(ENV_PORT_NAME, "").strip() or None,
            pod_name=env.get(ENV_POD_NAME, "").strip() or None,
            environ=env,
            service_account_dir=service_account_dir,
            **options,  # type: ignore[arg-type]
        )

    @property
    def self_address(self) -> str:
        """``pod_ip:port`` (``[ip]:port`` for IPv6): this node's identity in the ring."""
        return self._self_address

    @property
    def members(self) -> frozenset[Member]:
        """The current member set (the last snapshot)."""
        return self._members

    @property
    def stats(self) -> WatchStats:
        """Counters of the list+watch loop (lists, watches, 410s, errors...)."""
        return self._reflector.stats if self._reflector else WatchStats()

    def _compute(self, objects: Mapping[str, Obj]) -> frozenset[Member]:
        if self._mode == "endpointslices":
            found = members_from_endpoint_slices(
                objects.values(),
                port=self._port,
                port_name=self._port_name,
                address_type=self._address_type,
            )
        else:
            found = members_from_pods(
                objects.values(), port=self._port, address_type=self._address_type
            )
        # This node is always a member of its own view: the Service may not list it
        # yet (cold start), or already mark it terminating while it hands data off.
        listed = found.get(self._self_address)
        metadata = {**self._self_member.metadata, **(listed.metadata if listed else {})}
        found[self._self_address] = Member(self._self_address, MappingProxyType(metadata))
        return frozenset(found.values())

    def _on_change(self, objects: Mapping[str, Obj]) -> None:
        members = self._compute(objects)
        key = snapshot_key(members)
        if key == self._key:
            return  # the same snapshot twice: not a change
        added = sorted({m.address for m in members} - {m.address for m in self._members})
        removed = sorted({m.address for m in self._members} - {m.address for m in members})
        logger.info("kubernetes discovery: %d members (+%s -%s)", len(members), added, removed)
        self._members = members
        self._key = key
        self._version += 1
        # Wake the watcher: swap the event so the next wait blocks until the next change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def start(self) -> frozenset[Member]:
        """List the current members, open the watch, and return the initial member set.

        Raises:
            KubernetesForbiddenError: RBAC denies list or watch (names the missing verbs).
            KubernetesDiscoveryError: configuration missing, or the API server unreachable
                for ``startup_timeout`` seconds.
        """
        if self._task is not None:
            return self._members
        client = self._given_client
        if client is None:
            client = await create_api_client(
                in_cluster=self._in_cluster,
                kubeconfig=self._kubeconfig,
                context=self._context,
                environ=self._environ,
                service_account_dir=self._service_account_dir,
            )
            self._owned_client = client
        self._reflector = Reflector(
            KubeApi(client, request_timeout=self._request_timeout),
            self._kind,
            self._namespace,
            self._selector,
            on_change=self._on_change,
            clock=self._clock,
            backoff=self._backoff,
            watch_timeout=self._watch_timeout,
            idle_timeout=self._idle_timeout,
            rng=random.Random(),
        )
        try:
            await self._reflector.prime(self._startup_timeout)
        except BaseException:
            await self._close_client()
            raise
        self._task = asyncio.create_task(
            self._reflector.run(), name=f"peer-ring-k8s-watch-{self._namespace}"
        )
        self._started_version = self._version
        logger.info(
            "kubernetes discovery started: %s %r in namespace %r, self %s, %d members",
            self._kind.qualified,
            self._selector,
            self._namespace,
            self._self_address,
            len(self._members),
        )
        return self._members

    async def watch(self) -> AsyncIterator[frozenset[Member]]:
        """Yield the member set each time it changes after ``start()``, until ``stop()``."""
        seen = self._started_version
        while not self._stopped:
            if self._version != seen:
                seen = self._version
                yield self._members
                continue
            await self._changed.wait()

    async def stop(self) -> None:
        """Stop watching, close the connection (if discovery opened it); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._changed.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._reflector is not None:
            await self._reflector.close()
        await self._close_client()

    async def _close_client(self) -> None:
        client, self._owned_client = self._owned_client, None
        if client is not None:
            await client.close()
