"""The manifests in deploy/: accepted by a real API server, and saying what the README says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"


def documents() -> dict[str, dict]:
    found: dict[str, dict] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


@pytest.mark.k8s
async def test_manifests_pass_server_side_dry_run(env) -> None:
    namespace = await env.create_namespace(env.namespace + "-deploy")
    result = env.cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(DEPLOY), check=False
    )
    assert result.returncode == 0, result.stderr
    for line in (
        "serviceaccount/peer-ring created (server dry run)",
        "role.rbac.authorization.k8s.io/peer-ring-discovery created (server dry run)",
        "rolebinding.rbac.authorization.k8s.io/peer-ring-discovery created (server dry run)",
        "service/peer-ring created (server dry run)",
        "deployment.apps/peer-ring-kv created (server dry run)",
        "poddisruptionbudget.policy/peer-ring-kv created (server dry run)",
    ):
        assert line in result.stdout, result.stdout


def test_service_is_headless_and_publishes_not_ready_addresses() -> None:
    service = documents()["Service/peer-ring"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert {"name": "peer", "port": 7101, "targetPort": "peer", "protocol": "TCP"} in (
        service["spec"]["ports"]
    )


def test_role_grants_only_list_and_watch_on_endpointslices() -> None:
    role = documents()["Role/peer-ring-discovery"]
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        }
    ]


def test_deployment_runs_the_sidecar_with_downward_api_and_graceful_shutdown() -> None:
    docs = documents()
    spec = docs["Deployment/peer-ring-kv"]["spec"]["template"]["spec"]
    sidecar = next(c for c in spec["initContainers"] if c["name"] == "peer-ring")
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"] == ["serve"]
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["PEER_RING_K8S_SERVICE"]["value"] == docs["Service/peer-ring"]["metadata"]["name"]
    assert "preStop" in sidecar["lifecycle"]
    assert spec["terminationGracePeriodSeconds"] >= 60
    assert spec["serviceAccountName"] == docs["ServiceAccount/peer-ring"]["metadata"]["name"]
    assert docs["PodDisruptionBudget/peer-ring-kv"]["spec"]["maxUnavailable"] == 1


EMBEDDED = DEPLOY / "embedded"


def embedded_documents() -> dict[str, dict]:
    found: dict[str, dict] = {}
    for doc in yaml.safe_load_all((EMBEDDED / "sessions.yaml").read_text()):
        if doc:
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


@pytest.mark.k8s
async def test_embedded_manifests_pass_server_side_dry_run(env) -> None:
    namespace = await env.create_namespace(env.namespace + "-embedded")
    result = env.cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        str(DEPLOY / "rbac.yaml"),
        "-f",
        str(EMBEDDED),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for line in (
        "secret/peer-ring-sessions-token created (server dry run)",
        "service/peer-ring-sessions created (server dry run)",
        "deployment.apps/peer-ring-sessions created (server dry run)",
        "poddisruptionbudget.policy/peer-ring-sessions created (server dry run)",
    ):
        assert line in result.stdout, result.stdout


def test_embedded_app_leaves_within_its_grace_period_with_the_token_from_a_secret() -> None:
    docs = embedded_documents()
    pod = docs["Deployment/peer-ring-sessions"]["spec"]["template"]["spec"]
    (app,) = pod["containers"]
    env = {e["name"]: e for e in app["env"]}
    leave = float(env["PEER_RING_LEAVE_DEADLINE"]["value"])
    pre_stop = app["lifecycle"]["preStop"]["sleep"]["seconds"]
    # SIGKILL must not cut the handoff short.
    assert pre_stop + leave < pod["terminationGracePeriodSeconds"]
    secret = env["PEER_RING_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert f"Secret/{secret['name']}" in docs
    # The discovery's Service is the headless one of this file, not-ready pods included.
    service = docs[f"Service/{env['PEER_RING_K8S_SERVICE']['value']}"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert app["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["serviceAccountName"] == documents()["ServiceAccount/peer-ring"]["metadata"]["name"]


def test_the_embedded_app_builds_kubernetes_discovery_inside_a_pod(monkeypatch, tmp_path) -> None:
    import importlib.util

    from peer_ring.discovery.k8s import KubernetesDiscovery

    monkeypatch.setenv("POD_IP", "10.1.2.3")
    monkeypatch.setenv("POD_NAMESPACE", "default")
    monkeypatch.setenv("PEER_RING_K8S_SERVICE", "peer-ring-sessions")
    monkeypatch.setenv("PEER_RING_PEER_PORT", "7101")
    monkeypatch.setenv("PEER_RING_TOKEN", "s3cret")
    monkeypatch.setenv("PEER_RING_LEAVE_DEADLINE", "30")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    pytest.importorskip("fastapi", reason="the tutorial app needs fastapi (requirements-dev)")
    path = REPO / "packages/peer-ring-kv-store/examples/sessions_app.py"
    spec = importlib.util.spec_from_file_location("embedded_sessions_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # builds the store, starts nothing
    assert isinstance(module.discovery, KubernetesDiscovery)
    assert module.ME == "10.1.2.3:7101"
    assert module.kv.node.config.token == "s3cret"
    assert module.kv.node.config.leave_deadline == 30.0
