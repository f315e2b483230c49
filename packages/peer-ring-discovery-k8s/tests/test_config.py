"""Constructor and ``from_env`` validation (no API server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from peer_ring.core import Discovery, InvalidArgumentError
from peer_ring.discovery.k8s import KubernetesDiscovery


def test_implements_the_discovery_protocol_and_self_address_from_pod_ip() -> None:
    discovery = KubernetesDiscovery(namespace="ns", service="kv", port=7101, pod_ip="10.0.0.7")
    assert isinstance(discovery, Discovery)
    assert discovery.self_address == "10.0.0.7:7101"
    v6 = KubernetesDiscovery(namespace="ns", service="kv", port=7101, pod_ip="fd00::7")
    assert v6.self_address == "[fd00::7]:7101"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"namespace": "", "service": "kv"}, "namespace"),
        ({"namespace": "ns"}, "Service name"),
        ({"namespace": "ns", "mode": "pods"}, "label selector"),
        ({"namespace": "ns", "service": "kv", "mode": "nodes"}, "unknown mode"),
        ({"namespace": "ns", "service": "kv", "pod_ip": "not-an-ip"}, "not an IP"),
        ({"namespace": "ns", "service": "kv", "port": 0}, "port"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(
    kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"port": 7101, "pod_ip": "10.0.0.1", **kwargs}
    with pytest.raises(InvalidArgumentError, match=message):
        KubernetesDiscovery(**args)  # type: ignore[arg-type]


def test_from_env_reads_the_downward_api_variables() -> None:
    discovery = KubernetesDiscovery.from_env(
        environ={
            "POD_IP": "10.2.3.4",
            "POD_NAME": "kv-0",
            "POD_NAMESPACE": "prod",
            "PEER_RING_K8S_SERVICE": "kv",
            "PEER_RING_PEER_PORT": "7200",
        }
    )
    assert discovery.self_address == "10.2.3.4:7200"
    assert dict(next(iter(discovery.members)).metadata) == {"pod": "kv-0"}
    # An explicit port (the `serve` flag) wins over the variable.
    assert (
        KubernetesDiscovery.from_env(
            port=7300,
            environ={"POD_IP": "10.2.3.4", "POD_NAMESPACE": "prod", "PEER_RING_K8S_SERVICE": "kv"},
        ).self_address
        == "10.2.3.4:7300"
    )


def test_from_env_takes_the_namespace_from_the_service_account(tmp_path: Path) -> None:
    (tmp_path / "namespace").write_text("from-sa\n")
    discovery = KubernetesDiscovery.from_env(
        port=7101,
        environ={
            "POD_IP": "10.0.0.1",
            "PEER_RING_K8S_MODE": "pods",
            "PEER_RING_K8S_LABEL_SELECTOR": "app=kv",
        },
        service_account_dir=tmp_path,
    )
    assert discovery.self_address == "10.0.0.1:7101"
    assert discovery._namespace == "from-sa"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "POD_IP is not set"),
        ({"POD_IP": "10.0.0.1"}, "POD_NAMESPACE is not set"),
        (
            {"POD_IP": "10.0.0.1", "POD_NAMESPACE": "ns", "PEER_RING_K8S_SERVICE": "kv"},
            "PEER_RING_PEER_PORT",
        ),
        (
            {
                "POD_IP": "10.0.0.1",
                "POD_NAMESPACE": "ns",
                "PEER_RING_PEER_PORT": "1",
                "PEER_RING_K8S_MODE": "x",
            },
            "PEER_RING_K8S_MODE",
        ),
    ],
)
def test_from_env_names_the_missing_variable(
    environ: dict[str, str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        KubernetesDiscovery.from_env(environ=environ, service_account_dir=tmp_path)


async def test_watch_ends_after_stop_even_if_never_started() -> None:
    discovery = KubernetesDiscovery(namespace="ns", service="kv", port=7101, pod_ip="10.0.0.1")
    await discovery.stop()
    assert [s async for s in discovery.watch()] == []
    await discovery.stop()  # idempotent
