"""Errors raised by the Kubernetes discovery.

Every error derives from :class:`peer_ring.core.PeerRingError`, so an application that
catches peer-ring's base error also catches discovery failures.
"""

from __future__ import annotations

from collections.abc import Sequence

from peer_ring.core import PeerRingError


class KubernetesDiscoveryError(PeerRingError):
    """Discovery could not list or watch its objects (API server unreachable, bad config...)."""


class KubernetesForbiddenError(KubernetesDiscoveryError):
    """The API server refused a request for lack of an RBAC permission (HTTP 403).

    The message names the identity, the verbs and the resource that are missing, and
    how to grant them, because "forbidden" alone is the most common and least helpful
    failure users of Kubernetes discovery report.

    Attributes:
        verb: the verb of the refused request (``"list"`` or ``"watch"``).
        resource: the resource, qualified by its API group (``"endpointslices.discovery.k8s.io"``).
        namespace: the namespace of the request.
        missing_verbs: every verb discovery needs that the identity lacks (checked with a
            SelfSubjectAccessReview after the refusal; at least ``verb``).
        server_message: the API server's own message.
    """

    def __init__(
        self,
        *,
        verb: str,
        resource: str,
        namespace: str,
        missing_verbs: Sequence[str],
        server_message: str,
    ) -> None:
        verbs = sorted(set(missing_verbs) | {verb})
        plural, _, group = resource.partition(".")
        super().__init__(
            f"Kubernetes discovery is forbidden to {verb} {resource} in namespace "
            f"{namespace!r}; missing RBAC permission: verbs {verbs} on resource {plural!r} "
            f"in API group {group!r}. Bind a Role granting them to the pod's ServiceAccount "
            f"(see deploy/rbac.yaml). API server said: {server_message}"
        )
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        self.missing_verbs = verbs
        self.server_message = server_message
