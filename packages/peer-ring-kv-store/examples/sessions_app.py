"""The tutorial's service (docs/tutorial.md): FastAPI replicas sharing login sessions through
the embedded peer-ring key-value store, no Redis or database.

Run three replicas (three terminals, or `&`), each with its own HTTP port and peer address:

    export PEERS=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
    ME=127.0.0.1:7101 uvicorn sessions_app:app --port 8001
    ME=127.0.0.1:7102 uvicorn sessions_app:app --port 8002
    ME=127.0.0.1:7103 uvicorn sessions_app:app --port 8003

Then log in on one replica and read the session on another:

    curl -X POST 'localhost:8001/login?user=alice'          # {"session": "...", ...}
    curl -H 'x-session: <session>' localhost:8002/me        # {"user": "alice", ...}

On Kubernetes (deploy/embedded/ in the repository), ``POD_IP`` is set by the downward API and
the replicas find each other through ``KubernetesDiscovery`` instead of ``PEERS``; the
shared token (``PEER_RING_TOKEN``, from a Secret) and the leave deadline
(``PEER_RING_LEAVE_DEADLINE``) come from the environment.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Header, HTTPException

from peer_ring.core import Discovery, PeerRingConfig
from peer_ring.discovery.static import StaticDiscovery
from peer_ring.kv import KVStore

SESSION_TTL = 3600.0  # seconds; the store expires sessions by itself


def discover() -> Discovery:
    """Kubernetes when running in a pod (``POD_IP`` set), else the static ``PEERS`` list."""
    if os.environ.get("POD_IP"):
        from peer_ring.discovery.k8s import KubernetesDiscovery

        return KubernetesDiscovery.from_env()  # PEER_RING_K8S_SERVICE, PEER_RING_PEER_PORT
    peers = os.environ.get("PEERS", "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103").split(",")
    return StaticDiscovery(peers, self_address=os.environ.get("ME", peers[0]))


discovery = discover()
ME = discovery.self_address  # this replica's peer address

# Every session on all 3 replicas; a write or read waits for 2 of them, so one replica
# can crash (kill -9) without losing or blocking anything.
kv = KVStore(
    discovery,
    replication=3,
    quorum=2,
    config=PeerRingConfig(
        # A graceful shutdown (SIGTERM) hands the data off within this many seconds.
        leave_deadline=float(os.environ.get("PEER_RING_LEAVE_DEADLINE", "10")),
        # Peers must present this secret (a Kubernetes Secret in deploy/embedded/).
        token=os.environ.get("PEER_RING_TOKEN") or None,
    ),
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with kv:  # joins the ring; leaves it gracefully on shutdown
        await kv.wait_ready(timeout=60)  # serve once this replica pulled its data
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/login")
async def login(user: str) -> dict[str, Any]:
    """Create a session for ``user``, readable on every replica."""
    session = secrets.token_urlsafe(16)
    await kv.set(f"session:{session}", {"user": user}, ttl=SESSION_TTL)
    return {"session": session, "served_by": ME}


@app.get("/me")
async def me(x_session: str = Header()) -> dict[str, Any]:
    """The session's user, whichever replica created it."""
    data = await kv.get(f"session:{x_session}")
    if data is None:
        raise HTTPException(status_code=401, detail="unknown or expired session")
    return {"user": data["user"], "served_by": ME}


@app.post("/logout")
async def logout(x_session: str = Header()) -> dict[str, Any]:
    """End the session on every replica."""
    await kv.delete(f"session:{x_session}")
    return {"ok": True}


@app.get("/readyz")
async def readyz() -> dict[str, Any]:
    """Readiness: 503 until this replica joined and pulled its data (Kubernetes probes)."""
    if not kv.ready:
        raise HTTPException(status_code=503, detail="not ready")
    return {"ready": True}


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    """Liveness, and how many members this replica sees."""
    return {"ready": kv.ready, "members": len(kv.node.ring.members), "me": ME}
