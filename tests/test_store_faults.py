"""Reads and writes through the fault proxy (500, 503, SlowDown, resets, stalls, bodies cut short) give
back exactly what was written; a body cut short resumes; nothing half-written becomes visible."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from ovpipe import storage
from ovpipe.data import tables
from ovpipe.verify.faultproxy import KINDS, FaultProxy


@pytest.fixture
def proxied(seaweed, s3_env, monkeypatch):
    with FaultProxy(seaweed.endpoint, every=2, stall_s=0.3) as proxy:
        monkeypatch.setenv("OVPIPE_S3_ENDPOINT", proxy.endpoint)
        monkeypatch.setattr(storage.time, "sleep", lambda s: None)  # backoff is not what is tested here
        yield proxy


def test_every_operation_survives_the_faults(proxied, s3_root, tmp_path):
    rng = np.random.default_rng(0)
    blobs = {f"obj-{i}.bin": rng.integers(0, 256, 300_000 + i, dtype=np.uint8).tobytes() for i in range(6)}
    for name, data in blobs.items():
        storage.write_bytes(storage.join(s3_root, name), data)
    for name, data in blobs.items():
        assert storage.read_bytes(storage.join(s3_root, name)) == data
        assert storage.sha256_uri(storage.join(s3_root, name)) == storage.sha256_bytes(data)
        assert storage.read_range(storage.join(s3_root, name), 1000, 5000) == data[1000:5000]
    assert sorted(storage.basename(u) for u in storage.list_uris(s3_root)) == sorted(blobs)
    local = tmp_path / "f.bin"
    local.write_bytes(blobs["obj-0.bin"])
    storage.put_file(str(local), storage.join(s3_root, "up", "f.bin"))
    got = storage.download(storage.join(s3_root, "up", "f.bin"), str(tmp_path / "back.bin"))
    assert open(got, "rb").read() == blobs["obj-0.bin"]
    table = pa.table({"id": [str(i) for i in range(5000)], "x": np.arange(5000)})
    tables.write_parquet(storage.join(s3_root, "t.parquet"), table)
    assert tables.read_parquet(storage.join(s3_root, "t.parquet")).equals(table)
    assert storage.create_exclusive(storage.join(s3_root, "lock.json"), b"a")
    assert not storage.create_exclusive(storage.join(s3_root, "lock.json"), b"b")
    assert all(proxied.counts[k] for k in KINDS), proxied.counts
    assert proxied.faulted >= proxied.requests // 2 - 1


def test_a_cut_body_is_resumed_not_shortened(proxied, s3_root):
    data = os.urandom(2_000_000)
    storage.write_bytes(storage.join(s3_root, "big.bin"), data)
    table = pa.table({"id": [str(i) for i in range(20000)], "x": np.arange(20000)})
    tables.write_parquet(storage.join(s3_root, "t.parquet"), table)
    proxied.kinds, proxied.every, proxied.requests = ("truncate",), 1, 0
    proxied.counts = {"truncate": 0}
    with storage.open_read(storage.join(s3_root, "big.bin")) as f:
        raw = f.raw
        assert f.read() == data
    assert raw.resumed >= 5 and proxied.counts["truncate"] >= 5  # each resumed GET was cut again
    cut, proxied.every = proxied.counts["truncate"], 2  # every other request (a HEAD is reset instead)
    assert tables.read_parquet(storage.join(s3_root, "t.parquet")).equals(table)  # pyarrow reads through storage
    assert proxied.counts["truncate"] > cut
