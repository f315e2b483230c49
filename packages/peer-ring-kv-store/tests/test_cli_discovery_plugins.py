"""``serve --discovery NAME``: discovery packages found through entry points.

The plugin here is installed for real: a ``*.dist-info`` folder with an
``entry_points.txt`` on ``sys.path``, which is exactly what ``pip install`` of a discovery
package leaves behind, so :mod:`importlib.metadata` finds it the same way.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from peer_ring.discovery.static import StaticDiscovery
from peer_ring.kv._discovery_plugins import available_discoveries, parse_options
from peer_ring.kv._serve_config import ServeConfig, UsageError, build_discovery, config_from
from peer_ring.kv.cli import build_parser

PLUGIN = """
from peer_ring.discovery.static import StaticDiscovery

calls = []

def from_serve_options(listen, options, environ):
    calls.append((listen, dict(options), environ.get("FAKE_ZONE")))
    unknown = set(options) - {"peers", "self"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; valid: peers, self")
    me = options.get("self") or listen
    if me is None:
        raise ValueError("needs --listen or self=HOST:PORT")
    return StaticDiscovery(options.get("peers", me).split(","), self_address=me)

def broken(listen, options, environ):
    return object()
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    (tmp_path / "fake_discovery_plugin.py").write_text(PLUGIN)
    info = tmp_path / "fake_discovery_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-discovery-plugin\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [peer_ring.discovery]
            fake = fake_discovery_plugin:from_serve_options
            broken = fake_discovery_plugin:broken
            missing = no_such_module_anywhere:factory
            static = fake_discovery_plugin:from_serve_options
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    module = importlib.import_module("fake_discovery_plugin")
    yield module
    sys.modules.pop("fake_discovery_plugin", None)


def parse(argv: list[str], env: dict[str, str] | None = None) -> ServeConfig:
    args = build_parser().parse_args(["serve", *argv])
    return config_from(args, env or {})


def test_installed_plugins_are_listed_after_the_builtins(plugin: object) -> None:
    names = available_discoveries()
    assert names[:2] == ("static", "kubernetes")
    assert {"fake", "broken", "missing"} <= set(names)
    assert names.count("static") == 1  # a plugin cannot replace a built-in


def test_flags_reach_the_factory(plugin: object) -> None:
    config = parse(
        [
            "--discovery=fake",
            "--listen=127.0.0.1:7101",
            "--discovery-option",
            "peers=127.0.0.1:7101,127.0.0.2:7101",
            "--discovery-option=self=127.0.0.1:7101",
        ]
    )
    assert config.discovery == "fake"
    assert dict(config.discovery_options) == {
        "peers": "127.0.0.1:7101,127.0.0.2:7101",
        "self": "127.0.0.1:7101",
    }
    discovery = build_discovery(config, {"FAKE_ZONE": "z1"})
    assert isinstance(discovery, StaticDiscovery)
    assert discovery.self_address == "127.0.0.1:7101"
    assert plugin.calls[-1] == (  # type: ignore[attr-defined]
        "127.0.0.1:7101",
        {"peers": "127.0.0.1:7101,127.0.0.2:7101", "self": "127.0.0.1:7101"},
        "z1",
    )


def test_environment_form(plugin: object) -> None:
    env = {
        "PEER_RING_DISCOVERY": "fake",
        "PEER_RING_DISCOVERY_OPTIONS": "self=127.0.0.3:7101  peers=127.0.0.3:7101",
    }
    config = parse([], env)
    assert config.listen is None  # plugins may supply the address themselves
    assert build_discovery(config, {}).self_address == "127.0.0.3:7101"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--discovery=nope", "--listen=127.0.0.1:1"], "unknown discovery 'nope'"),
        (["--discovery-option=a=1", "--listen=127.0.0.1:1"], "not the built-in 'static'"),
        (["--discovery=fake", "--discovery-option=novalue"], "expected KEY=VALUE"),
        (["--discovery=fake", "--discovery-option=a=1", "--discovery-option=a=2"], "twice"),
        (["--discovery=fake", "--peers=127.0.0.1:1"], "only used with static discovery"),
    ],
)
def test_bad_settings_are_usage_errors(plugin: object, argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse(argv)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--discovery=fake", "--discovery-option=color=red"], "fake discovery: unknown option"),
        (["--discovery=fake"], "needs --listen or self="),
        (["--discovery=broken", "--listen=127.0.0.1:7101"], "its factory returned object"),
        (["--discovery=missing", "--listen=127.0.0.1:7101"], "cannot load its package"),
        (
            ["--discovery=fake", "--listen=127.0.0.1:7101", "--discovery-option=self=127.0.0.9:1"],
            "differs from the address fake discovery publishes",
        ),
    ],
)
def test_factory_problems_are_usage_errors(plugin: object, argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_discovery(parse(argv), {})


def test_parse_options_keeps_commas_and_equals_in_values() -> None:
    got = parse_options([("endpoints=a:1,b:2 token=x=y", "env")])
    assert got == {"endpoints": "a:1,b:2", "token": "x=y"}


def test_local_cluster_passes_discovery_flags_instead_of_a_peer_list(tmp_path: Path) -> None:
    from peer_ring.kv._local_cluster import LocalCluster, NodeAddress

    addresses = [NodeAddress(f"127.0.0.{i}:7101", f"127.0.0.{i}:8101") for i in (1, 2)]

    def flags(address: NodeAddress) -> list[str]:
        return ["--discovery", "fake", "--discovery-option", f"self={address.peer}"]

    cluster = LocalCluster(addresses, log_dir=tmp_path, discovery_args=flags)
    first = cluster.nodes[0].command
    assert first[first.index("--discovery-option") + 1] == "self=127.0.0.1:7101"
    assert "--peers" not in first and "--peers-file" not in first
    # Membership follows the discovery: nodes can be added without a peers file.
    added = cluster.add_node(NodeAddress("127.0.0.3:7101", "127.0.0.3:8101"))
    assert "self=127.0.0.3:7101" in added.command
    with pytest.raises(ValueError, match="not both"):
        LocalCluster(addresses, log_dir=tmp_path, discovery_args=flags, peers_file=tmp_path / "p")


FAILING_PLUGIN = """
from peer_ring.core import PeerRingError


class Unreachable:
    def __init__(self, me):
        self.self_address = me

    async def start(self):
        raise PeerRingError("registry at 127.0.0.1:9 is unreachable (connection refused)")

    async def watch(self):
        yield frozenset()

    async def stop(self):
        pass


def from_serve_options(listen, options, environ):
    return Unreachable(listen)
"""


def test_a_registry_unreachable_at_start_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    import os
    import subprocess

    from peer_ring.core.testing import free_port

    (tmp_path / "failing_discovery_plugin.py").write_text(FAILING_PLUGIN)
    info = tmp_path / "failing_discovery_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: failing-discovery-plugin\n")
    (info / "entry_points.txt").write_text(
        "[peer_ring.discovery]\nfailing = failing_discovery_plugin:from_serve_options\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEER_RING_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    port = free_port("127.0.0.1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "peer_ring.kv.cli",
            "serve",
            "--discovery=failing",
            f"--listen=127.0.0.1:{port}",
            "--http=127.0.0.1:0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "the node failed to start: registry at 127.0.0.1:9 is unreachable" in proc.stderr
    assert "Traceback" not in proc.stderr
