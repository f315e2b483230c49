"""``peer-ring-kv serve`` settings: flags, environment variables, validation (no processes)."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable

import pytest

from peer_ring.core import DEFAULT_PARTITIONS
from peer_ring.discovery.static import StaticDiscovery
from peer_ring.kv import KVStore
from peer_ring.kv._serve_config import (
    DEFAULT_MAX_VALUE_BYTES,
    ENV_VARS,
    ServeConfig,
    UsageError,
    build_discovery,
    build_store,
    default_http_address,
    http_address,
    parse_size,
)
from peer_ring.kv.cli import build_parser, main


def parse(argv: list[str], env: dict[str, str] | None = None) -> ServeConfig:
    from peer_ring.kv._serve_config import config_from

    args = build_parser().parse_args(["serve", *argv])
    return config_from(args, env or {})


def test_defaults() -> None:
    config = parse(["--listen", "127.0.0.1:7101"])
    assert config.listen == "127.0.0.1:7101"
    assert config.http is None
    assert config.peers == ()
    assert config.discovery == "static"
    assert config.replication == 3
    assert config.quorum is None
    assert config.partitions == DEFAULT_PARTITIONS
    assert config.max_bytes is None
    assert config.max_value_bytes == DEFAULT_MAX_VALUE_BYTES
    assert config.request_timeout == 2.0
    assert config.token is None
    assert config.http_token is None
    assert config.log_level == "info"


def test_every_flag() -> None:
    config = parse(
        [
            "--listen=127.0.0.2:7101",
            "--http=0.0.0.0:9000",
            "--peers=127.0.0.1:7101, 127.0.0.2:7101,127.0.0.3:7101,127.0.0.1:7101",
            "--replication=5",
            "--quorum=3",
            "--partitions=256",
            "--max-bytes=64MiB",
            "--max-value-bytes=512k",
            "--request-timeout=0.5",
            "--token=peer-secret",
            "--http-token=http-secret",
            "--log-level=DEBUG",
        ]
    )
    assert config.http == ("0.0.0.0", 9000)
    # Spaces stripped, duplicates dropped, order kept.
    assert config.peers == ("127.0.0.1:7101", "127.0.0.2:7101", "127.0.0.3:7101")
    assert (config.replication, config.quorum, config.partitions) == (5, 3, 256)
    assert config.max_bytes == 64 << 20
    assert config.max_value_bytes == 512 << 10
    assert config.request_timeout == 0.5
    assert (config.token, config.http_token) == ("peer-secret", "http-secret")
    assert config.log_level == "debug"
    # Secrets stay out of logs and tracebacks.
    assert "secret" not in repr(config)


def test_environment_fills_missing_flags_and_flags_win() -> None:
    env = {
        "PEER_RING_SELF_ADDRESS": "127.0.0.3:7101",
        "PEER_RING_PEERS": "127.0.0.1:7101,127.0.0.3:7101",
        "PEER_RING_REPLICATION": "2",
        "PEER_RING_HTTP_TOKEN": "from-env",
        "PEER_RING_QUORUM": "",  # empty counts as unset
    }
    config = parse(["--replication", "1"], env)
    assert config.listen == "127.0.0.3:7101"
    assert config.peers == ("127.0.0.1:7101", "127.0.0.3:7101")
    assert config.replication == 1  # the flag wins over PEER_RING_REPLICATION
    assert config.http_token == "from-env"
    assert config.quorum is None


def test_every_option_has_an_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"], environ={})
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    # Every option serve's parser has (not a count copied from the code): a new flag
    # without a PEER_RING_* variable fails here.
    (subcommands,) = (
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    serve = subcommands.choices["serve"]
    options = {a.dest for a in serve._actions if a.option_strings and a.dest != "help"}
    assert options == set(ENV_VARS)
    for dest, env in ENV_VARS.items():
        assert env.startswith("PEER_RING_"), dest
        assert env in help_text, env


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "the peer address is required"),
        (["--listen", "nohost"], {}, "--listen: 'nohost' is not of the form host:port"),
        (["--listen", "127.0.0.1:0"], {}, "invalid port"),
        (["--listen", "127.0.0.1:70000"], {}, "invalid port"),
        (["--listen", "::1:7101"], {}, "brackets"),
        ([], {"PEER_RING_SELF_ADDRESS": "x:y"}, "PEER_RING_SELF_ADDRESS: 'x:y'"),
        (["--listen", "127.0.0.1:7101", "--peers", "a:1,b"], {}, "--peers: 'b'"),
        (["--listen", "127.0.0.1:7101", "--http", "127.0.0.1"], {}, "--http"),
        (["--listen", "127.0.0.1:7101", "--replication", "0"], {}, "--replication: must be >= 1"),
        (["--listen", "127.0.0.1:7101", "--replication", "x"], {}, "expected an integer"),
        (
            ["--listen", "127.0.0.1:7101", "--quorum", "4"],
            {},
            "quorum (4) cannot be greater than replication (3)",
        ),
        (
            ["--listen", "127.0.0.1:7101"],
            {"PEER_RING_QUORUM": "3", "PEER_RING_REPLICATION": "2"},
            "PEER_RING_QUORUM: quorum (3) cannot be greater than replication (2)",
        ),
        (["--listen", "127.0.0.1:7101", "--partitions", "0"], {}, "--partitions"),
        (
            ["--listen", "127.0.0.1:7101", "--peers", "127.0.0.2:1,127.0.0.3:1", "--partitions=2"],
            {},
            "3 peers cannot share 2 partitions",
        ),
        (["--listen", "127.0.0.1:7101", "--max-bytes", "lots"], {}, "--max-bytes"),
        (["--listen", "127.0.0.1:7101", "--max-value-bytes", "0"], {}, "must be > 0"),
        (
            ["--listen", "127.0.0.1:7101", "--max-bytes", "1K", "--max-value-bytes", "2K"],
            {},
            "could never be stored",
        ),
        (["--listen", "127.0.0.1:7101", "--request-timeout", "0"], {}, "--request-timeout"),
        (["--listen", "127.0.0.1:7101", "--request-timeout", "nan"], {}, "--request-timeout"),
        (["--listen", "127.0.0.1:7101", "--log-level", "loud"], {}, "--log-level"),
        (["--listen", "127.0.0.1:7101", "--http-token", "a b"], {}, "whitespace"),
        (["--listen", "127.0.0.1:65000"], {}, "pass --http"),
        ([], {"PEER_RING_DISCOVERY": "consul"}, "PEER_RING_DISCOVERY"),
        (
            ["--discovery", "kubernetes", "--peers", "127.0.0.1:7101"],
            {},
            "only used with static discovery",
        ),
    ],
)
def test_invalid_settings_are_usage_errors(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError) as info:
        parse(argv, env)
    assert message in str(info.value)


def test_main_exits_2_with_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--listen", "127.0.0.1:7101", "--quorum", "5"], environ={})
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: peer-ring-kv serve" in err
    assert "quorum (5) cannot be greater than replication (3)" in err


def test_main_rejects_unknown_flags_and_commands() -> None:
    for argv in (["serve", "--listn", "x"], ["frobnicate"], [], ["demo", "--nodes", "two"]):
        with pytest.raises(SystemExit) as info:
            main(argv, environ={})
        assert info.value.code == 2, argv


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--nodes", "2"], "--nodes must be between 3"),
        (["demo", "--keys", "0"], "--keys must be between 1"),
        (["demo", "--base-port", "80"], "--base-port must be between"),
        (["demo", "--host", "10.0.0.1"], "loopback"),
    ],
)
def test_demo_options_are_validated(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv, environ={})
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("512K", 512 << 10),
        ("64MiB", 64 << 20),
        ("1g", 1 << 30),
        ("2 MB", 2 << 20),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-1", "1T", "1.5M", "M"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("listen", "http"),
    [
        ("127.0.0.1:7101", ("127.0.0.1", 8101)),
        ("127.0.0.3:7101", ("127.0.0.3", 8101)),  # loopback aliases keep distinct addresses
        ("localhost:7000", ("localhost", 8000)),
        ("[::1]:7101", ("::1", 8101)),
        ("10.1.2.3:7101", ("127.0.0.1", 8101)),  # never exposed beyond the host by default
        ("[fd00::1]:7101", ("127.0.0.1", 8101)),
    ],
)
def test_default_http_address(listen: str, http: tuple[str, int]) -> None:
    assert default_http_address(listen) == http


def test_http_port_uses_the_default_host_and_http_wins() -> None:
    config = parse(["--listen=127.0.0.2:7101"], {"PEER_RING_HTTP_PORT": "8080"})
    assert http_address(config, "127.0.0.2:7101") == ("127.0.0.2", 8080)
    config = parse(["--listen=10.0.0.5:7101", "--http-port=8080"])
    assert http_address(config, "10.0.0.5:7101") == ("127.0.0.1", 8080)
    config = parse(["--listen=127.0.0.1:7101", "--http=0.0.0.0:9000", "--http-port=8080"])
    assert http_address(config, "127.0.0.1:7101") == ("0.0.0.0", 9000)
    # --http-port rescues peer ports too high for the +1000 rule.
    config = parse(["--listen=127.0.0.1:65000", "--http-port=8080"])
    assert http_address(config, "127.0.0.1:65000") == ("127.0.0.1", 8080)
    with pytest.raises(UsageError, match="--http-port: must be <= 65535"):
        parse(["--listen=127.0.0.1:7101", "--http-port=70000"])


def test_peer_config_follows_the_settings() -> None:
    config = parse(
        [
            "--listen=127.0.0.1:7101",
            "--partitions=128",
            "--replication=2",
            "--quorum=1",
            "--request-timeout=3",
            "--token=t",
            "--max-value-bytes=32M",
        ]
    )
    peer = config.peer_config()
    assert (peer.partitions, peer.replication, peer.quorum) == (128, 2, 1)
    assert peer.request_timeout == 3.0
    assert peer.token == "t"
    # A 32 MiB value must fit in one peer message: the transport bound grows with it.
    assert peer.transport_limits.max_message_bytes > 32 << 20


def test_build_static_store() -> None:
    config = parse(["--listen=127.0.0.2:7101", "--peers=127.0.0.1:7101,127.0.0.3:7101"])
    discovery = build_discovery(config)
    assert isinstance(discovery, StaticDiscovery)
    assert discovery.self_address == "127.0.0.2:7101"
    # The node's own address is added to the list it was given.
    assert discovery.peers == {"127.0.0.1:7101", "127.0.0.2:7101", "127.0.0.3:7101"}
    store = build_store(config, discovery)
    assert isinstance(store, KVStore)
    assert store.node.address == "127.0.0.2:7101"
    assert store.node.config.replication == 3


def test_build_without_peers_is_a_one_node_cluster() -> None:
    discovery = build_discovery(parse(["--listen=127.0.0.1:7101"]))
    assert isinstance(discovery, StaticDiscovery)
    assert discovery.peers == {"127.0.0.1:7101"}


K8S_ENV = {"POD_IP": "10.0.0.5", "POD_NAMESPACE": "ns", "PEER_RING_K8S_SERVICE": "peer-ring"}


def require_k8s_discovery(require_component: Callable[..., None]) -> None:
    # A skip on a laptop without it; a failure in CI, whose kv job installs it
    # ([tool.peer-ring] test-dependencies).
    try:
        found = importlib.util.find_spec("peer_ring.discovery.k8s") is not None
    except ModuleNotFoundError:
        found = False
    require_component(
        "peer-ring-discovery-k8s", found, "pip install -e packages/peer-ring-discovery-k8s"
    )


def test_kubernetes_discovery_takes_the_pod_address(
    require_component: Callable[..., None],
) -> None:
    require_k8s_discovery(require_component)
    config = parse(["--discovery=kubernetes"])
    assert config.listen is None
    discovery = build_discovery(config, {**K8S_ENV, "PEER_RING_PEER_PORT": "7101"})
    assert discovery.self_address == "10.0.0.5:7101"
    # --listen supplies the port, and must name the pod's own address.
    config = parse(["--discovery=kubernetes", "--listen=10.0.0.5:7200"])
    assert build_discovery(config, K8S_ENV).self_address == "10.0.0.5:7200"
    with pytest.raises(UsageError, match="differs from the address Kubernetes discovery"):
        build_discovery(parse(["--discovery=kubernetes", "--listen=10.0.0.9:7200"]), K8S_ENV)


def test_kubernetes_discovery_misconfigured_is_a_usage_error(
    require_component: Callable[..., None],
) -> None:
    require_k8s_discovery(require_component)
    with pytest.raises(UsageError, match="kubernetes discovery: POD_IP is not set"):
        build_discovery(parse(["--discovery=kubernetes"]), {})


def test_kubernetes_discovery_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    # A None entry in sys.modules makes the import fail, as if the package were absent.
    monkeypatch.setitem(sys.modules, "peer_ring.discovery.k8s", None)
    with pytest.raises(UsageError, match="pip install peer-ring-discovery-k8s"):
        build_discovery(parse(["--discovery=kubernetes"]), K8S_ENV)


def test_data_movement_settings_reach_the_node_config() -> None:
    config = parse(
        ["--listen", "127.0.0.1:7101", "--down-after", "off", "--leave-deadline", "5"],
        {"PEER_RING_ANTI_ENTROPY_INTERVAL": "2.5"},
    )
    peer = config.peer_config()
    assert peer.down_after is None
    assert peer.anti_entropy_interval == 2.5
    assert peer.leave_deadline == 5.0
    with pytest.raises(UsageError, match="--down-after"):
        parse(["--listen", "127.0.0.1:7101", "--down-after", "-1"])


def test_gc_settings_default_to_python_s() -> None:
    config = parse(["--listen", "127.0.0.1:7101"])
    assert config.gc_threshold is None
    assert config.gc_freeze_after_start is False


def test_gc_settings_from_flags_and_environment() -> None:
    config = parse(
        ["--listen", "127.0.0.1:7101", "--gc-threshold", "20000", "--gc-freeze-after-start"]
    )
    assert (config.gc_threshold, config.gc_freeze_after_start) == (20000, True)
    env = {"PEER_RING_GC_THRESHOLD": "50000", "PEER_RING_GC_FREEZE_AFTER_START": "Yes"}
    config = parse(["--listen", "127.0.0.1:7101"], env)
    assert (config.gc_threshold, config.gc_freeze_after_start) == (50000, True)
    # The flag wins over the variable; "off" in the variable turns the setting off.
    config = parse(["--listen", "127.0.0.1:7101", "--gc-threshold=1"], env)
    assert config.gc_threshold == 1
    config = parse(["--listen", "127.0.0.1:7101"], {"PEER_RING_GC_FREEZE_AFTER_START": "off"})
    assert config.gc_freeze_after_start is False


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--gc-threshold", "0"], {}, "--gc-threshold: must be >= 1, got 0"),
        (["--gc-threshold", "-5"], {}, "--gc-threshold: must be >= 1"),
        (["--gc-threshold", "lots"], {}, "--gc-threshold: expected an integer, got 'lots'"),
        ([], {"PEER_RING_GC_THRESHOLD": "2.5"}, "PEER_RING_GC_THRESHOLD: expected an integer"),
        (
            [],
            {"PEER_RING_GC_FREEZE_AFTER_START": "maybe"},
            "PEER_RING_GC_FREEZE_AFTER_START: expected true or false",
        ),
    ],
)
def test_bad_gc_settings_are_usage_errors(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError) as info:
        parse(["--listen", "127.0.0.1:7101", *argv], env)
    assert message in str(info.value)


def test_the_gc_switch_takes_no_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--listen", "127.0.0.1:7101", "--gc-freeze-after-start=yes"], environ={})
    assert info.value.code == 2
    assert "ignored explicit argument 'yes'" in capsys.readouterr().err
