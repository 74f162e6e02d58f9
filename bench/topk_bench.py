"""Benchmark of top-K concept assignment: exact (flat) vs IVF at several nprobe values.

Synthetic data (seeded): a two-level Gaussian mixture on the unit sphere. Coarse centres
(topics) carry fine centres (concepts' neighbourhoods); concepts and images are drawn
around the same fine centres. Uniform random vectors have no structure for IVF to use
(recall would be pessimistic); a single tight level makes IVF trivially exact. Two levels
give neighbours that straddle IVF cells, so recall grows with nprobe as on real
embeddings.

    python bench/topk_bench.py            # 100k images x 50k concepts x d=256, K=5
    python bench/topk_bench.py --quick    # seconds-long smoke run

Writes bench/results/topk.json (topk_quick.json with --quick) and, with matplotlib,
a .png beside it (recall@K vs images/s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import faiss  # noqa: E402

from ovpipe.curation.topk import (  # noqa: E402
    build_index,
    default_nlist,
    recall_at_k,
    search,
    set_nprobe,
)


def clustered_embeddings(
    n: int, centers: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """n unit vectors around random centres; noise is the norm of the perturbation."""
    d = centers.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    step = 1 << 16  # chunked to keep float64 temporaries small
    for s in range(0, n, step):
        m = min(step, n - s)
        x = centers[rng.integers(0, len(centers), m)]
        x = x + rng.standard_normal((m, d)) * (noise / np.sqrt(d))
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_data(args) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(args.seed)
    d = args.dim
    coarse = _unit(rng.standard_normal((max(2, args.centers // 50), d)))
    pick = rng.integers(0, len(coarse), args.centers)
    fine = _unit(
        coarse[pick]
        + rng.standard_normal((args.centers, d)) * (args.spread / np.sqrt(d))
    )
    concepts = clustered_embeddings(args.concepts, fine, args.noise, rng)
    images = clustered_embeddings(args.images, fine, args.noise, rng)
    return concepts, images


def timed_search(index, queries, k, batch_size, repeats):
    """Best-of-``repeats`` wall time (this box may be shared) plus the CPU seconds of that
    run; CPU time per image is the steadier number when other jobs compete for cores."""
    # Warm-up on a small slice so one-off costs (thread pool start, page faults of the
    # index) do not count against the timed runs.
    search(index, queries[: min(len(queries), 1024)], k, batch_size)
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        ids, _ = search(index, queries, k, batch_size)
        best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
    return ids, best


def _row(kind, nprobe, n, timing, recall, build_s):
    wall, cpu = timing
    return {
        "kind": kind,
        "nprobe": nprobe,
        "images_per_s": n / wall,
        "search_s": wall,
        "search_cpu_s": cpu,
        "images_per_cpu_s": n / cpu if cpu > 0 else None,
        "recall_at_k": recall,
        "build_s": build_s,
    }


def run(args) -> dict:
    threads = args.threads or len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    concepts, images = make_data(args)
    print(
        f"data: {args.images} images x {args.concepts} concepts x d={args.dim} "
        f"({args.centers} clusters, spread {args.spread}, noise {args.noise}) in {time.perf_counter() - t0:.1f}s; "
        f"K={args.k}, {threads} threads, faiss {faiss.__version__}"
    )

    rows = []
    t0 = time.perf_counter()
    flat = build_index(concepts, kind="flat", use_gpu=args.use_gpu, threads=threads)
    flat_build = time.perf_counter() - t0
    exact_ids, timing = timed_search(
        flat, images, args.k, args.batch_size, args.repeats
    )
    rows.append(_row("flat", None, args.images, timing, 1.0, flat_build))

    nlist = args.nlist or default_nlist(args.concepts)
    t0 = time.perf_counter()
    ivf = build_index(
        concepts,
        kind="ivf",
        nlist=nlist,
        use_gpu=args.use_gpu,
        seed=args.seed,
        threads=threads,
    )
    ivf_build = time.perf_counter() - t0
    for nprobe in args.nprobe:
        if nprobe > nlist:
            continue
        set_nprobe(ivf, nprobe)
        ids, timing = timed_search(ivf, images, args.k, args.batch_size, args.repeats)
        recall = recall_at_k(ids, exact_ids)
        rows.append(_row("ivf", nprobe, args.images, timing, recall, ivf_build))

    flat_rate = rows[0]["images_per_s"]
    for r in rows:
        r["speedup_vs_flat"] = r["images_per_s"] / flat_rate
    return {
        "benchmark": "topk",
        "config": {
            "images": args.images,
            "concepts": args.concepts,
            "dim": args.dim,
            "k": args.k,
            "nlist": nlist,
            "centers": args.centers,
            "noise": args.noise,
            "spread": args.spread,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "repeats": args.repeats,
            "quick": args.quick,
        },
        "environment": {
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "faiss_threads": threads,
            "gpus": faiss.get_num_gpus(),
            "use_gpu": args.use_gpu,
            # Load average at the end: a value above faiss_threads means contention.
            "loadavg_1m": os.getloadavg()[0],
        },
        "results": rows,
    }


def print_table(report: dict) -> None:
    cfg = report["config"]
    print(f"\nK={cfg['k']}, nlist={cfg['nlist']}")
    print(
        f"{'index':<12}{'images/s':>11}{'img/cpu-s':>11}{'speedup':>9}"
        f"{'recall@K':>10}{'build s':>9}"
    )
    for r in report["results"]:
        name = "flat" if r["kind"] == "flat" else f"ivf np={r['nprobe']}"
        print(
            f"{name:<12}{r['images_per_s']:>11,.0f}{r['images_per_cpu_s'] or 0:>11,.0f}"
            f"{r['speedup_vs_flat']:>8.1f}x"
            f"{r['recall_at_k']:>10.4f}{r['build_s']:>9.2f}"
        )


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cfg = report["config"]
    rows = report["results"]
    ivf = [r for r in rows if r["kind"] == "ivf"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        [r["images_per_s"] for r in ivf],
        [r["recall_at_k"] for r in ivf],
        "o-",
        label=f"IVF (nlist={cfg['nlist']})",
    )
    for r in ivf:
        ax.annotate(
            f"nprobe={r['nprobe']}",
            (r["images_per_s"], r["recall_at_k"]),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=8,
        )
    ax.plot([rows[0]["images_per_s"]], [1.0], "r*", markersize=12, label="exact (flat)")
    ax.set_xscale("log")
    ax.set_xlabel("images / s")
    ax.set_ylabel(f"recall@{cfg['k']} vs exact")
    ax.set_title(
        f"top-{cfg['k']} concepts: {cfg['images']:,} images x {cfg['concepts']:,} "
        f"concepts, d={cfg['dim']}, {report['environment']['faiss_threads']} CPU threads",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--concepts", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--nlist", type=int, default=None, help="default ~4*sqrt(concepts)")
    p.add_argument(
        "--nprobe",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[1, 4, 16, 64],
        help="comma-separated nprobe values",
    )
    p.add_argument(
        "--centers",
        type=int,
        default=None,
        help="fine clusters (default concepts/10); coarse = centers/50",
    )
    p.add_argument(
        "--spread",
        type=float,
        default=1.0,
        help="norm of a fine centre's offset from its coarse centre",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=1.5,
        help="norm of a vector's offset from its fine centre",
    )
    p.add_argument("--batch-size", type=int, default=65536)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2, help="timed runs; best is kept")
    p.add_argument("--use-gpu", default="auto", choices=["auto", "yes", "no"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default bench/results/topk.json (topk_quick.json with --quick)",
    )
    p.add_argument("--png", type=Path, default=None, help="default: --out with .png")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.concepts, args.dim = 5_000, 5_000, 64
    results = ROOT / "bench" / "results"
    # A smoke run must not overwrite the recorded full-size numbers.
    args.out = args.out or results / ("topk_quick.json" if args.quick else "topk.json")
    args.centers = args.centers or max(8, args.concepts // 10)
    args.png = args.png or args.out.with_suffix(".png")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    if plot(report, args.png):
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
