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
