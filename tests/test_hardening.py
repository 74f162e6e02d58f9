"""What the hardening issue fixed, one property per test: fault points, stale caches, escaping keys, writers
aborted on error, exports committed last, code versions per shard, the pixel limit under threads, the
loader's length check."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ovpipe import faults, sharded, storage
from ovpipe.data.images import decode_image
from ovpipe.data.tarwriter import TarWriter
from ovpipe.verify.badinput import bomb_png, good_image

POINT = r"""
import sys
from ovpipe import faults
for i in range(3):
    faults.point("mid_write", "embed")
    print("passed", i, flush=True)
"""


def _point(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", POINT], env={**os.environ, **env}, capture_output=True, text=True)


def test_a_fault_kills_at_the_nth_reach_once_per_folder(tmp_path):
    env = {"OVPIPE_FAULT": "embed:mid_write:2", "OVPIPE_FAULT_ONCE": str(tmp_path / "once")}
    first = _point(env)
    assert first.returncode == -9 and first.stdout.split("\n")[:-1] == ["passed 0"]
    assert "killing pid" in first.stderr and "embed:mid_write" in first.stderr
    assert _point(env).stdout.count("passed") == 3  # fired before: the rerun goes through
    assert _point({"OVPIPE_FAULT": "filter:mid_write"}).returncode == 0  # another step's fault


def test_a_bad_fault_spec_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("OVPIPE_FAULT", "embed:nowhere")
    with pytest.raises(ValueError, match="step:point"):
        faults.point("mid_write", "embed")


def test_localize_serves_a_rewritten_object_fresh(s3_root, tmp_path):
    for kind in ("file", "folder"):
        uri = storage.join(s3_root, kind, "x.bin") if kind == "file" else storage.join(s3_root, kind)
        target = uri if kind == "file" else storage.join(uri, "sub", "w.bin")
        storage.write_bytes(target, b"first")
        first = storage.localize(uri, str(tmp_path / "cache"))
        storage.write_bytes(target, b"second, longer")
        second = storage.localize(uri, str(tmp_path / "cache"))
        read = (lambda p: open(p, "rb").read()) if kind == "file" else \
            (lambda p: open(os.path.join(p, "sub", "w.bin"), "rb").read())
        assert read(first) == b"first" and read(second) == b"second, longer"
        assert storage.localize(uri, str(tmp_path / "cache")) == second  # unchanged: the cached copy


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/x", "a//b", "a/./b"])
def test_a_key_that_escapes_its_folder_is_refused(key):
    with pytest.raises(storage.StorageError, match="escapes"):
        storage.relative_key("s3://b/run/export", f"s3://b/run/export/{key}")
    assert storage.relative_key("s3://b/run/export", "s3://b/run/export/llm/model.bin") == "llm/model.bin"


def test_download_tree_refuses_an_escaping_key(monkeypatch, tmp_path):
    monkeypatch.setattr(storage, "list_uris", lambda uri: [f"{uri}/ok.bin", f"{uri}/../../evil.bin"])
    fetched = []
    monkeypatch.setattr(storage, "download", lambda uri, path: fetched.append(path))
    with pytest.raises(storage.StorageError, match="escapes"):
        storage.download_tree("s3://b/export", str(tmp_path / "dest"))
    assert fetched == []  # refused before anything was written


def test_tarwriter_aborts_on_error(tmp_path):
    uri = str(tmp_path / "out.tar")
    with pytest.raises(RuntimeError):
        with TarWriter(uri) as w:
            w.write("a", {"txt": b"x"})
            raise RuntimeError("mid-shard")
    assert not os.path.exists(uri)
    with TarWriter(uri) as w:
        w.write("a", {"txt": b"x"})
    assert os.path.getsize(uri) > 0


def test_put_tree_commits_its_commit_file_last(tmp_path, monkeypatch):
    src = tmp_path / "export"
    (src / "llm").mkdir(parents=True)
    for name in ("ovpipe.json", "llm/model.safetensors", "a.txt", "z.txt"):
        (src / name).write_text(name)
    order = []
    monkeypatch.setattr(storage, "put_file", lambda path, uri: order.append(os.path.relpath(path, src)))
    storage.put_tree(str(src), "s3://b/x", last="ovpipe.json")
    assert order[-1] == "ovpipe.json" and sorted(order) == sorted(["ovpipe.json", "llm/model.safetensors", "a.txt",
                                                                   "z.txt"])


def test_a_step_made_by_two_code_versions_names_both():
    markers = [{"shard": 0, "code_version": "0.1+gaaa"}, {"shard": 1, "code_version": "0.1+gbbb"},
               {"shard": 2, "code_version": "0.1+gaaa"}]
    assert sharded.made_by(markers) == "0.1+gaaa (shards [0, 2]); 0.1+gbbb (shards [1])"
    assert sharded.made_by(markers[:1]) == "0.1+gaaa"


def test_the_pixel_limit_holds_in_every_thread():
    """PIL's own guard works through warnings filters, which threads share: ours must not."""
    bomb = bomb_png(18000)
    fine = good_image(np.random.default_rng(0), "png", 64, 64)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: decode_image(bomb if i % 2 else fine), range(64)))
    assert all(err and err[0] == "decompression_bomb" for _, err in results[1::2])
    assert all(err is None for _, err in results[::2])


def test_sixteen_bit_and_palette_images_keep_their_range():
    from PIL import Image

    gray16 = Image.fromarray(np.full((8, 8), 40000, np.uint16))
    buf = io.BytesIO()
    gray16.save(buf, "PNG")
    im, err = decode_image(buf.getvalue())
    assert err is None and im.mode == "RGB" and 150 < im.getpixel((0, 0))[0] < 160  # 40000/65535*255, not 255


def test_embeddings_do_not_depend_on_torch_threads(tmp_path):
    """Thread counts differ across machines and worker counts (run_shards divides the cores): the bytes
    of an embed shard must not."""
    import torch

    from ovpipe.curation.embed import embed_shard
    from ovpipe.steps import run as run_step
    from tests.helpers import small_context

    ctx = small_context(str(tmp_path), "synth.shards=1")
    run_step(ctx, "synth")
    before = torch.get_num_threads()
    digests = set()
    try:
        for n in (1, 3, 8):
            torch.set_num_threads(n)
            digests.add(embed_shard(ctx, 0).outputs[0]["sha256"])
    finally:
        torch.set_num_threads(before)
    assert len(digests) == 1
