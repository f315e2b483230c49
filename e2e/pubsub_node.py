"""A pub-sub node process for the e2e scenario ``scenarios/test_pubsub.py``.

Every process embeds a ``PubSub`` node (FileDiscovery on a shared peers file). With
``--publish`` it also publishes to topic ``e2e`` (N=3, W=2) until ``<dir>/stop`` exists,
appending every *acknowledged* publish to ``<dir>/acked`` (``partition offset data``), then
replays every partition from offset 0 into ``<dir>/seen`` and writes ``<dir>/done``.
Readiness is the file ``<dir>/ready-<port>``.

    python e2e/pubsub_node.py --self 127.0.0.1:7301 --peers-file peers --dir out [--publish]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from pathlib import Path

from peer_ring.core import PeerRingConfig
from peer_ring.discovery.static import FileDiscovery
from peer_ring.pubsub import PartitionUnavailableError, PublishError, PubSub, PubSubError

TOPIC = "e2e"
PARTITIONS = 8
CONFIG = PeerRingConfig(
    replication=3,
    quorum=2,
    request_timeout=2.0,
    down_after=3.0,
    anti_entropy_interval=None,
)


async def publish(ps: PubSub, out: Path, workers: int = 8) -> None:
    topic = ps.topic(TOPIC, partitions=PARTITIONS)
    stop = out / "stop"
    acked = (out / "acked").open("a", buffering=1)
    counter = iter(range(10**9))

    async def worker() -> None:
        while not stop.exists():
            i = next(counter)
            data = f"m-{i}"
            while True:  # an unacknowledged publish is retried with the same msg_id
                try:
                    r = await topic.publish(data.encode(), key=f"k{i % 32}", msg_id=data)
                    break
                except (PublishError, PartitionUnavailableError):
                    if stop.exists():
                        return
            acked.write(f"{r.partition} {r.offset} {data}\n")
            await asyncio.sleep(0.01)  # about 100 publishes/s per worker: a shared machine

    await asyncio.gather(*(worker() for _ in range(workers)))
    acked.close()
    with (out / "seen").open("w") as seen:
        async for m in topic.read(start=0):
            seen.write(f"{m.partition} {m.offset} {m.data.decode()}\n")
    (out / "done").write_text("ok")


ACK_WAIT = 5.0


async def consume(ps: PubSub, out: Path, name: str) -> None:
    """A member of group ``workers``: log every receipt and ack (with wall-clock times)."""
    topic = ps.topic(TOPIC, partitions=PARTITIONS)
    log = (out / f"consumer-{name}").open("a", buffering=1)
    async with topic.subscribe(group="workers", ack_wait=ACK_WAIT, max_in_flight=16) as sub:
        while not (out / "stop-consumers").exists():
            msg = await sub.next(timeout=0.5)
            if msg is None:
                continue
            log.write(f"{time.time():.6f} recv {msg.partition} {msg.offset} {msg.deliveries}\n")
            await asyncio.sleep(0.2 if name == "b" else 0.005)  # the work (b is slow)
            try:
                await msg.ack()
            except PubSubError as exc:
                log.write(f"{time.time():.6f} ackfail {msg.partition} {msg.offset} {exc.code}\n")
                continue
            log.write(f"{time.time():.6f} ack {msg.partition} {msg.offset} {msg.deliveries}\n")
    log.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--self", required=True)
    parser.add_argument("--peers-file", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--publish", action="store_true")
    parser.add_argument("--consume", default="", help="consumer name (group 'workers')")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.dir)
    discovery = FileDiscovery(args.peers_file, args.self, poll_interval=0.2)
    ps = PubSub(discovery, replication=3, quorum=2, config=CONFIG, timeout=20.0)
    ps.topic(TOPIC, partitions=PARTITIONS)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    async with ps:
        await ps.node.wait_ready(60)
        (out / f"ready-{args.self.rsplit(':', 1)[1]}").write_text(str(os.getpid()))
        if args.publish:
            await publish(ps, out)
            await stopping.wait()  # keep serving: its partitions must not vanish at the end
        elif args.consume:
            await consume(ps, out, args.consume)
            await stopping.wait()
        else:
            await stopping.wait()


if __name__ == "__main__":
    asyncio.run(main())
