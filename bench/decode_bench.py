"""Benchmark of decoding images to the embedding model's input, per core: ovpipe's square path
(`data/decode.py`: DCT-scaled JPEG decode, one box resize, batch normalization) against the path the
embed step used before (full decode with `images.decode_image`, then open_clip's preprocess per image),
and PIL's draft mode under open_clip's preprocess as a middle point, all in the same run on the same bytes.

Inputs (seeded): photographs stand-ins with a natural-image spectrum (1/f amplitude, smoother
chroma, a little sensor noise) so the files have real JPEG sizes (bits per pixel are reported):
JPEGs of 0.3-12 MP (log-uniform; 4:3, 3:2, 16:9, 1:1 and portrait; quality 75-95; 4:2:0; 20%
progressive, reported apart as well; 10% with an EXIF orientation), and PNG and WebP sets of 0.3-4 MP.

The process pins itself to one core (torch 1 thread). Best of --repeats per mode. Embedding agreement:
cosine between the two paths' embeddings on the tiny recipe's tower and on a ViT-H/14-shaped tower
(random init, seeded), raw and centered (the set's mean embedding removed: random weights put all
images near one direction), each beside the same figure for *different* images. Today's path does
not apply EXIF orientation; for the agreement the reference is today's path on the upright image.

    python bench/decode_bench.py            # 40 JPEGs, 12 PNG, 12 WebP, best of 3
    python bench/decode_bench.py --quick    # 12/4/4, 1 repeat, no H/14

Writes bench/results/decode.json and decode.png (decode_quick.* with --quick).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from ovpipe.data.decode import SquareInput, square_pixels  # noqa: E402
from ovpipe.data.images import decode_image  # noqa: E402
from ovpipe.data.jpegscans import dc_scans_only  # noqa: E402
from ovpipe.models.clip import import_open_clip  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ASPECTS = [(4, 3), (3, 2), (16, 9), (1, 1), (3, 4), (2, 3)]
TARGET = 150  # JPEG images/s per core
BATCH = 64


def natural_image(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (h, w, 3) with a 1/f amplitude spectrum in luma and a smoother, weaker chroma."""
    def field(fw, fh, slope):
        fy = np.fft.fftfreq(fh).astype(np.float32)[:, None]
        fx = np.fft.rfftfreq(fw).astype(np.float32)[None, :]
        f = np.sqrt(fx * fx + fy * fy)
        f[0, 0] = 1.0
        spec = (rng.standard_normal(f.shape, np.float32) + 1j * rng.standard_normal(f.shape, np.float32)) / f ** slope
        spec[0, 0] = 0
        x = np.fft.irfft2(spec, s=(fh, fw)).astype(np.float32)
        return (x - x.mean()) / (x.std() + 1e-6)

    luma = 118 + 52 * field(w, h, 1.3)  # slope 1.3 with the noise below: ~2 bit/px at JPEG q85
    cw, ch = max(8, w // 4), max(8, h // 4)
    chroma = [np.asarray(Image.fromarray(field(cw, ch, 1.3)).resize((w, h), Image.Resampling.BILINEAR)) * 18
              for _ in range(2)]
    ycc = np.stack([luma, 128 + chroma[0], 128 + chroma[1]], -1) + rng.normal(0, 1.0, (h, w, 1)).astype(np.float32)
    return np.asarray(Image.fromarray(np.clip(ycc, 0, 255).astype(np.uint8), "YCbCr").convert("RGB"))


def make_images(n: int, fmt: str, mp_range: tuple[float, float], rng: np.random.Generator) -> list[dict]:
    out = []
    for _ in range(n):
        mp = float(np.exp(rng.uniform(np.log(mp_range[0]), np.log(mp_range[1]))))
        aw, ah = ASPECTS[rng.integers(len(ASPECTS))]
        h = int(round((mp * 1e6 * ah / aw) ** 0.5))
        w = int(round(h * aw / ah))
        im = Image.fromarray(natural_image(w, h, rng))
        buf, info = io.BytesIO(), {"format": fmt, "width": w, "height": h}
        if fmt == "JPEG":
            q, prog = int(rng.integers(75, 96)), bool(rng.random() < 0.2)
            kw = {"quality": q, "progressive": prog}
            if rng.random() < 0.1:
                exif = Image.Exif()
                exif[0x0112] = int(rng.choice([3, 6, 8]))
                kw["exif"] = exif.tobytes()
                info["orientation"] = exif[0x0112]
            im.save(buf, "JPEG", **kw)
            info.update(quality=q, progressive=prog)
        elif fmt == "WEBP":
            im.save(buf, "WEBP", quality=int(rng.integers(70, 95)), method=2)
        else:
            im.save(buf, "PNG", compress_level=6)
        info["bytes"] = buf.getvalue()
        out.append(info)
    return out


def today(datas, preprocess, sq):
    out = []
    for d in datas:
        im, err = decode_image(d, 8)
        out.append(preprocess(im))
    return torch.stack(out)


def draft_only(datas, preprocess, sq):
    out = []
    for d in datas:
        im = Image.open(io.BytesIO(d))
        if im.format == "JPEG":
            im.draft("RGB", (sq.size, sq.size))
        out.append(preprocess(im.convert("RGB")))
    return torch.stack(out)


def square(datas, preprocess, sq):
    return sq.batch([square_pixels(d, sq.size, 8)[0] for d in datas])


def scaled_decode_only(datas, preprocess, sq):
    """libjpeg's DCT-scaled decode of what the square path decodes (a progressive file at 1/8 without its
    AC scans), nothing after it: mostly entropy decoding, which every scale does in full."""
    for d in datas:
        im = Image.open(io.BytesIO(d))
        w, h = im.size
        long_out = int(sq.size * max(w, h) / min(w, h))
        if im.format == "JPEG":
            request = (sq.size, long_out) if w <= h else (long_out, sq.size)
            if "progression" in im.info and min(w // request[0], h // request[1]) >= 8:
                im = Image.open(io.BytesIO(dc_scans_only(d) or d))
            im.draft(im.mode, request)
        im.load()


MODES = {"today": today, "draft+preprocess": draft_only, "square": square, "scaled decode only": scaled_decode_only}
BUCKETS = [(0.0, 1.0), (1.0, 4.0), (4.0, 13.0)]  # megapixels


def timed(fn, datas, preprocess, sq, repeats):
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        for s in range(0, len(datas), BATCH):
            fn(datas[s:s + BATCH], preprocess, sq)
        best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
    return {"images_per_s": len(datas) / best[0], "seconds": best[0], "cpu_seconds": best[1],
            "images_per_cpu_s": len(datas) / best[1]}


def upright(d: bytes) -> bytes:
    buf = io.BytesIO()
    ImageOps.exif_transpose(Image.open(io.BytesIO(d))).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


@torch.no_grad()
def agreement(arch: str, config: dict | None, sets: dict, n_max: int) -> dict:
    open_clip = import_open_clip()
    if config:
        import tempfile
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, f"{arch}.json").write_text(json.dumps(config))
            open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model, _, pre = open_clip.create_model_and_transforms(arch, pretrained=None)
    model.eval()
    sq = SquareInput.of(pre)
    out = {"arch": arch, "image_size": sq.size}
    for fmt, images in sets.items():
        images = images[:n_max]
        ref_bytes = [upright(i["bytes"]) if i.get("orientation") else i["bytes"] for i in images]
        a = model.encode_image(today(ref_bytes, pre, sq), normalize=True)
        b = model.encode_image(square([i["bytes"] for i in images], pre, sq), normalize=True)
        # random weights map every image near one direction (different images' cosine ~0.99), so the
        # figure that can fail is the cosine after removing the mean embedding of the set
        mean = a.mean(0, keepdim=True)
        ca, cb = torch.nn.functional.normalize(a - mean, dim=1), torch.nn.functional.normalize(b - mean, dim=1)
        off = ~torch.eye(len(a), dtype=torch.bool)
        out[fmt] = {"images": len(images), "cosine_min": float((a * b).sum(1).min()),
                    "different_images_cosine_mean": float((a @ a.T)[off].mean()),
                    "centered_cosine_min": float((ca * cb).sum(1).min()),
                    "centered_cosine_mean": float((ca * cb).sum(1).mean()),
                    "different_images_centered_cosine_mean": float((ca @ ca.T)[off].mean()),
                    "pixel_mean_abs_diff": float((today(ref_bytes, pre, sq) - square(
                        [i["bytes"] for i in images], pre, sq)).abs().mean())}
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmts = list(result["formats"])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(MODES)
    for j, mode in enumerate(MODES):
        vals = [result["formats"][f]["modes"][mode]["images_per_cpu_s"] for f in fmts]
        ax.bar([i + j * width for i in range(len(fmts))], vals, width, label=mode)
    ax.axhline(TARGET, color="k", ls="--", lw=0.8, label=f"target {TARGET}/s (JPEG)")
    ax.set_xticks([i + width for i in range(len(fmts))],
                  [f"{f}\nx{result['formats'][f]['ratio_square_vs_today']:.1f}" for f in fmts])
    ax.set_ylabel("images per CPU-second (1 core)")
    ax.set_title(f"decode to {result['image_size']}px model input")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    n_jpeg, n_other, repeats = (12, 4, 1) if args.quick else (40, 12, args.repeats)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    sets = {"JPEG": make_images(n_jpeg, "JPEG", (0.3, 12.0), rng), "PNG": make_images(n_other, "PNG", (0.3, 4.0), rng),
            "WEBP": make_images(n_other, "WEBP", (0.3, 4.0), rng)}
    print(f"inputs made in {time.perf_counter() - t0:.0f} s")
    _, _, pre = import_open_clip().create_model_and_transforms("ViT-B-32", pretrained=None)  # 224, bicubic
    sq = SquareInput.of(pre)
    result = {"benchmark": "decode", "image_size": sq.size, "target_jpeg_images_per_s_per_core": TARGET,
              "machine": platform.processor() or platform.machine(), "pillow": Image.__version__,
              "batch": BATCH, "repeats": repeats, "formats": {}}
    for fmt, images in sets.items():
        datas = [i["bytes"] for i in images]
        mp = [i["width"] * i["height"] / 1e6 for i in images]
        row = {"images": len(images), "megapixels_mean": float(np.mean(mp)), "megapixels_range": [min(mp), max(mp)],
               "bits_per_pixel_mean": float(np.mean([8 * len(d) / (m * 1e6) for d, m in zip(datas, mp)])),
               "modes": {m: timed(fn, datas, pre, sq, repeats) for m, fn in MODES.items()}}
        modes = row["modes"]
        row["ratio_square_vs_today"] = modes["square"]["images_per_cpu_s"] / modes["today"]["images_per_cpu_s"]
        row["square_vs_decode_floor"] = (row["modes"]["square"]["images_per_cpu_s"]
                                         / row["modes"]["scaled decode only"]["images_per_cpu_s"])
        if fmt == "JPEG":
            for prog in (False, True):
                part = [i["bytes"] for i in images if i["progressive"] == prog]
                t = {m: timed(MODES[m], part, pre, sq, repeats)["images_per_cpu_s"] for m in ("today", "square")}
                row["progressive" if prog else "baseline"] = {"images": len(part), **t,
                                                              "ratio": t["square"] / t["today"]}
                print(f"  {'progressive' if prog else 'baseline'}: {len(part)} images, today {t['today']:.0f}/s, "
                      f"square {t['square']:.0f}/s, x{t['square'] / t['today']:.2f}")
            row["by_size"] = []
            for lo, hi in BUCKETS:
                part = [d for d, m in zip(datas, mp) if lo <= m < hi]
                if part:
                    t = {m: timed(MODES[m], part, pre, sq, repeats)["images_per_cpu_s"] for m in ("today", "square")}
                    row["by_size"].append({"megapixels": [lo, hi], "images": len(part), **t,
                                           "ratio": t["square"] / t["today"]})
                    print(f"  {lo:g}-{hi:g} MP: {len(part)} images, today {t['today']:.0f}/s, square "
                          f"{t['square']:.0f}/s, x{t['square'] / t['today']:.2f}")
        result["formats"][fmt] = row
        print(f"{fmt:5s} {len(images):3d} images, {row['megapixels_mean']:.1f} MP mean, "
              f"{row['bits_per_pixel_mean']:.2f} bit/px: " + ", ".join(
                  f"{m} {r['images_per_cpu_s']:.0f}/s" for m, r in row["modes"].items())
              + f"  -> square/today x{row['ratio_square_vs_today']:.2f}, "
              f"{100 * row['square_vs_decode_floor']:.0f}% of the decode-only floor")
    jpeg = result["formats"]["JPEG"]
    result["jpeg_meets_target"] = jpeg["modes"]["square"]["images_per_cpu_s"] >= TARGET
    result["jpeg_meets_3x"] = jpeg["ratio_square_vs_today"] >= 3.0
    tiny = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32,
                                            "patch_size": 16},
            "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    result["agreement"] = [agreement("ovpipe-bench-tiny-clip", tiny, sets, 64)]
    if not args.quick:
        result["agreement"].append(agreement("ViT-H-14-quickgelu", None, sets, 8))
    for a in result["agreement"]:
        print(f"agreement {a['arch']}: " + ", ".join(
            f"{f} cos min {a[f]['cosine_min']:.4f} centered {a[f]['centered_cosine_min']:.4f} "
            f"(different images {a[f]['different_images_cosine_mean']:.3f} / "
            f"{a[f]['different_images_centered_cosine_mean']:.3f})"
            for f in sets))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "decode_quick" if args.quick else "decode"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / f"{stem}.png")
    print(f"wrote {RESULTS / stem}.json/.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
