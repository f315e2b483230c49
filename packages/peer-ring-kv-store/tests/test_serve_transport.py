"""`serve --transport grpc|tcp` and PEER_RING_TRANSPORT select the peer transport."""

from __future__ import annotations

import argparse

import pytest

from peer_ring.kv._serve_config import UsageError, add_serve_arguments, config_from


def parse(argv: list[str], environ: dict[str, str] | None = None) -> str:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = config_from(parser.parse_args(["--listen", "127.0.0.1:7000", *argv]), environ or {})
    assert config.peer_config().transport == config.transport
    return config.transport


def test_grpc_is_the_default() -> None:
    assert parse([]) == "grpc"


def test_flag_and_environment_select_tcp() -> None:
    assert parse(["--transport", "tcp"]) == "tcp"
    assert parse([], {"PEER_RING_TRANSPORT": "TCP"}) == "tcp"
    assert parse(["--transport", "grpc"], {"PEER_RING_TRANSPORT": "tcp"}) == "grpc"


def test_unknown_transport_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="expected grpc or tcp"):
        parse(["--transport", "udp"])
