"""Print the README's simulation figures: ``python -m peer_ring.discovery.gossip.testing``."""

from __future__ import annotations

import statistics
import sys
import time

from peer_ring.discovery.gossip.testing import _scenarios as s


def main() -> None:
    """Run every scenario and print one line per figure."""
    quick = "--quick" in sys.argv
    t0 = time.process_time()
    for n in (50, 100) if quick else (50, 100, 200):
        d = s.detection(n, 10 if quick else 20)
        print(
            f"kill -> dead in every view, {n} members: median {d.median:.1f} s, "
            f"p99 {d.p99:.1f} s, max {max(d.times):.1f} s ({len(d.times)} kills)"
        )
    for n in (100,) if quick else (100, 200):
        t = s.leave_times(n, 10)
        print(
            f"leave seen everywhere, {n} members: median {statistics.median(t):.2f} s, "
            f"max {max(t):.2f} s ({len(t)} leaves)"
        )
    r = s.rejoin_times(100, 5)
    print(
        f"restart on the same address -> alive again everywhere, 100 members: "
        f"max {max(r):.2f} s ({len(r)} restarts)"
    )
    a = s.lossy_run(100, 0.10, 300.0 if quick else 1800.0)
    print(
        f"10% loss, 100 members, {300 if quick else 1800} s: {a.suspicions} suspicions, "
        f"{a.deaths} false deaths, {a.refutations} refutations, converged {a.converged}"
    )
    for lag in (2.0, 4.0):
        on = s.starved_run(50, lag, 600.0, lifeguard=True)
        off = s.starved_run(50, lag, 600.0, lifeguard=False)
        print(
            f"one member {lag:.0f} s starved, 50 members, 600 s: false suspicions of others "
            f"{on.suspicions} with Lifeguard vs {off.suspicions} without; false deaths "
            f"{on.deaths} vs {off.deaths}"
        )
    for n in (50, 200):
        traffic = s.idle_traffic(n, 300.0)
        print(
            f"idle traffic, {n} members: {traffic.packets_per_second:.2f} packets/s and "
            f"{traffic.bytes_per_second:.0f} B/s per node "
            f"(max {traffic.max_packets_per_second:.2f}, {traffic.max_bytes_per_second:.0f} B/s)"
        )
    print(f"CPU {time.process_time() - t0:.0f} s")


if __name__ == "__main__":
    main()
