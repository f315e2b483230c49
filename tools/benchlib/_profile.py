"""Turning a node's profile into "where does the time go", by layer.

Two sources: py-spy's raw (collapsed) stacks, sampled from outside the process with no
instrumentation overhead, and cProfile's ``pstats`` (exact call counts, but it slows the
profiled node down). Both are reduced the same way: each sample's (or function's) *self*
time is charged to the layer its file belongs to. Time spent in C code (protobuf's upb
parser, gRPC's Cython layer, uvloop) is charged to the Python frame that called it, since
neither py-spy (without ``--native``) nor cProfile sees inside those.
"""

from __future__ import annotations

import pstats
import re
from collections import Counter
from pathlib import Path
from typing import Any

#: (layer, substrings of a file path) in match order. py-spy shortens paths to their last
#: package folders (``core/transport/_outbound.py``), cProfile gives them in full.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("transport (peer_ring.core.transport)", ("core/transport/",)),
    ("coordinator (peer_ring.core)", ("core/_", "peer_ring/core/")),
    ("kv engine (peer_ring.kv._engine)", ("kv/_engine",)),
    ("kv store API + encode/decode (peer_ring.kv)", ("kv/_", "peer_ring/kv/")),
    ("grpc.aio (Python/Cython glue)", ("grpc/",)),
    ("protobuf", ("google/protobuf",)),
    ("event loop (asyncio, uvloop)", ("asyncio/", "uvloop/")),
    ("benchmark harness (benchlib)", ("benchlib/",)),
)

#: py-spy's leaf when the main thread is inside the loop's C code with no Python frame
#: above ``Runner.run``: waiting in epoll *or* running uvloop internals (py-spy's idle
#: detection does not work in this container, so the two cannot be told apart).
LOOP_LEAF = "Runner.run (asyncio/runners.py"

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def layer_of(path: str) -> str:
    """The layer a source file belongs to."""
    for layer, needles in LAYERS:
        if any(needle in path for needle in needles):
            return layer
    return "other"


def analyze_py_spy(path: Path, top: int = 20) -> dict[str, Any]:
    """Layers and hottest lines of the *main thread* in a py-spy ``--threads --format raw``
    file (the event loop's thread: where every Python-level operation runs)."""
    layers: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    loop_leaf = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            if not frames[0].endswith("MainThread"):
                continue  # gRPC's poller thread, blocked in the completion queue
            frames = frames[1:]
        if not frames:
            continue
        count = int(count_text)
        leaf = frames[-1]
        total += count
        if leaf.startswith(LOOP_LEAF):
            loop_leaf += count
            layers["event loop: epoll wait or uvloop C code"] += count
            continue
        match = _FRAME.match(leaf)
        file = match.group("file") if match else leaf
        layers[layer_of(file)] += count
        leaves[leaf] += count
    return {
        "source": "py-spy (main thread, wall-clock samples incl. idle)",
        "samples": total,
        "loop_leaf_samples": loop_leaf,
        "layers": _shares(layers, total),
        "top_self": _shares(leaves, total, top),
    }


def analyze_cprofile(path: Path, top: int = 25) -> dict[str, Any]:
    """Layers (by self time) and hottest functions of a cProfile dump."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    layers: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    calls: dict[str, int] = {}
    total = 0.0
    for (file, line, func), (_cc, ncalls, tottime, _ct, _callers) in raw.items():
        where = "~" if file == "~" else _short(file)
        name = f"{func} ({where}:{line})"
        layers[layer_of(file) if file != "~" else _builtin_layer(func)] += tottime
        functions[name] += tottime
        calls[name] = int(ncalls)
        total += tottime
    top_self = _shares(functions, total, top)
    for entry in top_self:
        entry["calls"] = calls.get(entry["name"], 0)
    return {
        "source": "cProfile",
        "seconds": total,
        "layers": _shares(layers, total),
        "top_self": top_self,
    }


def _builtin_layer(func: str) -> str:
    # cProfile names C functions like "<method 'SerializeToString' of ... objects>".
    if "google" in func or "protobuf" in func or "Serialize" in func or "FromString" in func:
        return "protobuf"
    if "uvloop" in func or "asyncio" in func or "_asyncio" in func:
        return "event loop (asyncio, uvloop)"
    if "grpc" in func or "cygrpc" in func:
        return "grpc.aio (Python/Cython glue)"
    return "builtins (C functions)"


def _short(path: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.rsplit("/", 2)[-1] if "/" in path else path


def _shares(counter: Counter[str], total: float, top: int | None = None) -> list[dict[str, Any]]:
    items = counter.most_common(top)
    return [
        {"name": name, "share": (value / total) if total else 0.0, "value": value}
        for name, value in items
    ]


def format_profile(summary: dict[str, Any]) -> str:
    """A short text rendering for the terminal."""
    lines = [f"profile of node 0 ({summary['source']}): share of its Python main thread"]
    for entry in summary["layers"]:
        lines.append(f"  {entry['share'] * 100:5.1f}%  {entry['name']}")
    lines.append("  hottest functions (self time):")
    for entry in summary["top_self"][:15]:
        calls = f"  [{entry['calls']} calls]" if "calls" in entry else ""
        lines.append(f"  {entry['share'] * 100:5.1f}%  {entry['name']}{calls}")
    return "\n".join(lines)
