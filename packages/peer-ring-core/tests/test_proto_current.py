"""The committed generated protobuf/gRPC code matches ``peer_ring.proto``.

Regenerates into a temporary directory with the logic of ``tools/gen-proto`` and compares.
With the pinned generator versions the files must be byte-identical; with other versions
(a developer's machine) the generated text differs in version stamps, so the test compares
the one thing that matters then: the serialized file descriptor (the schema).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

from peer_ring.core.proto import peer_ring_pb2

ROOT = Path(__file__).resolve().parents[3]
GEN_PROTO = ROOT / "tools" / "gen-proto"

pytest.importorskip("grpc_tools", reason="grpcio-tools is needed to regenerate the code")


def load_gen_proto() -> ModuleType:
    loader = SourceFileLoader("gen_proto", str(GEN_PROTO))
    spec = importlib.util.spec_from_loader("gen_proto", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _without_json_names(
    schema: descriptor_pb2.FileDescriptorProto,
) -> descriptor_pb2.FileDescriptorProto:
    # protoc fills json_name in --descriptor_set_out but not in the descriptor it embeds in
    # generated code; it is derived from the field name, so it carries no information.
    def strip(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            strip(message.nested_type)

    strip(schema.message_type)
    return schema


def committed_schema() -> descriptor_pb2.FileDescriptorProto:
    serialized = peer_ring_pb2.DESCRIPTOR.serialized_pb
    return _without_json_names(descriptor_pb2.FileDescriptorProto.FromString(serialized))


def fresh_schema(gen: ModuleType, tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    from grpc_tools import protoc

    out = tmp_path / "schema.bin"
    args = ["protoc", f"-I{gen.SRC}", f"--descriptor_set_out={out}", str(gen.PROTO)]
    assert protoc.main(args) == 0
    (schema,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return _without_json_names(schema)


def test_schema_matches_the_proto_file(tmp_path: Path) -> None:
    """Independent of generator versions: the embedded schema is the .proto's."""
    assert committed_schema() == fresh_schema(load_gen_proto(), tmp_path)


def test_generated_code_is_current(tmp_path: Path) -> None:
    gen = load_gen_proto()
    fresh = gen.generate(tmp_path)
    committed = [gen.SRC / rel for rel in gen.OUTPUTS]
    assert [p.name for p in fresh] == [p.name for p in committed]

    if gen.installed_versions() != gen.PINNED_VERSIONS:
        # Other generators stamp other versions into the text: compare the schema instead.
        assert committed_schema() == fresh_schema(gen, tmp_path), (
            "peer_ring_pb2.py does not match peer_ring.proto: run tools/gen-proto"
        )
        pytest.skip(
            f"schema matches; byte comparison needs the pinned generators {gen.PINNED_VERSIONS} "
            f"(installed: {gen.installed_versions()})"
        )

    stale = [
        str(old.relative_to(ROOT))
        for new, old in zip(fresh, committed, strict=True)
        if new.read_bytes() != old.read_bytes()
    ]
    assert stale == [], f"stale generated files (run tools/gen-proto): {stale}"


def test_service_paths_match_the_transport() -> None:
    from peer_ring.core.transport import _options

    service = peer_ring_pb2.DESCRIPTOR.services_by_name["PeerRing"]
    assert service.full_name == _options.SERVICE
    assert set(service.methods_by_name) == {_options.EXCHANGE_METHOD, _options.TRANSFER_METHOD}
    exchange = service.methods_by_name["Exchange"]
    assert exchange.client_streaming and exchange.server_streaming
    transfer = service.methods_by_name["Transfer"]
    assert not transfer.client_streaming and transfer.server_streaming


def test_status_enum_mirrors_the_python_enum() -> None:
    from peer_ring.core._types import Status

    wire = {v.name: v.number for v in peer_ring_pb2.DESCRIPTOR.enum_types_by_name["Status"].values}
    assert wire == {s.name: int(s) for s in Status}
