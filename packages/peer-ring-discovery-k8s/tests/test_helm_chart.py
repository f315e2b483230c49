"""The Helm chart in deploy/helm/peer-ring-kv: lints, renders what its README promises,
refuses settings that cannot work, and its rendering is accepted by a real API server.

``helm`` is built from its Go module by ``tools/helm-test-env`` (``.ci/run`` does it);
without it these tests skip on a laptop and fail in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "deploy" / "helm" / "peer-ring-kv"
CACHED_HELM = Path(os.environ.get("PEER_RING_CACHE", Path.home() / ".cache" / "peer-ring"))
RELEASE = "kv"


def helm_binary() -> str | None:
    explicit = os.environ.get("PEER_RING_HELM")
    if explicit:
        return shutil.which(explicit)
    found = shutil.which("helm")
    if found:
        return found
    cached = CACHED_HELM / "bin" / "helm"
    return str(cached) if cached.is_file() and os.access(cached, os.X_OK) else None


@pytest.fixture
def helm(require_component: Any) -> str:
    binary = helm_binary()
    require_component(
        "helm",
        binary is not None,
        "bash tools/helm-test-env (builds helm from its Go module into ~/.cache/peer-ring/bin)",
    )
    assert binary is not None
    return binary


def run(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def render(helm: str, *sets: str, namespace: str = "default") -> dict[str, dict]:
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    for item in sets:
        args += ["--set", item]
    result = run(helm, *args)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_chart_lints(helm: str) -> None:
    result = run(helm, "lint", str(CHART), "--strict")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_objects_match_the_readme(helm: str) -> None:
    docs = render(helm)
    assert sorted(docs) == [
        "PodDisruptionBudget/kv-peer-ring-kv",
        "Role/kv-peer-ring-kv-discovery",
        "RoleBinding/kv-peer-ring-kv-discovery",
        "Secret/kv-peer-ring-kv",
        "Service/kv-peer-ring-kv",
        "Service/kv-peer-ring-kv-peers",
        "ServiceAccount/kv-peer-ring-kv",
        "StatefulSet/kv-peer-ring-kv",
    ]
    headless = docs["Service/kv-peer-ring-kv-peers"]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    role = docs["Role/kv-peer-ring-kv-discovery"]
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        }
    ]
    sts = docs["StatefulSet/kv-peer-ring-kv"]["spec"]
    pod = sts["template"]["spec"]
    (node,) = pod["containers"]
    env = {e["name"]: e for e in node["env"]}
    assert env["PEER_RING_K8S_SERVICE"]["value"] == "kv-peer-ring-kv-peers"
    assert env["PEER_RING_HTTP_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "kv-peer-ring-kv"
    assert node["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The whole shutdown (preStop, then the handoff) fits in the grace period.
    pre_stop = int(node["lifecycle"]["preStop"]["exec"]["command"][1])
    leave = float(env["PEER_RING_LEAVE_DEADLINE"]["value"])
    assert pre_stop + leave < pod["terminationGracePeriodSeconds"]
    # The collector settings are Python's own unless asked for.
    assert "PEER_RING_GC_THRESHOLD" not in env
    assert "PEER_RING_GC_FREEZE_AFTER_START" not in env
    assert pod["serviceAccountName"] == "kv-peer-ring-kv"
    assert sts["podManagementPolicy"] == "Parallel"
    assert docs["PodDisruptionBudget/kv-peer-ring-kv"]["spec"]["maxUnavailable"] == 1
    assert len(docs["Secret/kv-peer-ring-kv"]["data"]["http-token"]) > 40  # random, base64


def test_values_reach_the_nodes(helm: str) -> None:
    docs = render(
        helm,
        "cluster.replication=5",
        "cluster.quorum=3",
        "auth.existingSecret=mine",
        "podDisruptionBudget.enabled=false",
        "gc.threshold=20000",
        "gc.freezeAfterStart=true",
    )
    assert "Secret/kv-peer-ring-kv" not in docs
    assert "PodDisruptionBudget/kv-peer-ring-kv" not in docs
    (node,) = docs["StatefulSet/kv-peer-ring-kv"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in node["env"]}
    assert env["PEER_RING_REPLICATION"]["value"] == "5"
    assert env["PEER_RING_QUORUM"]["value"] == "3"
    assert env["PEER_RING_HTTP_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "mine"
    assert env["PEER_RING_GC_THRESHOLD"]["value"] == "20000"
    assert env["PEER_RING_GC_FREEZE_AFTER_START"]["value"] == "true"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["terminationGracePeriodSeconds=30"], "exceeds terminationGracePeriodSeconds"),
        (["cluster.leaveDeadline=120"], "the kubelet would kill the node"),
        (["cluster.quorum=4"], "cannot exceed cluster.replication"),
    ],
)
def test_settings_that_cannot_work_are_refused(helm: str, sets: list[str], message: str) -> None:
    args = ["template", RELEASE, str(CHART)]
    for item in sets:
        args += ["--set", item]
    result = run(helm, *args)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.k8s
async def test_rendered_chart_passes_server_side_dry_run(
    helm: str, env: Any, tmp_path: Path
) -> None:
    namespace = await env.create_namespace(env.namespace + "-helm")
    result = run(helm, "template", RELEASE, str(CHART), "--namespace", namespace)
    assert result.returncode == 0, result.stderr
    manifest = tmp_path / "chart.yaml"
    manifest.write_text(result.stdout)
    applied = env.cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(manifest), check=False
    )
    assert applied.returncode == 0, applied.stderr
    for line in (
        "serviceaccount/kv-peer-ring-kv created (server dry run)",
        "secret/kv-peer-ring-kv created (server dry run)",
        "role.rbac.authorization.k8s.io/kv-peer-ring-kv-discovery created (server dry run)",
        "rolebinding.rbac.authorization.k8s.io/kv-peer-ring-kv-discovery created (server dry run)",
        "service/kv-peer-ring-kv-peers created (server dry run)",
        "service/kv-peer-ring-kv created (server dry run)",
        "statefulset.apps/kv-peer-ring-kv created (server dry run)",
        "poddisruptionbudget.policy/kv-peer-ring-kv created (server dry run)",
    ):
        assert line in applied.stdout, applied.stdout
