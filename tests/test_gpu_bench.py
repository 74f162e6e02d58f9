"""bench/gpu_embed.py and bench/gpu_train.py in their tiny CPU mode (what a GPU run does, at toy sizes),
plus the pieces whose GPU numbers depend on them: FLOP counts, the peak table, the fallbacks."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_embed  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

H14 = {"embed_dim": 1024, "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80,
                                         "patch_size": 14}}


def run_tiny(script: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), "--tiny", "--out", str(out), *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"wrote {out}" in res.stdout
    return json.loads(out.read_text())


def test_gpu_embed_tiny(tmp_path):
    r = run_tiny("gpu_embed", tmp_path)
    assert r["bench"] == "gpu_embed" and r["tiny"] is True and r["cuda"] is False
    assert r["tower"]["source"].startswith("open_clip ovpipe-tiny-clip via ovpipe.models.clip.load_clip")
    assert r["flops_per_image"] == gpu_embed.vit_flops(r["tower"])
    assert r["peak_bf16_tflops"] is None and r["limit_images_per_second"] is None
    assert [s["batch"] for s in r["sweep"]] == [4, 8] and r["batch_size"] in (4, 8)
    assert r["jpegs"]["count"] == 12 and r["images_per_row"] == 24
    names = [row["name"] for row in r["rows"]]
    assert names == ["model_only", "cpu_decode", "cpu_decode_e2e", "gpu_decode", "gpu_decode_e2e"]
    for row in r["rows"]:
        assert row["images_per_second"] > 0 and row["fraction_of_peak"] is None
        assert row.get("failed", 0) == 0


def test_gpu_train_tiny(tmp_path):
    r = run_tiny("gpu_train", tmp_path)
    assert r["bench"] == "gpu_train" and r["tiny"] is True and "PackedCausalAttention" in r["attention"]
    assert r["micro_batches"] == 2 and all(sum(s) == r["capacity"] == 256 for s in r["sub_sequences"])
    assert all(len(s) > 1 for s in r["sub_sequences"])  # several sub-sequences per pack
    assert [row["layers"] for row in r["rows"]] == [1, 2]
    for row in r["rows"]:
        assert row["tokens_per_second"] > 0 and row["tokens_per_step"] == 512
        assert all(math.isfinite(x) and 0 < x < 9 for x in row["losses"])
        assert row["flop_check"]["counted_matmul"] == row["flop_check"]["analytic_matmul"]
    ext = r["extrapolated_full_depth"]
    assert ext["extrapolated"] is True and ext["layers"] == 4 and ext["from_layers"] == [1, 2]
    assert r["full_depth"] is None  # timings on a shared CPU are noise: check the arithmetic, not the order
    assert abs(ext["step_seconds"] - (ext["fixed_seconds"] + 4 * ext["per_layer_seconds"])) < 1e-3


def test_h14_flops_match_the_flop_counter():
    from timm.models.vision_transformer import VisionTransformer
    from torch.utils.flop_counter import FlopCounterMode

    shape = gpu_embed.tower_shape(H14)
    assert shape == {"image_size": 224, "patch_size": 14, "width": 1280, "layers": 32, "heads": 16, "mlp": 5120,
                     "embed_dim": 1024}
    with torch.device("meta"):  # the real H/14 graph at no cost
        model = VisionTransformer(img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4,
                                  num_classes=1024, pre_norm=True)
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 224, 224))
    assert counter.get_total_flops() == gpu_embed.vit_flops(shape)
    assert 334e9 < gpu_embed.vit_flops(shape) < 335e9


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0), ("NVIDIA H200", 989.4),
    ("NVIDIA GH200 480GB", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0),
    ("NVIDIA H20", 148.0), ("Tesla T4", None)])
def test_peak_table(name, peak):
    assert gpu_embed.gpu_peak(name) == peak
    assert gpu_embed.gpu_peak(name, 123.0) == 123.0


def test_timm_fallback_tower_has_the_recipe_shape():
    encode, shape, mean, std, dtype, source = gpu_embed.load_tower(True, "cpu", backend="timm")
    assert source.startswith("timm VisionTransformer") and dtype == torch.float32
    with torch.no_grad():
        out = encode(torch.randn(2, 3, shape["image_size"], shape["image_size"]))
    assert out.shape == (2, shape["embed_dim"])


def test_cpu_decode_is_a_centre_crop_resize():
    datas = gpu_embed.make_jpegs(10, 0.05, 0.2, seed=3, threads=2)
    assert datas == gpu_embed.make_jpegs(10, 0.05, 0.2, seed=3, threads=2)  # seeded
    stats = gpu_embed.jpeg_stats(datas)
    assert 0.05 <= stats["megapixels_min"] and stats["megapixels_max"] <= 0.2
    from ovpipe.data.gpu_decode import decode_resize_batch

    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    ref = decode_resize_batch(datas, 64, mean, std, "cpu")  # full decode; index 9 carries EXIF orientation 6
    for i, d in enumerate(datas):
        arr = gpu_embed.cpu_decode(d, 64)
        assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()
        y = (ref.pixels[i] * 0.5 + 0.5) * 255
        # draft mode's DCT downscale blurs the noise texture differently from a full decode (measured
        # 0.9-5.6 grey levels); a wrong crop or orientation gives tens
        assert (x - y).abs().mean() < 7.0, i


def test_segment_attention_matches_packed_causal_attention():
    gpu_train = pytest.importorskip("gpu_train")
    from megatron.core.packed_seq_params import PackedSeqParams

    from ovpipe.models.attention import PackedCausalAttention

    cfg = SimpleNamespace(kv_channels=16, attention_dropout=0.0)
    torch.manual_seed(0)
    q, k, v = torch.randn(40, 4, 16), torch.randn(40, 2, 16), torch.randn(40, 2, 16)
    cu = torch.tensor([0, 7, 25, 40], dtype=torch.int32)
    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=18, max_seqlen_kv=18)
    ours = gpu_train.SegmentFlashAttention(cfg, 1, None, "self")(q, k, v, packed_seq_params=psp)
    ref = PackedCausalAttention(cfg, 1, None, "self")
    assert torch.allclose(ours, ref(q, k, v, packed_seq_params=psp), atol=1e-5)


def test_train_flops_and_extrapolation():
    gpu_train = pytest.importorskip("gpu_train")
    from ovpipe.config import load_recipe

    cfg = load_recipe(str(ROOT / "configs" / "recipes" / "ov15-4b.yaml")).model.llm
    per_layer = 2560 * (4096 + 2048) + 4096 * 2560 + 3 * 2560 * 9728
    assert gpu_train.matmul_params(cfg, 36, 151_936) == 36 * per_layer + 2560 * 151_936  # ~4.0B
    micro = [{"lengths": [4096, 4096]}]
    assert gpu_train.step_flops(cfg, 1, 151_936, micro) == 6 * (per_layer + 2560 * 151_936) * 8192 + \
        6 * 4096 * 2 * 4096 ** 2
    lengths = gpu_train.sub_lengths(8192, 1024, np.random.default_rng(0))
    assert sum(lengths) == 8192 and len(lengths) > 2 and min(lengths) > 0
    recipe = SimpleNamespace(model=SimpleNamespace(llm=cfg))
    rows = [{"layers": n, "step_seconds": 0.1 + 0.02 * n, "tokens_per_step": 8192, "peak_memory_gib": 10 + 2.5 * n}
            for n in (4, 12)]
    ext = gpu_train.extrapolate(rows, 36, recipe, 151_936, micro, peak=989.4)
    assert ext["extrapolated"] and abs(ext["step_seconds"] - 0.82) < 1e-9 and abs(ext["peak_memory_gib"] - 100) < 0.1
    assert ext["mfu"] == round(ext["step_flops"] / 0.82 / 1e12 / 989.4, 4)
    assert gpu_train.extrapolate(rows[:1], 36, recipe, 151_936, micro, peak=None) is None
