"""Applications use only the public core contract (issue 11).

The KV store, the rate limiter and pub-sub (``packages/*/src/peer_ring/{kv,ratelimit,
pubsub}``) may import ``peer_ring.core`` and ``peer_ring.core.testing`` only: never the
transport module, a private ``peer_ring.core._*`` module, or the wire types ``Request``,
``Response``, ``Status`` and ``TransferRequest``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPLICATIONS = ("kv", "ratelimit", "pubsub")
WIRE_TYPES = frozenset({"Request", "Response", "Status", "TransferRequest"})
#: Any mention of a private core module or of the transport in code (import strings too).
FORBIDDEN_TEXT = re.compile(r"peer_ring\.core\.(?:_\w+|transport)\b")


def application_sources() -> list[Path]:
    files: list[Path] = []
    for app in APPLICATIONS:
        files.extend(sorted(ROOT.glob(f"packages/*/src/peer_ring/{app}/**/*.py")))
    return files


def violations(path: Path) -> list[str]:
    source = path.read_text()
    found: list[str] = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            found += [f"import {n}" for n in names if FORBIDDEN_TEXT.match(n)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if FORBIDDEN_TEXT.match(node.module):
                found.append(f"from {node.module} import ...")
            elif node.module == "peer_ring.core":
                found += [
                    f"from peer_ring.core import {a.name}"
                    for a in node.names
                    if a.name in WIRE_TYPES
                ]
    for lineno, line in enumerate(source.splitlines(), 1):
        code = line.split("#", 1)[0]
        if FORBIDDEN_TEXT.search(code) and not code.lstrip().startswith(("from ", "import ")):
            found.append(f"line {lineno}: {line.strip()}")
    return found


def test_the_kv_store_is_covered() -> None:
    files = {p.relative_to(ROOT).as_posix() for p in application_sources()}
    assert "packages/peer-ring-kv-store/src/peer_ring/kv/_store.py" in files


@pytest.mark.parametrize(
    "path", application_sources(), ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_applications_use_only_the_public_core(path: Path) -> None:
    rel = path.relative_to(ROOT).as_posix()
    found = violations(path)
    assert not found, f"{rel} reaches past the public core contract: {found}"


def test_the_checker_catches_each_kind_of_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import peer_ring.core.transport\n"
        "from peer_ring.core._node import PeerRing\n"
        "from peer_ring.core import Request, PeerRing, Status\n"
        "from peer_ring.core.transport._base import Transport\n"
        "mod = importlib.import_module('peer_ring.core._sync')\n"
    )
    found = violations(bad)
    assert len(found) == 6, found
    good = tmp_path / "good.py"
    good.write_text(
        "from peer_ring.core import Command, PeerRing, Transport\n"
        "from peer_ring.core.testing import MemoryNetwork\n"
    )
    assert violations(good) == []
