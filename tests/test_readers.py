"""Input readers: img2dataset-style tars (also cut short) and parquet with an image-bytes column."""
from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ovpipe.data.shards import ShardReport, iter_samples, list_shards
from ovpipe.data.tarwriter import TarWriter
from ovpipe.sharded import make_context
from ovpipe.steps import run as run_step
from tests.helpers import SMALL, TINY


def _jpeg(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def _write_tar(path, n, start=0):
    w = TarWriter(str(path))
    for i in range(start, start + n):
        w.write(f"{i:09d}", {"jpg": _jpeg((i * 7 % 255, 80, 120)), "txt": f"a picture number {i} of a square".encode(),
                              "json": json.dumps({"url": f"http://x/{i}"}).encode()})
    w.close()


def test_tar_cut_short_is_reported_and_keeps_what_it_read(tmp_path):
    _write_tar(tmp_path / "full.tar", 20)
    data = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) * 6 // 10])
    report = ShardReport(str(tmp_path / "cut.tar"))
    samples = list(iter_samples(str(tmp_path / "cut.tar"), report))
    good = [s for s in samples if s.error is None]
    broken = [s for s in samples if s.error is not None]
    assert 8 <= len(good) < 20 and len(broken) == 1 and broken[0].error[0] == "incomplete_sample"
    assert [s.key for s in good] == [f"{i:09d}" for i in range(len(good))]
    assert report.errors and report.errors[0]["samples_read"] == len(good)
    assert good[0].meta == {"url": "http://x/0"} and good[0].caption_text().startswith("a picture")


def test_sample_without_image_is_an_error_not_a_crash(tmp_path):
    w = TarWriter(str(tmp_path / "s.tar"))
    w.write("a", {"txt": b"caption only"})
    w.write("b", {"png": b"\x89PNG...", "txt": b"x"})
    w.close()
    samples = list(iter_samples(str(tmp_path / "s.tar"), ShardReport("s")))
    assert samples[0].error[0] == "missing_image" and samples[1].error is None and samples[1].image_ext == "png"


@pytest.mark.parametrize("hf_struct", [False, True])
def test_parquet_with_image_bytes(tmp_path, hf_struct):
    images = [_jpeg((10 * i, 0, 0)) for i in range(5)]
    column = [{"bytes": b, "path": None} for b in images] if hf_struct else images
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(5)], "image": column,
                             "caption": [f"caption {i}" for i in range(5)]}), tmp_path / "x.parquet")
    samples = list(iter_samples(str(tmp_path / "x.parquet"), ShardReport("x")))
    assert [s.key for s in samples] == [f"p{i}" for i in range(5)]
    assert samples[3].image == images[3] and samples[3].caption_text() == "caption 3"


def test_parquet_missing_column_is_a_counted_reject_and_a_shard_error(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b"], "img": [b"x", b"y"]}), tmp_path / "x.parquet")
    report = ShardReport("x")
    samples = list(iter_samples(str(tmp_path / "x.parquet"), report))
    assert [(s.key, s.error[0]) for s in samples] == [("a", "missing_image"), ("b", "missing_image")]
    assert "no 'image' column" in samples[0].error[1]
    assert "lacks columns ['image']" in report.errors[0]["error"] and "data.image_column" in report.errors[0]["error"]


def test_duplicate_keys_are_rejects_not_overwrites(tmp_path):
    """A key twice in a tar (apart, or a member repeated inside a group) and an id twice in parquet:
    the first occurrence is the sample, the others are `duplicate_key` rejects."""
    path = tmp_path / "d.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("a.jpg", b"1"), ("a.txt", b"t"), ("b.jpg", b"2"), ("b.jpg", b"3"), ("c.jpg", b"4"),
                           ("a.jpg", b"5")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    got = [(s.key, s.error[0] if s.error else s.image) for s in iter_samples(str(path), ShardReport("d"))]
    assert got == [("a", b"1"), ("b", "duplicate_key"), ("c", b"4"), ("a", "duplicate_key")]
    pq.write_table(pa.table({"id": ["x", "y", "x"], "image": [b"\xff\xd8\xff1", b"\xff\xd8\xff2", b"\xff\xd8\xff3"]}),
                   tmp_path / "d.parquet")
    got = [(s.key, s.error[0] if s.error else s.image)
           for s in iter_samples(str(tmp_path / "d.parquet"), ShardReport("p"))]
    assert got == [("x", b"\xff\xd8\xff1"), ("y", b"\xff\xd8\xff2"), ("x", "duplicate_key")]


def test_external_input_with_a_cut_shard_balances(tmp_path):
    """`--input` a folder of img2dataset tars, one cut short: reported, and every read key accounted for."""
    inp = tmp_path / "in"
    inp.mkdir()
    _write_tar(inp / "00000.tar", 30)
    _write_tar(inp / "00001.tar", 30, start=30)
    data = (inp / "00001.tar").read_bytes()
    (inp / "00001.tar").write_bytes(data[: len(data) // 2])
    ctx = make_context(TINY, str(tmp_path / "store"), "ext", SMALL, input_uri=str(inp))
    body = run_step(ctx, "embed")
    assert len(body["shard_errors"]) == 1 and body["shard_errors"][0]["shard"].endswith("00001.tar")
    c = body["counts"]
    assert c["in"] == c["out"] + sum(c["rejected"].values()) and c["rejected"].get("incomplete_sample") == 1
    assert 40 < c["in"] < 60


def test_parquet_input_runs_through_embed(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"id": [f"q{i}" for i in range(12)], "image": [_jpeg((i, i, i)) for i in range(12)],
                             "caption": ["a gray square on a plain background"] * 12}), inp / "part-0.parquet")
    ctx = make_context(TINY, str(tmp_path / "store"), "pq", SMALL, input_uri=str(inp))
    assert run_step(ctx, "embed")["counts"] == {"in": 12, "out": 12, "rejected": {}}


def test_img2dataset_metadata_parquet_beside_its_tar_is_not_a_shard(tmp_path, caplog):
    for name in ("00000.tar", "00000.parquet", "00000_stats.json", "00001.parquet", "_SUCCESS"):
        (tmp_path / name).write_bytes(b"")
    names = lambda fmt: [os.path.basename(u) for u in list_shards(str(tmp_path), fmt)]  # noqa: E731
    assert names("auto") == ["00000.tar", "00001.parquet"]
    assert "00000_stats.json" in caplog.text and "_SUCCESS" in caplog.text  # passed over, but said
    assert names("webdataset") == ["00000.tar"]
    assert names("parquet") == ["00000.parquet", "00001.parquet"]
