"""KubernetesDiscovery against a real kube-apiserver (the ``kube`` fixture in conftest.py).

There is no kubelet or EndpointSlice controller: each test writes the EndpointSlices (or
Pods and their status) as the controllers would, and checks what discovery reports.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from peer_ring.discovery.k8s import KubernetesDiscoveryError

pytestmark = pytest.mark.k8s

SELF = "10.1.0.1:7101"


async def test_peers_appear_and_leave(env) -> None:
    await env.put_slice("kv-a", [env.endpoint("10.1.0.1"), env.endpoint("10.1.0.2")])
    discovery = env.discovery()
    initial = await discovery.start()
    assert env.addresses(initial) == {SELF, "10.1.0.2:7101"}
    recorder = env.record(discovery)

    await env.put_slice("kv-b", [env.endpoint("10.1.0.3")])
    await recorder.wait_for({SELF, "10.1.0.2:7101", "10.1.0.3:7101"})

    await env.put_slice("kv-a", [env.endpoint("10.1.0.1")])
    await recorder.wait_for({SELF, "10.1.0.3:7101"})

    await env.delete("endpointslices", "kv-b")
    await recorder.wait_for({SELF})
    # Full snapshots, each different from the one before it: nothing emitted twice.
    keys = [frozenset(env.addresses(s)) for s in recorder.snapshots]
    assert all(a != b for a, b in itertools.pairwise(keys))


async def test_self_is_a_member_before_the_service_lists_it(env) -> None:
    await env.put_slice("kv-a", [env.endpoint("10.1.0.2")])
    discovery = env.discovery(pod_name="kv-self")
    members = await discovery.start()
    assert env.addresses(members) == {SELF, "10.1.0.2:7101"}
    me = next(m for m in members if m.address == SELF)
    assert me.metadata["pod"] == "kv-self"


async def test_not_ready_peers_are_members_and_terminating_ones_are_not(env) -> None:
    # A cold start: nobody is ready yet, yet all must form one ring.
    await env.put_slice(
        "kv-a",
        [
            env.endpoint("10.1.0.1", ready=False),
            env.endpoint("10.1.0.2", ready=False),
            env.endpoint("10.1.0.3", ready=False),
        ],
    )
    discovery = env.discovery()
    assert env.addresses(await discovery.start()) == {SELF, "10.1.0.2:7101", "10.1.0.3:7101"}
    recorder = env.record(discovery)

    # 10.1.0.2 gets SIGTERM: its endpoint turns terminating (still "ready" while it
    # drains, as with publishNotReadyAddresses) and must leave the ring at once.
    await env.put_slice(
        "kv-a",
        [
            env.endpoint("10.1.0.1", ready=True),
            env.endpoint("10.1.0.2", ready=True, terminating=True),
            env.endpoint("10.1.0.3", ready=False),
        ],
    )
    await recorder.wait_for({SELF, "10.1.0.3:7101"})


async def test_zone_is_in_metadata_and_irrelevant_updates_are_not_emitted(env) -> None:
    await env.put_slice("kv-a", [env.endpoint("10.1.0.2", zone="zone-a", pod="kv-2")])
    discovery = env.discovery()
    members = await discovery.start()
    peer = next(m for m in members if m.address == "10.1.0.2:7101")
    assert dict(peer.metadata) == {"zone": "zone-a", "pod": "kv-2"}
    recorder = env.record(discovery)

    # A label change and a readiness flip change nothing discovery reports...
    await env.put_slice(
        "kv-a", [env.endpoint("10.1.0.2", zone="zone-a", pod="kv-2")], labels={"x": "1"}
    )
    await env.put_slice("kv-a", [env.endpoint("10.1.0.2", zone="zone-a", pod="kv-2", ready=False)])
    # ...a zone change does: metadata is part of a snapshot's identity.
    await env.put_slice("kv-a", [env.endpoint("10.1.0.2", zone="zone-b", pod="kv-2")])

    def zone_of_peer() -> str | None:
        if not recorder.snapshots:
            return None
        peer = next(m for m in recorder.snapshots[-1] if m.address == "10.1.0.2:7101")
        return peer.metadata.get("zone")

    await env.wait_until(lambda: zone_of_peer() == "zone-b")
    # Events arrive in order, so the no-op updates were processed before the zone
    # change, and produced no snapshot of their own.
    assert len(recorder.snapshots) == 1, recorder.snapshots

    await env.put_slice("kv-b", [env.endpoint("10.1.0.3", zone="zone-c")])
    last = await recorder.wait_for({SELF, "10.1.0.2:7101", "10.1.0.3:7101"})
    zones = {m.address: m.metadata.get("zone") for m in last}
    assert zones == {SELF: None, "10.1.0.2:7101": "zone-b", "10.1.0.3:7101": "zone-c"}
    assert len(recorder.snapshots) == 2


async def test_slices_of_other_services_are_ignored(env) -> None:
    await env.put_slice("other-a", [env.endpoint("10.9.0.1")], service="other")
    await env.put_slice("kv-a", [env.endpoint("10.1.0.2")])
    discovery = env.discovery()
    assert env.addresses(await discovery.start()) == {SELF, "10.1.0.2:7101"}


async def test_pods_mode_follows_pod_ips_and_deletion(env) -> None:
    # No controller manager: create the default ServiceAccount that pod admission wants.
    await env.request(
        "POST",
        env.path("serviceaccounts"),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}},
    )

    async def make_pod(name: str, ip: str | None) -> None:
        pod = await env.request(
            "POST",
            env.path("pods"),
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "kv"}},
                # Bound to a node, so deletion is graceful (the pod stays terminating,
                # waiting for a kubelet that never comes), as on a real cluster.
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "kv"}]},
            },
        )
        if ip:
            pod["status"] = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
            await env.request("PUT", env.path("pods", f"{name}/status"), pod)

    await make_pod("kv-1", "10.1.0.1")
    await make_pod("kv-2", "10.1.0.2")
    await make_pod("kv-3", None)  # scheduled, no IP yet: not a member yet
    discovery = env.discovery(mode="pods", label_selector="app=kv", service=None)
    members = await discovery.start()
    assert env.addresses(members) == {SELF, "10.1.0.2:7101"}
    assert {m.metadata.get("node") for m in members if m.address != SELF} == {"node-1"}
    recorder = env.record(discovery)

    pod3 = await env.request("GET", env.path("pods", "kv-3"))
    pod3["status"] = {"phase": "Pending", "podIP": "10.1.0.3", "podIPs": [{"ip": "10.1.0.3"}]}
    await env.request("PUT", env.path("pods", "kv-3/status"), pod3)
    await recorder.wait_for({SELF, "10.1.0.2:7101", "10.1.0.3:7101"})

    await env.delete("pods", "kv-2")  # graceful: deletionTimestamp set, pod still there
    pod2 = await env.request("GET", env.path("pods", "kv-2"))
    assert pod2["metadata"].get("deletionTimestamp")
    await recorder.wait_for({SELF, "10.1.0.3:7101"})


async def test_watch_is_resumed_after_the_server_ends_it_without_relisting(env) -> None:
    # watch_timeout=1: the server closes each watch after 1-2 s; discovery must resume
    # from the last resourceVersion (no relist) and miss nothing in between.
    discovery = env.discovery(watch_timeout=1)
    await discovery.start()
    recorder = env.record(discovery)
    expected = {SELF}
    for i in range(2, 6):
        await env.put_slice(f"kv-{i}", [env.endpoint(f"10.1.0.{i}")])
        expected.add(f"10.1.0.{i}:7101")
        await recorder.wait_for(set(expected))
        watches = discovery.stats.watches
        await env.wait_until(lambda w=watches: discovery.stats.watches > w)
    assert discovery.stats.lists == 1
    assert discovery.stats.expired == 0
    assert discovery.stats.watches >= 5


async def test_bookmarks_advance_a_quiet_watch(env) -> None:
    # Slices of another Service change; this watch gets no events for them, but the
    # server's bookmarks move its resourceVersion, so a reconnect resumes from a recent
    # version rather than one that may have been compacted (a 410 and a full relist).
    discovery = env.discovery(watch_timeout=3)
    await discovery.start()
    listed_at = int(discovery.stats.resource_version)
    async with asyncio.timeout(60):
        i = 0
        while not discovery.stats.bookmarks:
            i += 1
            await env.put_slice("other", [env.endpoint(f"10.9.0.{i % 250 + 1}")], service="other")
            await asyncio.sleep(0.5)  # paces the writes; the loop ends on the bookmark
    assert int(discovery.stats.resource_version) > listed_at
    assert discovery.stats.events == 0
    assert discovery.stats.lists == 1
    assert env.addresses(discovery.members) == {SELF}


async def test_start_fails_clearly_when_the_api_server_is_unreachable(env, tmp_path) -> None:
    closed = f"https://127.0.0.1:{env.free_port()}"
    kubeconfig = env.write_kubeconfig(
        tmp_path / "closed.kubeconfig", closed, env.cluster.ca_cert, token="x"
    )
    discovery = env.discovery(kubeconfig=kubeconfig, startup_timeout=1.0)
    with pytest.raises(KubernetesDiscoveryError, match="cannot reach the Kubernetes API server"):
        await discovery.start()
    assert discovery.stats.errors >= 1


async def test_stop_ends_watch_and_is_idempotent(env) -> None:
    discovery = env.discovery()
    await discovery.start()
    recorder = env.record(discovery)
    await discovery.stop()
    await discovery.stop()
    assert recorder.task is not None
    async with asyncio.timeout(10):
        await recorder.task  # watch() ended by itself after stop()
    assert recorder.snapshots == []
