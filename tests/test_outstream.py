"""outstream.AtomicStream (hashed, atomic, streamed output) and the TarWriter built on it: the bytes
must stay exactly what tarfile writes, since shard digests are compared across runs."""
from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile

import pytest

from ovpipe import faults, outstream, storage
from ovpipe.data.shards import fetch_samples
from ovpipe.data.tarwriter import TarWriter
from tests.helpers import raw_names


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_root")


def _open_uploads(root: str) -> list[str]:
    bucket, key = storage.split_s3(root)
    resp = storage.s3_client().list_multipart_uploads(Bucket=bucket, Prefix=key + "/")
    return [u["Key"] for u in resp.get("Uploads", [])]


def _reference_tar(samples) -> bytes:
    """What TarWriter wrote before it streamed: tarfile itself, same header fields."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _samples(seed: int):
    rng = random.Random(seed)
    out = []
    for i in range(rng.randint(1, 10)):
        members = {}
        for ext in rng.sample(["jpg", "txt", "json", "0.png", "1.jpeg", "ünï.txt", "x" * 80], rng.randint(1, 4)):
            n = rng.choice([0, 1, 511, 512, 513, 10239, 10240, rng.randint(0, 700_000)])
            members[ext] = rng.randbytes(n)
        out.append((rng.choice(["", "d/"]) + f"{i:09d}", members))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_tarwriter_bytes_are_tarfiles(tmp_path, seed):
    samples = _samples(seed)
    w = TarWriter(str(tmp_path / "t.tar"))
    for key, members in samples:
        w.write(key, members)
    digest = w.close()
    data = (tmp_path / "t.tar").read_bytes()
    assert data == _reference_tar(samples)
    assert digest == hashlib.sha256(data).hexdigest()
    with tarfile.open(tmp_path / "t.tar") as tar:
        members = tar.getmembers()
        end = tar.offset
    assert [(m.offset_data, m.size) for m in members] == [(o, s) for _, _, p in w.layout for _, o, s in p]
    assert w.end_offset == end and w.count == len(samples)


def test_tarwriter_on_s3_matches_local(s3_root, tmp_path, monkeypatch):
    monkeypatch.setattr(outstream, "PART_BYTES", 5 << 20)  # S3's smallest part: several parts here
    samples = _samples(3) + [("big", {"jpg": random.Random(0).randbytes(12 << 20)})]
    digests = []
    for uri in (str(tmp_path / "t.tar"), storage.join(s3_root, "t.tar")):
        w = TarWriter(uri)
        for key, members in samples:
            w.write(key, members)
        digests.append(w.close())
        assert storage.read_bytes(uri) == _reference_tar(samples)
    assert digests[0] == digests[1]
    assert _open_uploads(s3_root) == []


@pytest.mark.parametrize("size", [1000, 11 << 20])  # one PUT; multipart
def test_stream_is_invisible_until_commit(root, monkeypatch, size):
    monkeypatch.setattr(outstream, "PART_BYTES", 5 << 20)
    uri = storage.join(root, "out", "x.bin")
    data = os.urandom(size)
    s = outstream.AtomicStream(uri)
    for i in range(0, size, 300_000):
        s.write(data[i:i + 300_000])
    assert not storage.exists(uri)
    assert s.commit() == hashlib.sha256(data).hexdigest()
    assert storage.read_bytes(uri) == data
    assert raw_names(root) == ["out/x.bin"]  # no temporary left beside it


@pytest.mark.parametrize("size", [1000, 11 << 20])
def test_abort_leaves_nothing_and_keeps_the_old_version(root, monkeypatch, size):
    monkeypatch.setattr(outstream, "PART_BYTES", 5 << 20)
    uri = storage.join(root, "x.bin")
    storage.write_bytes(uri, b"old")
    s = outstream.AtomicStream(uri)
    s.write(os.urandom(size))
    s.abort()
    assert storage.read_bytes(uri) == b"old" and raw_names(root) == ["x.bin"]
    if storage.is_remote(root):
        assert _open_uploads(root) == []


def test_fault_before_commit_leaves_nothing(root, monkeypatch):
    """mid_write is reached after the last byte and before the commit (as atomic_output has it)."""
    def point(name, step=None):
        if name == "mid_write":
            raise RuntimeError("killed")

    monkeypatch.setattr(faults, "point", point)
    monkeypatch.setattr(outstream, "PART_BYTES", 5 << 20)
    uri = storage.join(root, "t.tar")
    with pytest.raises(RuntimeError, match="killed"):
        with TarWriter(uri) as w:
            w.write("a", {"jpg": os.urandom(6 << 20)})
    assert raw_names(root) == []


def test_fetch_samples_reads_what_was_written(root):
    samples = _samples(5)
    uri = storage.join(root, "s.tar")
    with TarWriter(uri) as w:
        for key, members in samples:
            w.write(key, members)
    starts = [s for _, s, _ in w.layout] + [w.end_offset]
    pos = [(starts[i], starts[i + 1] - starts[i]) for i in range(len(samples))][::-1]
    got = fetch_samples(uri, pos)
    for (key, members), start in zip(samples, starts):
        assert got[start].key == key and got[start].members == members
