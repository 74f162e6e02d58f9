"""Packed-sequence shards: tar layout, our reader, energon metadata (against `energon prepare`),
and megatron-energon loading the folder directly."""
from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import struct
import tarfile

import pytest
import yaml
from PIL import Image

from ovpipe import storage
from ovpipe.data.tarwriter import TarWriter
from ovpipe.packing import packed_shards as ps
from ovpipe.packing.packed_shards import SubSample, read_packed, write_energon_metadata, write_packed_shard

N_SHARDS, PER_SHARD = 3, 3


def _image(fmt: str, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8 + seed % 5, 6), (seed * 37 % 256, seed * 11 % 256, 90)).save(buf, format=fmt)
    return buf.getvalue()


def _sequences() -> list[list[tuple[int, list[SubSample]]]]:
    """Per shard, its sequences: 0 to 3 images per sub-sample (JPEG and PNG), bins not in shard order."""
    shards, n = [], 0
    for s in range(N_SHARDS):
        seqs = []
        for q in range(PER_SHARD):
            bin_id = 100 * q + s  # keys interleave across shards: the index must not assume order
            subs = []
            for j in range(1 + (n % 3)):
                k = (n + j) % 4
                fmts = [("JPEG", "jpg"), ("PNG", "png"), ("JPEG", "jpeg")][:k]
                subs.append(SubSample(
                    id=f"src-{n}-{j}", length=7 + 3 * j + k,
                    turns=[{"role": "user", "content": f"<image>× {n}"}, {"role": "assistant", "content": "ok"}],
                    images=[_image(f, n + j + i) for i, (f, _) in enumerate(fmts)],
                    image_exts=[e for _, e in fmts], image_tokens=[4 + i for i in range(k)]))
            seqs.append((bin_id, subs))
            n += 1
        shards.append(seqs)
    return shards


def _expected(bin_id: int, subs: list[SubSample]) -> dict:
    """The json member, built independently of the writer."""
    entries, cu, i = [], [0], 0
    for s in subs:
        names = [f"{i + k}.{e}" for k, e in enumerate(s.image_exts)]
        i += len(names)
        entries.append({"id": s.id, "length": s.length, "turns": s.turns, "images": names,
                        "image_tokens": s.image_tokens})
        cu.append(cu[-1] + s.length)
    return {"bin": bin_id, "length": cu[-1], "subsamples": entries, "cu_seqlens": cu}


def _write(root: str) -> list[dict]:
    shards = [write_packed_shard(storage.join(root, f"part-{i:06d}.tar"), seqs)
              for i, seqs in enumerate(_sequences())]
    write_energon_metadata(root, shards)
    return shards


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("packed") / "ds")
    expected = {ps.sample_key(b): (_expected(b, subs), [im for s in subs for im in s.images])
                for seqs in _sequences() for b, subs in seqs}
    return root, _write(root), expected


def _files(root: str) -> dict[str, bytes]:
    return {os.path.relpath(p, root): open(p, "rb").read()
            for d, _, fs in os.walk(root) for p in (os.path.join(d, f) for f in fs)}


# ---------------------------------------------------------------- tar layout and our reader

def test_read_packed_round_trip(packed):
    root, shards, expected = packed
    for shard, seqs in zip(shards, _sequences()):
        got = list(read_packed(shard["uri"]))
        assert [g["key"] for g in got] == [ps.sample_key(b) for b, _ in seqs] == shard["keys"]
        for g in got:
            assert g["json"] == expected[g["key"]][0]
            assert g["images"] == expected[g["key"]][1]  # stored bytes, not re-encoded
        assert shard["samples"] == len(seqs)


def test_member_names_and_order(packed):
    _, shards, _ = packed
    with tarfile.open(shards[0]["uri"]) as tar:
        names = [m.name for m in tar.getmembers()]
    key = shards[0]["keys"][2]  # the third sequence: 3 sub-samples with 2+3+0 images
    assert [n for n in names if n.startswith(key)] == [
        f"{key}.json", f"{key}.0.jpg", f"{key}.1.png", f"{key}.2.jpg", f"{key}.3.png", f"{key}.4.jpeg"]


def test_layout_matches_tarfile(tmp_path):
    """TarWriter.layout / end_offset (what the index is built from) agree with tarfile's reading."""
    w = TarWriter(str(tmp_path / "t.tar"))
    w.write("a", {"json": b"{}", "0.jpg": b"x" * 513})
    w.write("b", {"txt": b""})
    w.write("c", {"json": b"y" * 512, "0.png": b"z"})
    w.close()
    with tarfile.open(tmp_path / "t.tar") as tar:
        members = tar.getmembers()
        end = tar.offset
    flat = [(name, off, size) for _, _, parts in w.layout for name, off, size in parts]
    assert [(m.offset_data, m.size) for m in members] == [(off, size) for _, off, size in flat]
    assert [start for _, start, _ in w.layout] == [members[0].offset, members[2].offset, members[3].offset]
    assert w.end_offset == end


def test_writing_twice_gives_identical_bytes(packed, tmp_path):
    root, shards, _ = packed
    again = str(tmp_path / "ds")
    shards2 = _write(again)
    assert [s["sha256"] for s in shards2] == [s["sha256"] for s in shards]
    assert [{k: v for k, v in s.items() if k != "uri"} for s in shards2] == \
           [{k: v for k, v in s.items() if k != "uri"} for s in shards]
    assert _files(again) == _files(root)  # tars and every metadata file, uuid and sqlite included


def test_shard_record_survives_json(packed, tmp_path):
    """The shard dicts travel through manifests: a JSON round trip must give the same metadata."""
    root, shards, _ = packed
    copy = str(tmp_path / "ds")
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".nv-meta", "*.idx"))
    moved = [dict(s, uri=s["uri"].replace(root, copy)) for s in json.loads(json.dumps(shards))]
    write_energon_metadata(copy, moved)
    assert _files(copy) == _files(root)


# ---------------------------------------------------------------- energon metadata

def _sqlite(path: str) -> dict:
    db = sqlite3.connect(path)
    try:
        out = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in ("samples", "sample_parts")}
        out["columns"] = {t: db.execute(f"PRAGMA table_info({t})").fetchall() for t in ("samples", "sample_parts")}
        out["indexes"] = sorted(db.execute("SELECT name, tbl_name FROM sqlite_master WHERE type='index'").fetchall())
        return out
    finally:
        db.close()


def test_metadata_matches_energon_prepare(packed, tmp_path):
    from click.testing import CliRunner
    from megatron.energon.tools.prepare import command

    root, _, _ = packed
    ref = tmp_path / "ref"
    ref.mkdir()
    for name in sorted(os.listdir(root)):
        if name.endswith(".tar"):
            shutil.copy(os.path.join(root, name), ref / name)
    res = CliRunner().invoke(command, [str(ref), "--non-interactive", "--split-ratio", "1,0,0", "--no-progress",
                                       "--num-workers", "1", "--sample-type", "CrudeWebdataset"])
    assert res.exit_code == 0, res.output
    ours, theirs = _files(root), _files(str(ref))
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        if name.endswith((".tar", ".tar.idx")) or name in (".nv-meta/.info.json", ".nv-meta/split.yaml"):
            assert ours[name] == theirs[name], name  # byte for byte
    assert _sqlite(os.path.join(root, ".nv-meta/index.sqlite")) == _sqlite(str(ref / ".nv-meta/index.sqlite"))
    ds = yaml.safe_load(ours[".nv-meta/dataset.yaml"])
    assert ds.pop("subflavors") == ps.SUBFLAVORS
    assert ds == yaml.safe_load(theirs[".nv-meta/dataset.yaml"])
    assert len(ours[".nv-meta/index.uuid"].decode()) == len(theirs[".nv-meta/index.uuid"].decode()) == 36
    counts = json.loads(ours[".nv-meta/.info.json"])["shard_counts"]
    assert counts == {f"part-{i:06d}.tar": PER_SHARD for i in range(N_SHARDS)}


def test_collapse_expands_back():
    import braceexpand

    names = ["a/s-000008.tar", "a/s-000009.tar", "a/s-000010.tar", "a/s-000012.tar", "b/s-000013.tar",
             "b/s-000014.tar", "c9/x-1.tar", "c9/x-2.tar", "c9/x-10.tar", "plain.tar"]
    got = ps._collapse(names)
    assert got[:2] == ["a/s-{000008..000010}.tar", "a/s-000012.tar"]
    assert [n for g in got for n in braceexpand.braceexpand(g)] == names


def test_custom_split_and_val_loader(packed, tmp_path):
    root, shards, expected = packed
    copy = str(tmp_path / "ds")
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".nv-meta", "*.idx"))
    moved = [dict(s, uri=s["uri"].replace(root, copy)) for s in shards]
    write_energon_metadata(copy, moved, split={"train": [moved[0]["uri"], "part-000002.tar"],
                                               "val": ["part-000001.tar"]})
    split = yaml.safe_load(open(os.path.join(copy, ".nv-meta/split.yaml")))
    assert split["split_parts"] == {"train": ["part-000000.tar", "part-000002.tar"], "val": ["part-000001.tar"]}
    got = [s for batch in ps.energon_loader(copy, batch_size=2, split="val", training=False) for s in batch]
    assert sorted(s["key"] for s in got) == moved[1]["keys"] and all(
        s["json"] == expected[s["key"]][0] for s in got)


def test_metadata_rejects_bad_input(packed, tmp_path):
    root, shards, _ = packed
    with pytest.raises(ValueError, match="unique"):
        write_energon_metadata(root, [shards[0], dict(shards[0], uri=shards[0]["uri"][:-4] + "-b.tar")])
    with pytest.raises(ValueError, match="not under"):
        write_energon_metadata(str(tmp_path / "elsewhere"), shards)
    with pytest.raises(ValueError, match="not written"):
        write_energon_metadata(root, shards, split={"train": ["nope.tar"]})
    bad = SubSample(id="x", length=3, turns=[], images=[b"1"], image_exts=["gif"], image_tokens=[1])
    with pytest.raises(ValueError, match="gif"):
        write_packed_shard(str(tmp_path / "b.tar"), [(0, [bad])])
    bad = SubSample(id="x", length=3, turns=[], images=[b"1"], image_exts=["jpg"], image_tokens=[])
    with pytest.raises(ValueError, match="differ"):
        write_packed_shard(str(tmp_path / "b.tar"), [(0, [bad])])
    good = SubSample(id="x", length=3, turns=[])
    with pytest.raises(ValueError, match="twice"):
        write_packed_shard(str(tmp_path / "b.tar"), [(0, [good]), (0, [good])])
    assert not os.path.exists(tmp_path / "b.tar")  # aborted writes leave nothing


def test_metadata_on_s3(packed, s3_root, tmp_path):
    """Same objects on S3 as locally, written without reading a tar back."""
    root, _, _ = packed
    _write(s3_root)
    local = storage.localize(s3_root, cache_dir=str(tmp_path / "cache"))
    assert _files(local) == _files(root)


# ---------------------------------------------------------------- energon opens the folder

@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("training", [True, False])
def test_energon_loads_every_sequence_once(packed, num_workers, training):
    root, _, expected = packed
    loader = ps.energon_loader(root, batch_size=2, num_workers=num_workers, training=training, repeat=False)
    got = [s for batch in loader for s in batch]
    assert sorted(s["key"] for s in got) == sorted(expected)  # each exactly once
    for s in got:
        assert s["json"] == expected[s["key"]][0]
        assert [bytes(b) for b in s["images"]] == expected[s["key"]][1]
        assert s["__subflavors__"] == ps.SUBFLAVORS


def test_energon_training_loader_loops(packed):
    root, _, expected = packed
    # No sample shuffle buffer (it would mix neighbouring epochs): each epoch is then one permutation.
    loader = ps.energon_loader(root, batch_size=None, num_workers=0, savable=True, shuffle_buffer_size=None)
    keys = [s["key"] for s, _ in zip(loader, range(3 * len(expected)))]
    n = len(expected)
    assert all(sorted(keys[i:i + n]) == sorted(expected) for i in range(0, 3 * n, n))


def test_idx_is_uint64_offsets(packed):
    root, shards, _ = packed
    raw = open(os.path.join(root, "part-000000.tar.idx"), "rb").read()
    assert list(struct.unpack(f"<{len(raw) // 8}Q", raw)) == shards[0]["offsets"]


def test_task_encoder_importable_and_picklable():
    import pickle

    from ovpipe.packing.packed_shards import PackedTaskEncoder  # made on first use (energon import)

    te = pickle.loads(pickle.dumps(PackedTaskEncoder()))
    assert te.decoder is None and te.cookers[0].has_subflavors == ps.SUBFLAVORS
