"""Robust watching against a real API server: network cuts, 410 Gone, restarts.

A loopback TCP proxy (``proxy`` fixture) stands between discovery and the API server, so
a test can cut discovery off while the cluster keeps changing.
"""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.k8s

SELF = "10.1.0.1:7101"


async def test_network_cut_resumes_from_the_last_resource_version(
    env, proxy, proxied_kubeconfig
) -> None:
    await env.put_slice("kv-a", [env.endpoint("10.1.0.2")])
    discovery = env.discovery(kubeconfig=proxied_kubeconfig)
    assert env.addresses(await discovery.start()) == {SELF, "10.1.0.2:7101"}
    recorder = env.record(discovery)

    proxy.block()
    await env.wait_until(lambda: discovery.stats.errors >= 2)  # it noticed, and retried
    await env.put_slice("kv-b", [env.endpoint("10.1.0.3")])
    await env.delete("endpointslices", "kv-a")
    proxy.heal()

    await recorder.wait_for({SELF, "10.1.0.3:7101"})
    # The API server still had those events: resumed, no relist, nothing lost.
    assert discovery.stats.lists == 1
    assert discovery.stats.expired == 0


async def test_relists_after_410_when_its_resource_version_was_compacted(
    env, kube, proxy, proxied_kubeconfig
) -> None:
    control = kube.control  # skips on an external cluster
    seen = await env.put_slice("kv-a", [env.endpoint("10.1.0.2")])
    discovery = env.discovery(kubeconfig=proxied_kubeconfig)
    assert env.addresses(await discovery.start()) == {SELF, "10.1.0.2:7101"}
    recorder = env.record(discovery)

    proxy.block()
    await env.wait_until(lambda: discovery.stats.errors >= 1)
    # While discovery is cut off: a peer leaves, another joins, and history is compacted.
    await env.put_slice("kv-b", [env.endpoint("10.1.0.3")])
    await env.delete("endpointslices", "kv-a")
    await asyncio.to_thread(control.compact_etcd)
    old = int(seen["metadata"]["resourceVersion"])
    assert control.etcd_revision_compacted(old)  # etcd really lost the version discovery holds
    # The API server's watch cache would still replay it; a restart (as in any rolling
    # control-plane upgrade) drops the cache, so the watch must go to compacted history.
    await asyncio.to_thread(control.restart_apiserver)
    proxy.heal()

    await recorder.wait_for({SELF, "10.1.0.3:7101"})
    assert discovery.stats.expired >= 1
    assert discovery.stats.lists >= 2
    # The DELETED event of kv-a was compacted away; the relist still removed 10.1.0.2.
    assert "10.1.0.2:7101" not in env.addresses(discovery.members)


async def test_recovers_after_the_api_server_crashes_and_restarts(env, kube) -> None:
    control = kube.control
    await env.put_slice("kv-a", [env.endpoint("10.1.0.2")])
    discovery = env.discovery()
    await discovery.start()
    recorder = env.record(discovery)

    await asyncio.to_thread(control.stop_apiserver, kill=True)
    await env.wait_until(lambda: discovery.stats.errors >= 2)  # refused, retried with backoff
    await asyncio.to_thread(control.start_apiserver)
    await env.put_slice("kv-b", [env.endpoint("10.1.0.3")])
    await recorder.wait_for({SELF, "10.1.0.2:7101", "10.1.0.3:7101"})
    # Membership never flapped while the API server was away: the last known view held.
    assert all("10.1.0.2:7101" in env.addresses(s) for s in recorder.snapshots)
