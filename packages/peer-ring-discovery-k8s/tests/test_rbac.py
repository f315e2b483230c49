"""The shipped RBAC is sufficient, and a missing permission is named clearly.

Discovery runs here exactly as in a pod: the in-cluster configuration
(``KUBERNETES_SERVICE_HOST``/``PORT``, a service-account directory with ``token``,
``ca.crt`` and ``namespace``), with a real token issued by the TokenRequest API for the
ServiceAccount of ``deploy/rbac.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from peer_ring.discovery.k8s import Backoff, KubernetesDiscovery, KubernetesForbiddenError

pytestmark = pytest.mark.k8s

SELF = "10.1.0.1:7101"


async def in_cluster_discovery(env, tmp_path: Path, service_account: str, **options):
    """A discovery configured like a pod running as ``service_account``."""
    token = await env.service_account_token(service_account)
    sa_dir = tmp_path / f"sa-{service_account}"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(token)
    (sa_dir / "ca.crt").write_bytes(env.cluster.ca_cert.read_bytes())
    (sa_dir / "namespace").write_text(env.namespace)
    host, _, port = env.cluster.server.removeprefix("https://").rpartition(":")
    discovery = KubernetesDiscovery.from_env(
        port=7101,
        environ={
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "POD_IP": "10.1.0.1",
            "POD_NAME": "kv-1",
            "PEER_RING_K8S_SERVICE": "peer-ring",
        },
        service_account_dir=sa_dir,
        backoff=Backoff(initial=0.1, maximum=1.0),
        startup_timeout=30.0,
        **options,
    )
    return env.track(discovery)


async def create_role(env, name: str, verbs: list[str], service_account: str) -> None:
    await env.request(
        "POST",
        env.path("serviceaccounts"),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": service_account}},
    )
    if not verbs:
        return
    await env.request(
        "POST",
        env.path("roles"),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name},
            "rules": [
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": verbs}
            ],
        },
    )
    await env.request(
        "POST",
        env.path("rolebindings"),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": service_account}],
        },
    )


def apply_shipped_rbac(env) -> None:
    result = env.cluster.kubectl(
        "apply", "-n", env.namespace, "-f", str(env.repo / "deploy" / "rbac.yaml")
    )
    assert "role.rbac.authorization.k8s.io/peer-ring-discovery created" in result.stdout


async def test_shipped_rbac_is_sufficient_with_the_service_account_token(env, tmp_path) -> None:
    apply_shipped_rbac(env)
    await env.put_slice("kv-a", [env.endpoint("10.1.0.1"), env.endpoint("10.1.0.2", zone="z1")])
    discovery = await in_cluster_discovery(env, tmp_path, "peer-ring", watch_timeout=1)
    members = await discovery.start()
    assert env.addresses(members) == {SELF, "10.1.0.2:7101"}
    recorder = env.record(discovery)
    await env.put_slice("kv-b", [env.endpoint("10.1.0.3")])
    await recorder.wait_for({SELF, "10.1.0.2:7101", "10.1.0.3:7101"})
    # Several watches (watch_timeout=1): every re-watch was allowed too.
    watches = discovery.stats.watches
    await env.wait_until(lambda: discovery.stats.watches >= watches + 2)
    assert discovery.stats.errors == 0, discovery.stats.last_error


async def test_missing_watch_permission_fails_start_naming_the_verb(env, tmp_path) -> None:
    await create_role(env, "list-only", ["list"], "limited")
    discovery = await in_cluster_discovery(env, tmp_path, "limited")
    with pytest.raises(KubernetesForbiddenError) as caught:
        await discovery.start()
    error = caught.value
    assert error.verb == "watch"
    assert error.missing_verbs == ["watch"]
    assert error.resource == "endpointslices.discovery.k8s.io"
    message = str(error)
    assert "verbs ['watch'] on resource 'endpointslices' in API group 'discovery.k8s.io'" in message
    assert f"system:serviceaccount:{env.namespace}:limited" in message  # the server's words


async def test_no_permission_at_all_names_every_missing_verb(env, tmp_path) -> None:
    await create_role(env, "none", [], "nobody")
    discovery = await in_cluster_discovery(env, tmp_path, "nobody")
    with pytest.raises(KubernetesForbiddenError) as caught:
        await discovery.start()
    assert caught.value.verb == "list"
    assert caught.value.missing_verbs == ["list", "watch"]
    assert "deploy/rbac.yaml" in str(caught.value)


async def test_permission_revoked_while_running_is_reported_then_recovered(env, tmp_path) -> None:
    apply_shipped_rbac(env)
    discovery = await in_cluster_discovery(env, tmp_path, "peer-ring", watch_timeout=1)
    await discovery.start()
    recorder = env.record(discovery)

    env.cluster.kubectl("delete", "-n", env.namespace, "rolebinding", "peer-ring-discovery")
    # The open watch ends within 1-2 s; the re-watch is refused and explained.
    await env.wait_until(lambda: "KubernetesForbiddenError" in discovery.stats.last_error)
    assert "verbs ['list', 'watch']" in discovery.stats.last_error
    await env.put_slice("kv-a", [env.endpoint("10.1.0.4")])

    apply_shipped_rbac_again = env.cluster.kubectl(
        "apply", "-n", env.namespace, "-f", str(env.repo / "deploy" / "rbac.yaml")
    )
    assert "rolebinding.rbac.authorization.k8s.io/peer-ring-discovery created" in (
        apply_shipped_rbac_again.stdout
    )
    # Resumed: the slice written while forbidden is seen, nothing was lost.
    await recorder.wait_for({SELF, "10.1.0.4:7101"})
