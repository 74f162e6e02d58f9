"""outstream.AtomicStream (hashed, atomic, streamed output) and the TarWriter built on it: the bytes
must stay exactly what tarfile writes, since shard digests are compared across runs."""
from __future__ import annotations

import hashlib
import io
import os
import random
import stat
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


def test_plain_header_reading_matches_tarfile_and_falls_back_on_anything_else(tmp_path):
    from ovpipe.data.shards import _plain_members, fetch_ordered

    uri = str(tmp_path / "mixed.tar")
    long_dir = "d" * 120  # a name beyond 100 bytes: tarfile (PAX) writes an extended header
    with tarfile.open(uri, "w") as tar:  # tarfile's default format, as img2dataset writes
        for key in ("a", f"{long_dir}/b"):
            for ext, data in (("jpg", os.urandom(3000)), ("txt", b"caption"), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with tarfile.open(uri) as tar:
        members = tar.getmembers()
    blob = open(uri, "rb").read()
    first = (0, members[3].offset)
    assert _plain_members(memoryview(blob)[:first[1]])[0] == "a"
    assert _plain_members(blob[members[3].offset:]) is None  # PAX header: tarfile decides
    bad = bytearray(blob[:first[1]])
    bad[130] ^= 1  # size digit changed: checksum no longer matches
    assert _plain_members(bytes(bad)) is None
    pos = [first, (members[3].offset, len(blob) - members[3].offset)]
    for views in (False, True):
        got = list(fetch_ordered([(uri, o, n) for o, n in pos], views=views))
        assert [s.key for s in got] == ["a", f"{long_dir}/b"]
        with tarfile.open(uri) as tar:
            want = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for s in got:
            assert isinstance(s.members["txt"], bytes) and isinstance(s.members["json"], bytes)
            assert isinstance(s.members["jpg"], memoryview if views and s.key == "a" else bytes)
            assert {f"{s.key}.{e}": bytes(v) for e, v in s.members.items()} == \
                {k: v for k, v in want.items() if k.startswith(s.key + ".")}


def test_read_ahead_is_bounded_by_bytes(tmp_path, monkeypatch):
    from ovpipe.data import shards

    samples = [(f"{i:03d}", {"jpg": os.urandom(20_000)}) for i in range(40)]
    uri = str(tmp_path / "big.tar")
    with TarWriter(uri) as w:
        for key, members in samples:
            w.write(key, members)
    starts = [s for _, s, _ in w.layout] + [w.end_offset]
    wanted = [(uri, starts[i], starts[i + 1] - starts[i]) for i in range(40)]
    monkeypatch.setattr(shards, "READ_AHEAD_BYTES", 60_000)
    calls, real = [], shards._read_span
    monkeypatch.setattr(shards, "_read_span", lambda *a, **k: calls.append(1) or real(*a, **k))
    it = shards.fetch_ordered(wanted)
    assert next(it).key == "000"
    assert 1 <= len(calls) <= 4  # about 60 kB of 20 kB reads queued, not all 40
    assert [s.key for s in it] == [k for k, _ in samples[1:]]


def test_local_commit_is_durable(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_mode) or real(fd))
    s = outstream.AtomicStream(str(tmp_path / "out" / "x.bin"))
    s.write(os.urandom(1000))
    s.commit()
    assert [stat.S_ISREG(m) for m in synced] == [True, False] and stat.S_ISDIR(synced[1])  # file, then folder
