"""``peer-ring-kv serve --peers-file``: a member list that can change while nodes run."""

from __future__ import annotations

from pathlib import Path

import pytest

from peer_ring.discovery.static import FileDiscovery, StaticDiscovery
from peer_ring.kv._serve_config import ServeConfig, UsageError, build_discovery, config_from
from peer_ring.kv.cli import EXIT_USAGE, build_parser, main

ME = "127.0.0.1:7101"


def parse(argv: list[str], env: dict[str, str] | None = None) -> ServeConfig:
    args = build_parser().parse_args(["serve", *argv])
    return config_from(args, env or {})


def test_flag_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    assert parse(["--listen", ME, "--peers-file", str(path)]).peers_file == str(path)
    config = parse(["--listen", ME], {"PEER_RING_PEERS_FILE": f" {path} "})
    assert config.peers_file == str(path)
    assert config.peers == ()
    assert parse(["--listen", ME]).peers_file is None


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--peers", ME, "--peers-file", "p"], {}, "--peers-file: give either --peers or"),
        (["--peers-file", "p"], {"PEER_RING_PEERS": ME}, "--peers-file: give either"),
        (["--peers-file", "p", "--discovery", "kubernetes"], {}, "only used with static"),
    ],
)
def test_conflicts(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse(["--listen", ME, *argv], env)


def test_builds_a_file_discovery(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    path.write_text(f"{ME}\n127.0.0.2:7101\n")
    discovery = build_discovery(parse(["--listen", ME, "--peers-file", str(path)]))
    assert isinstance(discovery, FileDiscovery)
    assert discovery.self_address == ME
    assert discovery.peers == {ME, "127.0.0.2:7101"}
    # Without the flag, nothing changes: the fixed list.
    assert isinstance(build_discovery(parse(["--listen", ME])), StaticDiscovery)


@pytest.mark.parametrize("content", [None, "127.0.0.2\n"])
def test_missing_or_bad_file_is_a_usage_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "peers"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=r"--peers-file: peers file .*"):
        build_discovery(parse(["--listen", ME, "--peers-file", str(path)]))


def test_serve_exits_2_on_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The file is checked before anything binds a port: exit status 2, one clear line.
    missing = tmp_path / "nope"
    code = main(["serve", "--listen", ME, "--peers-file", str(missing)], environ={})
    assert code == EXIT_USAGE
    assert f"peers file {str(missing)!r} cannot be read" in capsys.readouterr().err
