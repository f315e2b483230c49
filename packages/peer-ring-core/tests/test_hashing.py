"""The key hash of docs/hash-spec.md: Fingerprint64, partition and digest bucket.

The vectors are read from the spec document itself and from the golden vector file, so
neither can drift from the code.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from peer_ring.core._hashing import bucket_for_key, fingerprint64, partition_for_key
from peer_ring.core._hooks import DIGEST_BUCKETS

HERE = Path(__file__).resolve().parent
SPEC = HERE.parents[2] / "docs" / "hash-spec.md"
VECTORS = HERE / "vectors" / "ring.json"

U64 = 1 << 64


def spec_table(name: str) -> list[list[str]]:
    """Rows of the Markdown table after ``<!-- vectors: name -->`` in the spec (no header)."""
    lines = SPEC.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"<!-- vectors: {name} -->") + 1
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    assert len(rows) > 2, f"table {name!r} is empty"
    return rows[2:]  # header and separator


def spec_input(cell: str) -> bytes:
    """Decode the spec's input notation: ``"json"``, ``"json" * k`` or ``0xHEX``."""
    if cell.startswith("0x"):
        return bytes.fromhex(cell[2:])
    if '" * ' in cell:
        text, count = cell.rsplit(" * ", 1)
        return (str(json.loads(text)) * int(count)).encode("utf-8")
    return str(json.loads(cell)).encode("utf-8")


def test_spec_fingerprint_vectors() -> None:
    rows = spec_table("fingerprint64")
    assert len(rows) >= 14
    for cell, length, fp_hex, partition, bucket in rows:
        data = spec_input(cell)
        assert len(data) == int(length), cell
        assert fingerprint64(data) == int(fp_hex, 16), cell
        assert partition_for_key(data, 2048) == int(partition), cell
        assert bucket_for_key(data) == int(bucket), cell


def test_spec_vectors_cover_every_length_branch_of_fingerprint64() -> None:
    # farmhashna::Hash64 has separate code for 0-16, 17-32, 33-64 and >64 bytes; a port
    # that gets one branch wrong must fail a vector.
    lengths = {int(row[1]) for row in spec_table("fingerprint64")}
    assert any(n <= 16 for n in lengths)
    assert any(17 <= n <= 32 for n in lengths)
    assert any(33 <= n <= 64 for n in lengths)
    assert any(n > 64 for n in lengths)


def test_spec_score_vectors() -> None:
    for score_string, fp_hex in spec_table("score"):
        assert fingerprint64(score_string) == int(fp_hex, 16), score_string


def test_golden_file_fingerprints() -> None:
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))["fingerprint64"]
    assert len(vectors) >= 14
    for vector in vectors:
        data = bytes.fromhex(vector["hex"])
        if "utf8" in vector:
            assert vector["utf8"].encode("utf-8") == data
            assert fingerprint64(vector["utf8"]) == int(vector["fingerprint64"])
        assert fingerprint64(data) == int(vector["fingerprint64"])
        assert partition_for_key(data, 2048) == vector["partition"]
        assert bucket_for_key(data) == vector["bucket"]


def test_matches_independently_published_value() -> None:
    # BigQuery's FARM_FINGERPRINT("alphabet") and Guava's farmHashFingerprint64 both
    # document -2427165924636348523 (signed): an anchor outside this repository.
    value = fingerprint64("alphabet")
    assert value - U64 == -2427165924636348523


def test_empty_input_is_farmhash_k2() -> None:
    # Fingerprint64 of zero bytes is FarmHash's constant k2.
    assert fingerprint64(b"") == 0x9AE16A3B2F90404F


@given(st.text())
def test_text_keys_hash_as_their_utf8_bytes(text: str) -> None:
    data = text.encode("utf-8")
    assert fingerprint64(text) == fingerprint64(data)
    assert partition_for_key(text, 2048) == partition_for_key(data, 2048)
    assert bucket_for_key(text) == bucket_for_key(data)


@given(st.binary(max_size=200))
def test_fingerprint_is_unsigned_64_bit(data: bytes) -> None:
    assert 0 <= fingerprint64(data) < U64


@given(st.binary(max_size=100), st.integers(min_value=1, max_value=1 << 20))
def test_partition_is_fingerprint_mod_p(data: bytes, partitions: int) -> None:
    partition = partition_for_key(data, partitions)
    assert partition == fingerprint64(data) % partitions
    assert 0 <= partition < partitions


@given(st.binary(max_size=100))
def test_bucket_uses_the_high_32_bits(data: bytes) -> None:
    bucket = bucket_for_key(data)
    assert 0 <= bucket < DIGEST_BUCKETS
    assert bucket == (fingerprint64(data) >> 32) % DIGEST_BUCKETS


def test_distinct_keys_spread_over_partitions_and_buckets() -> None:
    # A sanity check of the hash's use, not of farmhash: 20k keys fill every bucket and
    # every one of 64 partitions within a loose band around the mean.
    keys = [f"user:{i}" for i in range(20_000)]
    partitions = [partition_for_key(k, 64) for k in keys]
    buckets = [bucket_for_key(k) for k in keys]
    for values in (partitions, buckets):
        counts = [values.count(v) for v in range(64)]
        assert min(counts) > 0.8 * 20_000 / 64
        assert max(counts) < 1.2 * 20_000 / 64
