"""GPU benchmark of the embed step's image side: MetaCLIP-H/14 images/s, and what feeding it costs.

The tower is the ov15-4b recipe's embed model (open_clip ViT-H-14-quickgelu: 224 px, patch 14, width
1280, 32 layers, 16 heads, MLP 5120, 1024-d projection) built by ovpipe.models.clip.load_clip with no
weights (seeded random init: the FLOPs are those of the real checkpoint), bf16 weights on CUDA. Without
open_clip (a bare device image) the same shape is built with timm's VisionTransformer, labelled so.

Rows (images/s; each at the batch size the model-only sweep found fastest):
  model_only        pre-made normalized tensors on the GPU: compute alone
  cpu_decode        JPEG bytes -> PIL decode in draft mode (DCT-domain downscale: Image.draft('RGB',
                    (size, size))), then one resize of the centre crop (resize's box), in a
                    ThreadPoolExecutor of --threads workers; uint8 arrays out, no model
  cpu_decode_e2e    the same pool feeding the model: uint8 batches pinned, copied, normalized on GPU
  gpu_decode        ovpipe.data.gpu_decode.decode_resize_batch: nvjpeg batched decode, EXIF orientation,
                    antialiased bicubic shortest-side resize + centre crop + mean/std on the GPU; no model
  gpu_decode_e2e    the same, feeding the model
Inputs: --pool seeded synthetic JPEGs (PIL, quality 90, smooth content + noise texture, a tenth with an
EXIF rotation), 0.3-12 MP log-uniform, cycled to --images per row.

FLOPs per image are counted from the shape (forward, multiply-add = 2): per layer over T = (224/14)^2 + 1
= 257 tokens, QKV 6·T·w², output projection 2·T·w², MLP 4·T·w·m, attention scores and values 4·T²·w;
plus the patch embedding 2·256·(3·14²)·w and the final projection 2·w·1024 (~335 GFLOP for H/14).
"Fraction of peak" is achieved FLOP/s over the GPU's dense bf16 peak (PEAK_BF16_TFLOPS, from
torch.cuda.get_device_name; 989 TFLOP/s for H100 SXM; --peak-tflops overrides); an 8192³ bf16 matmul
is timed beside it as the practical ceiling.

    python bench/gpu_embed.py            # CUDA: ~1-2 min on one H100; writes bench/results/gpu_embed.json
    python bench/gpu_embed.py --tiny     # CPU, tiny tower (configs/recipes/tiny.yaml), fp32: ~10 s

On a bare CUDA image (torch, torchvision, timm, PIL; no open_clip, megatron-core or TE), carry the few
wheels both GPU benches need, downloaded here for its Python (3.12):
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \\
        megatron-core==0.16.1 open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5
and there: pip install --no-index --no-deps --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import platform
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random init only: never a hub
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; first match wins.
PEAK_BF16_TFLOPS = [
    (r"h100.*pcie", 756.0), (r"h100.*nvl|h200.*nvl", 835.0), (r"\bgh200\b|\bh100\b|\bh200\b|\bh800\b", 989.4),
    (r"\bh20\b", 148.0), (r"\ba100\b|\ba800\b", 312.0), (r"\bl40s\b", 362.0), (r"\bl4\b", 121.0),
    (r"\bb200\b", 2250.0),
]


def gpu_peak(name: str, override: float | None = None) -> float | None:
    if override:
        return override
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, name.lower()):
            return tflops
    return None


def device_info(peak_override: float | None = None) -> dict:
    """The accelerator's name, its dense bf16 peak and a measured 8192³ bf16 matmul rate (CUDA only)."""
    info = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        return {**info, "device": f"cpu ({os.cpu_count()} cores)", "peak_bf16_tflops": peak_override,
                "matmul_bf16_tflops": None}
    name = torch.cuda.get_device_name()
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    mm = 10 * 2 * 8192 ** 3 / (time.perf_counter() - t0) / 1e12
    del a, b
    torch.cuda.empty_cache()
    return {**info, "device": name, "peak_bf16_tflops": gpu_peak(name, peak_override),
            "matmul_bf16_tflops": round(mm, 1)}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------- the tower

def vit_flops(s: dict) -> float:
    """Forward FLOPs per image of a CLIP ViT with shape `s` (see the module docstring)."""
    w, m, n_patch = s["width"], s["mlp"], (s["image_size"] // s["patch_size"]) ** 2
    t = n_patch + 1  # + class token
    per_layer = 6 * t * w * w + 2 * t * w * w + 4 * t * w * m + 4 * t * t * w
    return s["layers"] * per_layer + 2 * n_patch * 3 * s["patch_size"] ** 2 * w + 2 * w * s["embed_dim"]


def tower_shape(model_config: dict) -> dict:
    v = model_config["vision_cfg"]
    width = v["width"]
    return {"image_size": v["image_size"], "patch_size": v["patch_size"], "width": width, "layers": v["layers"],
            "heads": width // v.get("head_width", 64), "mlp": int(width * v.get("mlp_ratio", 4.0)),
            "embed_dim": model_config["embed_dim"]}


def load_tower(tiny: bool, device: str, seed: int = 0, backend: str = "auto"):
    """(encode(pixels) -> embeddings, shape, mean, std, dtype, source) for the recipe's embed tower."""
    from ovpipe.config import load_recipe

    recipe = load_recipe(str(ROOT / "configs" / "recipes" / ("tiny.yaml" if tiny else "ov15-4b.yaml")))
    precision = "fp32" if device == "cpu" else "bf16"
    cfg = dataclasses.replace(recipe.embed, weights=None, device=device, precision=precision)
    if backend in ("auto", "open_clip"):
        try:
            from ovpipe.models.clip import import_open_clip, load_clip

            open_clip = import_open_clip()
        except ImportError:
            if backend == "open_clip":
                raise
        else:
            model, _, _, _ = load_clip(cfg, seed)
            shape = tower_shape(cfg.model_config or open_clip.get_model_config(cfg.arch))
            pre = getattr(model.visual, "preprocess_cfg", {}) or {}
            mean, std = pre.get("mean", open_clip.OPENAI_DATASET_MEAN), pre.get("std", open_clip.OPENAI_DATASET_STD)
            dtype = next(model.visual.parameters()).dtype
            return (lambda x: model.encode_image(x)), shape, tuple(mean), tuple(std), dtype, \
                f"open_clip {cfg.arch} via ovpipe.models.clip.load_clip (random init, seed {seed})"
    # A bare device image has timm but not open_clip: the same ViT shape, timm's implementation.
    from timm.models.vision_transformer import VisionTransformer

    shape = tower_shape(cfg.model_config or {"embed_dim": 1024, "vision_cfg": {
        "image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14}})
    torch.manual_seed(seed)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = VisionTransformer(img_size=shape["image_size"], patch_size=shape["patch_size"], embed_dim=shape["width"],
                              depth=shape["layers"], num_heads=shape["heads"], mlp_ratio=shape["mlp"] / shape["width"],
                              num_classes=shape["embed_dim"], pre_norm=True).to(device, dtype).eval()
    return model, shape, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), dtype, \
        f"timm VisionTransformer, {cfg.arch} shape (open_clip not installed; random init, seed {seed})"


# ---------------------------------------------------------------- inputs

def make_jpegs(n: int, lo_mp: float, hi_mp: float, seed: int, threads: int) -> list[bytes]:
    """n seeded JPEGs, megapixels log-uniform in [lo_mp, hi_mp], mixed aspect ratios, 1 in 10 EXIF-rotated."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    mps = np.exp(rng.uniform(math.log(lo_mp), math.log(hi_mp), n))
    aspects = rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3], n)
    seeds = rng.integers(0, 2 ** 31, n)

    def one(i: int) -> bytes:
        r = np.random.default_rng(int(seeds[i]))
        w = max(16, int(math.sqrt(mps[i] * 1e6 * aspects[i])))
        h = max(16, int(mps[i] * 1e6 / w))
        base = Image.fromarray(r.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        arr = np.asarray(base, dtype=np.int16) + r.integers(-12, 13, (h, w, 1), dtype=np.int16)  # texture
        buf = io.BytesIO()
        kw = {}
        if i % 10 == 9:
            exif = Image.Exif()
            exif[0x0112] = 6
            kw["exif"] = exif.tobytes()
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90, **kw)
        return buf.getvalue()

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def jpeg_stats(datas: list[bytes]) -> dict:
    from PIL import Image

    mp = [Image.open(io.BytesIO(d)).size for d in datas]
    mp = np.array([w * h / 1e6 for w, h in mp])
    return {"count": len(datas), "megapixels_min": round(float(mp.min()), 3),
            "megapixels_mean": round(float(mp.mean()), 3), "megapixels_max": round(float(mp.max()), 3),
            "kb_mean": round(float(np.mean([len(d) for d in datas])) / 1e3, 1)}


def cpu_decode(data: bytes, size: int) -> np.ndarray:
    """PIL in draft mode (libjpeg scales by 1/2..1/8 while decoding, keeping both sides >= size), EXIF
    orientation, then one bicubic resize of just the region that Resize(size) + CenterCrop(size) keeps
    (resize's box, in source pixels): [size, size, 3] uint8."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size, size))
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        short, long = min(w, h), max(w, h)
        resized = max(size, int(size * long / short))  # torchvision's long side after Resize(size)
        start = round((resized - size) / 2.0) * long / resized
        span = size * long / resized
        box = (start, 0, start + span, h) if w >= h else (0, start, w, start + span)
        return np.asarray(im.resize((size, size), Image.BICUBIC, box=box))


# ---------------------------------------------------------------- timing

def model_rate(encode, shape, dtype, device, batch: int, min_seconds: float, min_iters: int) -> float:
    x = torch.randn(batch, 3, shape["image_size"], shape["image_size"], device=device, dtype=dtype)
    with torch.inference_mode():
        for _ in range(2):
            encode(x)
        sync()
        n, t0 = 0, time.perf_counter()
        while n < min_iters or time.perf_counter() - t0 < min_seconds:
            encode(x)
            n += 1
            if n % 4 == 0:
                sync()
        sync()
        return n * batch / (time.perf_counter() - t0)


def batches(stream: list[bytes], batch: int):
    for i in range(0, len(stream), batch):
        yield stream[i:i + batch]


def run_cpu_decode(stream, size, batch, threads, to_model=None) -> float:
    """Decode `stream` in a pool, a few batches ahead of the consumer; feed the model when given."""
    with ThreadPoolExecutor(threads) as pool:
        pending, done = [], 0
        parts = list(batches(stream, batch))
        t0 = time.perf_counter()
        with torch.inference_mode():
            for k in range(len(parts)):
                while len(pending) < 4 and k + len(pending) < len(parts):  # keep 4 batches in flight
                    pending.append([pool.submit(cpu_decode, d, size) for d in parts[k + len(pending)]])
                arrs = np.stack([f.result() for f in pending.pop(0)])
                done += len(arrs)
                if to_model is not None:
                    to_model(torch.from_numpy(arrs))
        sync()
        return done / (time.perf_counter() - t0)


def uint8_feeder(encode, mean, std, dtype, device):
    """[b, s, s, 3] uint8 on the host -> normalized [b, 3, s, s] on the device -> the model."""
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
    pin = device != "cpu"

    def feed(x: torch.Tensor):
        x = (x.pin_memory() if pin else x).to(device, non_blocking=True)
        return encode(((x.permute(0, 3, 1, 2).float() - m) / s).to(dtype))
    return feed


def run_gpu_decode(stream, size, batch, mean, std, dtype, device, encode=None) -> tuple[float, int]:
    from ovpipe.data.gpu_decode import decode_resize_batch

    failed = done = 0
    decode_resize_batch(stream[:4], size, mean, std, device, dtype=dtype)  # nvjpeg's handle and buffers
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for part in batches(stream, batch):
            out = decode_resize_batch(part, size, mean, std, device, dtype=dtype)
            failed += len(out.failed)
            done += len(out.ok)
            if encode is not None:
                encode(out.pixels)
    sync()
    return done / (time.perf_counter() - t0), failed


# ---------------------------------------------------------------- main

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU-sized run (automatic without CUDA)")
    ap.add_argument("--out", default=None, help="JSON path (bench/results/gpu_embed.json; _tiny with --tiny)")
    ap.add_argument("--batch-sizes", default=None, help="model-only sweep, comma-separated")
    ap.add_argument("--images", type=int, default=None, help="images per decode row")
    ap.add_argument("--pool", type=int, default=None, help="distinct synthetic JPEGs")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU decode threads")
    ap.add_argument("--backend", choices=("auto", "open_clip", "timm"), default="auto")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the dense bf16 peak")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    device = "cpu" if tiny else "cuda"
    sizes = [int(b) for b in (args.batch_sizes or ("4,8" if tiny else "64,128,256,512")).split(",")]
    n_images, n_pool = args.images or (24 if tiny else 4096), args.pool or (12 if tiny else 128)
    lo_mp, hi_mp = (0.01, 0.12) if tiny else (0.3, 12.0)
    t_start = time.perf_counter()

    info = device_info(args.peak_tflops)
    encode, shape, mean, std, dtype, source = load_tower(tiny, device, args.seed, args.backend)
    flops = vit_flops(shape)
    peak = info["peak_bf16_tflops"]
    print(f"{info['device']}: peak {peak} TFLOP/s bf16 dense, 8192^3 matmul {info['matmul_bf16_tflops']} TFLOP/s")
    print(f"tower: {source}; {shape}; {flops / 1e9:.2f} GFLOP/image forward, {dtype}")

    def row(name: str, ips: float, **extra) -> dict:
        tf = ips * flops / 1e12
        r = {"name": name, "images_per_second": round(ips, 1), "model_tflops": round(tf, 3),
             "fraction_of_peak": round(tf / peak, 4) if peak else None, **extra}
        frac = f"{r['fraction_of_peak']:.1%} of peak" if peak else "no peak known"
        print(f"  {name:16s} {ips:9.1f} img/s  ({tf:7.2f} TFLOP/s of model work, {frac})")
        return r

    sweep = []
    for b in sizes:
        ips = model_rate(encode, shape, dtype, device, b, min_seconds=0.2 if tiny else 1.5, min_iters=3)
        sweep.append({"batch": b, "images_per_second": round(ips, 1)})
        print(f"  sweep batch {b:4d}: {ips:9.1f} img/s")
    best = max(sweep, key=lambda r: r["images_per_second"])
    batch = best["batch"]
    rows = [row("model_only", best["images_per_second"], batch=batch)]

    t0 = time.perf_counter()
    pool = make_jpegs(n_pool, lo_mp, hi_mp, args.seed, args.threads)
    stats = {**jpeg_stats(pool), "generate_seconds": round(time.perf_counter() - t0, 1)}
    print(f"jpegs: {stats}")
    stream = [pool[i % len(pool)] for i in range(n_images)]
    size = shape["image_size"]
    feed = uint8_feeder(encode, mean, std, dtype, device)
    rows.append(row("cpu_decode", run_cpu_decode(stream, size, batch, args.threads), threads=args.threads))
    rows.append(row("cpu_decode_e2e", run_cpu_decode(stream, size, batch, args.threads, feed), threads=args.threads))
    ips, failed = run_gpu_decode(stream, size, batch, mean, std, dtype, device)
    rows.append(row("gpu_decode", ips, failed=failed))
    ips, failed = run_gpu_decode(stream, size, batch, mean, std, dtype, device, encode)
    rows.append(row("gpu_decode_e2e", ips, failed=failed))

    result = {"bench": "gpu_embed", "tiny": tiny, **info, "tower": {"source": source, **shape, "dtype": str(dtype)},
              "flops_per_image": flops, "limit_images_per_second": round(peak * 1e12 / flops, 1) if peak else None,
              "batch_size": batch, "sweep": sweep, "jpegs": stats, "images_per_row": n_images, "rows": rows,
              "seconds": round(time.perf_counter() - t_start, 1)}
    out = Path(args.out or ROOT / "bench" / "results" / ("gpu_embed_tiny.json" if tiny else "gpu_embed.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
