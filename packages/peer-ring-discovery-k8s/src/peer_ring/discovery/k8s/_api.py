"""The thin I/O adapter between discovery and the Kubernetes API server.

Built on ``kubernetes_asyncio``, the asyncio edition of the official generated client
(same configuration loaders, same API surface as ``kubernetes``). Why not the synchronous
``kubernetes`` package in a thread: a watch is a request that blocks for minutes, and a
thread blocked in a socket read cannot be cancelled, so ``stop()`` would hang until the
server closed the watch, and ``asyncio.run`` would wait for that thread at exit. With
aiohttp underneath, cancelling the watch task closes the connection at once.

Only the client's configuration (kubeconfig, in-cluster service account with token
rotation, exec plugins, TLS) and its HTTP session are used; responses are read as raw
JSON (``_preload_content=False``), because the generated models reject watch BOOKMARK
events (they carry only ``metadata``) and we need every event's ``resourceVersion``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient

from peer_ring.discovery.k8s._members import Obj
from peer_ring.discovery.k8s._store import StatusError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ResourceKind:
    """A namespaced, listable API resource."""

    group: str
    version: str
    plural: str

    def collection_path(self, namespace: str) -> str:
        """The URL path of the resource's collection in ``namespace``."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"

    @property
    def qualified(self) -> str:
        """``plural.group`` as RBAC and error messages spell it (``pods`` for the core group)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


ENDPOINT_SLICES = ResourceKind("discovery.k8s.io", "v1", "endpointslices")
PODS = ResourceKind("", "v1", "pods")


class ApiStatusError(Exception):
    """A request got a non-2xx answer.

    Attributes:
        verb: the Kubernetes verb of the request (``list``, ``watch``, ``create``).
        status: the decoded ``Status`` (code, reason, message).
    """

    def __init__(self, verb: str, status: StatusError) -> None:
        super().__init__(f"{verb}: HTTP {status.code} {status.reason}: {status.message}")
        self.verb = verb
        self.status = status


async def _raise_for_status(verb: str, response: aiohttp.ClientResponse) -> None:
    if 200 <= response.status < 300:
        return
    body = await response.read()
    response.release()
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = {"message": body.decode(errors="replace")[:500]}
    obj = decoded if isinstance(decoded, dict) else {}
    raise ApiStatusError(verb, StatusError.from_obj(obj, response.status))


class KubeApi:
    """List, watch and access-review calls, returning decoded JSON.

    Args:
        client: a configured ``kubernetes_asyncio`` ApiClient (not closed by this class).
        request_timeout: seconds allowed for a LIST or an access review.
    """

    def __init__(self, client: ApiClient, *, request_timeout: float = 30.0) -> None:
        self._client = client
        self._request_timeout = request_timeout

    async def _request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | None = None,
        client_timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        # call_api is untyped in kubernetes_asyncio; it adds auth headers (refreshing a
        # rotated service-account token first) and returns the raw aiohttp response.
        response: aiohttp.ClientResponse = await self._client.call_api(
            path,
            method,
            query_params=list(query),
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=dict(body) if body is not None else None,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=client_timeout,
        )
        return response

    async def list_objects(
        self, kind: ResourceKind, namespace: str, label_selector: str, *, page_size: int = 500
    ) -> tuple[list[Obj], str]:
        """LIST every object matching ``label_selector``; returns (items, resourceVersion).

        Pages through ``continue`` tokens. The list is a consistent read (no
        ``resourceVersion`` parameter), so the returned version is safe to watch from.

        Raises:
            ApiStatusError: a non-2xx answer (410 when a continue token expired).
        """
        items: list[Obj] = []
        token = ""
        while True:
            query = [("labelSelector", label_selector), ("limit", str(page_size))]
            if token:
                query.append(("continue", token))
            response = await self._request(
                "GET",
                kind.collection_path(namespace),
                query=query,
                client_timeout=aiohttp.ClientTimeout(total=self._request_timeout),
            )
            await _raise_for_status("list", response)
            page: Obj = await response.json()
            items.extend(page.get("items") or ())
            meta = page.get("metadata") or {}
            token = str(meta.get("continue") or "")
            if not token:
                return items, str(meta.get("resourceVersion", ""))

    @contextlib.asynccontextmanager
    async def watch(
        self,
        kind: ResourceKind,
        namespace: str,
        label_selector: str,
        resource_version: str,
        *,
        timeout_seconds: int,
        read_timeout: float,
    ) -> AsyncIterator[AsyncIterator[Mapping[str, Any]]]:
        """Open a WATCH from ``resource_version``; yields an iterator of decoded events.

        The watch is opened (and its HTTP status checked) on entering the context, so a
        403 surfaces there. ``timeout_seconds`` asks the server to end the watch, which
        keeps connections from living forever behind proxies; ``read_timeout`` bounds the
        silence between two reads, which detects a dead connection (a half-open TCP
        connection otherwise blocks a watch forever: "watches that silently stop").
        Bookmarks are requested, so a quiet watch still hears from the server.

        Raises:
            ApiStatusError: a non-2xx answer (410 when ``resource_version`` is too old).
        """
        query = [
            ("watch", "true"),
            ("labelSelector", label_selector),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        response = await self._request(
            "GET",
            kind.collection_path(namespace),
            query=query,
            client_timeout=aiohttp.ClientTimeout(
                total=None, connect=self._request_timeout, sock_read=read_timeout
            ),
        )
        try:
            await _raise_for_status("watch", response)
            yield _events(response)
        finally:
            response.close()

    async def denied_verbs(
        self, kind: ResourceKind, namespace: str, verbs: Sequence[str]
    ) -> list[str]:
        """Which of ``verbs`` on ``kind`` the current identity lacks, by SelfSubjectAccessReview.

        Used after a 403 to name *every* missing permission at once. Best effort: when
        the review itself fails, returns an empty list.
        """
        denied: list[str] = []
        for verb in verbs:
            body = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {
                    "resourceAttributes": {
                        "namespace": namespace,
                        "verb": verb,
                        "group": kind.group,
                        "resource": kind.plural,
                    }
                },
            }
            try:
                response = await self._request(
                    "POST",
                    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                    body=body,
                    client_timeout=aiohttp.ClientTimeout(total=self._request_timeout),
                )
                await _raise_for_status("create", response)
                review: Obj = await response.json()
            except (ApiStatusError, aiohttp.ClientError, TimeoutError) as exc:
                logger.debug("access review for %s %s failed: %s", verb, kind.qualified, exc)
                return []
            if not (review.get("status") or {}).get("allowed", False):
                denied.append(verb)
        return denied


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[Mapping[str, Any]]:
    # One JSON object per line. aiohttp's line reader accepts lines up to twice the
    # session's read buffer (kubernetes_asyncio sets 2 MiB), above etcd's 1.5 MiB limit.
    async for line in response.content:
        if not line.strip():
            continue
        event = json.loads(line)
        if isinstance(event, dict):
            yield event
