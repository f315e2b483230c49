"""The settings of ``peer-ring-kv serve``: one table of flags, environment variables and help.

The table drives both argparse and the environment lookup (see
:mod:`peer_ring.kv._serve_config`), so a flag can never lack its variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from peer_ring.core import DEFAULT_PARTITIONS

#: Default largest value accepted (also the KVStore default).
DEFAULT_MAX_VALUE_BYTES = 1 << 20
#: Default deadline of one replicated operation, in seconds (the core's default).
DEFAULT_REQUEST_TIMEOUT = 2.0
#: Offset between the peer port and the default HTTP port (7101 -> 8101).
HTTP_PORT_OFFSET = 1000
#: Room for keys, versions and framing around the largest value in one peer message.
_MESSAGE_OVERHEAD_BYTES = 1 << 20

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: ``"static"``, ``"kubernetes"`` or the name of an installed discovery plugin
#: (see :mod:`peer_ring.kv._discovery_plugins`).
DiscoveryKind = str


class UsageError(ValueError):
    """A setting is missing or invalid; the message says which and why (exit status 2)."""


@dataclass(frozen=True, slots=True)
class _Option:
    """One setting: its flag, its environment variable and its help text."""

    dest: str
    flag: str
    env: str
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    #: The flag may be given several times; the environment variable holds
    #: whitespace-separated values.
    repeat: bool = False
    #: The flag takes no value (it turns the setting on); the environment variable holds
    #: true or false (1/0, yes/no, on/off).
    switch: bool = False


# The single table that drives both argparse and the environment lookup, so a flag can never
# lack its variable (or the other way round) and `--help` always names both.
_OPTIONS: tuple[_Option, ...] = (
    _Option(
        "listen",
        "--listen",
        "PEER_RING_SELF_ADDRESS",
        "peer (gRPC) address host:port; it is this node's identity in the ring, so every "
        "node must list it with the same spelling in --peers",
        "HOST:PORT",
    ),
    _Option(
        "http",
        "--http",
        "PEER_RING_HTTP_ADDRESS",
        "HTTP API address host:port (port 0 picks a free one). Default: the peer host when it "
        f"is a loopback address, else 127.0.0.1, with the peer port + {HTTP_PORT_OFFSET}",
        "HOST:PORT",
    ),
    _Option(
        "http_port",
        "--http-port",
        "PEER_RING_HTTP_PORT",
        "HTTP API port on the default host (the loopback rule of --http); --http wins "
        "when both are given",
        "PORT",
    ),
    _Option(
        "peers",
        "--peers",
        "PEER_RING_PEERS",
        "comma-separated peer addresses for static discovery (this node's own address may "
        "be included; without --peers the node forms a one-node cluster)",
        "HOST:PORT,...",
    ),
    _Option(
        "peers_file",
        "--peers-file",
        "PEER_RING_PEERS_FILE",
        "file listing the peer addresses (separated by commas, spaces or newlines; # starts "
        "a comment), re-read every second so that editing it adds or removes members at run "
        "time (replace it atomically: write a new file, then rename it). Instead of --peers",
        "PATH",
    ),
    _Option(
        "discovery",
        "--discovery",
        "PEER_RING_DISCOVERY",
        "how peers are found: 'static' (--peers or --peers-file), 'kubernetes' (needs "
        "peer-ring-discovery-k8s) or the name of an installed discovery package "
        "('etcd', 'zookeeper', 'gossip'...; configured with --discovery-option). "
        "Default: static",
        "NAME",
    ),
    _Option(
        "discovery_options",
        "--discovery-option",
        "PEER_RING_DISCOVERY_OPTIONS",
        "a KEY=VALUE setting of the discovery package named by --discovery (its README "
        "lists them); repeat the flag for several (the variable takes them separated by "
        "spaces)",
        "KEY=VALUE",
        repeat=True,
    ),
    _Option(
        "replication",
        "--replication",
        "PEER_RING_REPLICATION",
        "default number of replicas N of each key. Default: 3",
        "N",
    ),
    _Option(
        "quorum",
        "--quorum",
        "PEER_RING_QUORUM",
        "default number of replicas that must answer a read or write. Default: a majority "
        "of the replication (N // 2 + 1)",
        "Q",
    ),
    _Option(
        "partitions",
        "--partitions",
        "PEER_RING_PARTITIONS",
        f"number of partitions; every node must use the same. Default: {DEFAULT_PARTITIONS}",
        "P",
    ),
    _Option(
        "max_bytes",
        "--max-bytes",
        "PEER_RING_MAX_BYTES",
        "memory bound of this node's store (LRU eviction beyond it), bytes or with a "
        "K/M/G suffix (powers of 1024). Default: unbounded",
        "SIZE",
    ),
    _Option(
        "max_value_bytes",
        "--max-value-bytes",
        "PEER_RING_MAX_VALUE_BYTES",
        "largest value accepted (HTTP 413 beyond it), bytes or with a K/M/G suffix. Default: 1M",
        "SIZE",
    ),
    _Option(
        "request_timeout",
        "--request-timeout",
        "PEER_RING_REQUEST_TIMEOUT",
        f"seconds one replicated operation may take. Default: {DEFAULT_REQUEST_TIMEOUT:g}",
        "SECONDS",
    ),
    _Option(
        "down_after",
        "--down-after",
        "PEER_RING_DOWN_AFTER",
        "seconds a peer may stay unreachable before it is taken out of the ring and its "
        "partitions are re-replicated elsewhere; 'off' never does. Default: 10",
        "SECONDS",
    ),
    _Option(
        "anti_entropy_interval",
        "--anti-entropy-interval",
        "PEER_RING_ANTI_ENTROPY_INTERVAL",
        "mean seconds between two anti-entropy rounds (replicas compare digests and repair "
        "what differs); 'off' disables them. Default: 30",
        "SECONDS",
    ),
    _Option(
        "leave_deadline",
        "--leave-deadline",
        "PEER_RING_LEAVE_DEADLINE",
        "seconds a node waits on SIGTERM for its peers to take over its partitions before "
        "it exits. Default: 30",
        "SECONDS",
    ),
    _Option(
        "transport",
        "--transport",
        "PEER_RING_TRANSPORT",
        "how nodes talk to each other: grpc (the interoperable default) or tcp (the same "
        "frames over plain TCP/TLS, cheaper per request). Every node must use the same one",
        "grpc|tcp",
    ),
    _Option(
        "token",
        "--token",
        "PEER_RING_TOKEN",
        "shared secret every peer must present (prefer the environment variable: "
        "command lines are visible to other users). Default: none",
        "SECRET",
    ),
    _Option(
        "http_token",
        "--http-token",
        "PEER_RING_HTTP_TOKEN",
        "bearer token required on the HTTP API except /healthz and /readyz (prefer the "
        "environment variable). Default: none (the API binds to loopback by default)",
        "SECRET",
    ),
    _Option(
        "http_tls_cert",
        "--http-tls-cert",
        "PEER_RING_HTTP_TLS_CERT",
        "PEM certificate (chain) of the HTTP API; with --http-tls-key the API speaks only "
        "HTTPS. The files are re-read when they change (rotation without restart). "
        "Default: plain HTTP",
        "FILE",
    ),
    _Option(
        "http_tls_key",
        "--http-tls-key",
        "PEER_RING_HTTP_TLS_KEY",
        "PEM private key of --http-tls-cert",
        "FILE",
    ),
    _Option(
        "http_tls_ca",
        "--http-tls-ca",
        "PEER_RING_HTTP_TLS_CA",
        "PEM CA (bundle) that HTTP clients' certificates must chain to: every client must "
        "present one (mutual TLS; /healthz and /readyz too). Needs --http-tls-cert. "
        "Default: no client certificate asked",
        "FILE",
    ),
    _Option(
        "tls_ca",
        "--tls-ca",
        "PEER_RING_TLS_CA",
        "PEM file of the CA (bundle) that signs the peers' certificates; with --tls-cert and "
        "--tls-key it turns on mutual TLS between peers. The three files are re-read when "
        "they change (certificate rotation without restart). Default: plaintext",
        "FILE",
    ),
    _Option(
        "tls_cert",
        "--tls-cert",
        "PEER_RING_TLS_CERT",
        "PEM certificate (chain) of this node, presented to peers as server and as client",
        "FILE",
    ),
    _Option(
        "tls_key",
        "--tls-key",
        "PEER_RING_TLS_KEY",
        "PEM private key of --tls-cert",
        "FILE",
    ),
    _Option(
        "tls_server_name",
        "--tls-server-name",
        "PEER_RING_TLS_SERVER_NAME",
        "name every peer certificate carries (a DNS SAN), checked instead of the dialled IP; "
        "without it each certificate needs its node's IP as an IP SAN",
        "NAME",
    ),
    _Option(
        "gc_threshold",
        "--gc-threshold",
        "PEER_RING_GC_THRESHOLD",
        "Python's young-generation garbage-collection threshold while the node runs "
        "(10000-50000 makes young collections rare under load; the other two thresholds "
        "are kept). Default: Python's (700)",
        "N",
    ),
    _Option(
        "gc_freeze_after_start",
        "--gc-freeze-after-start",
        "PEER_RING_GC_FREEZE_AFTER_START",
        "once the node has started, collect once and gc.freeze() every object alive then, "
        "so that later full collections no longer walk them (the frozen memory stays "
        "allocated until the node exits); the variable takes true or false. Default: off",
        switch=True,
    ),
    _Option(
        "log_level",
        "--log-level",
        "PEER_RING_LOG_LEVEL",
        "log verbosity: debug, info, warning, error or critical. Default: info",
        "LEVEL",
    ),
)

#: Environment variables read by ``serve``, by destination name (for docs and tests).
ENV_VARS: Mapping[str, str] = {o.dest: o.env for o in _OPTIONS}
