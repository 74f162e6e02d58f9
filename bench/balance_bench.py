"""Concept balancing benchmark: how flat each method leaves the concept distribution, and speed.

Corpus: synthetic Zipf top-K concepts (balancing.zipf_topk: Zipf popularity, topic-local
co-occurrence, some images with fewer than K concepts). At one budget (a fraction of the images)
it compares uniform random sampling, inverse-frequency Efraimidis–Spirakis sampling with each
aggregate (sum, mean, max) and MetaCLIP's rule with t solved for the same expected budget.
Timing: weighted_sample on 10M and 100M weights, each size in a fresh subprocess so that
ru_maxrss is that size's peak; the baseline is the naive implementation (full lexsort of all keys,
run up to --baseline-max weights), whose mask must be identical.

    python bench/balance_bench.py            # 1M images, 10k concepts; timings at 10M and 100M
    python bench/balance_bench.py --quick    # 100k images, 2k concepts; timings at 1M and 10M
Writes bench/results/balance.json and bench/results/balance.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ovpipe.curation import balancing as B

RESULTS = Path(__file__).resolve().parent / "results"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def time_one(size: int, seed: int, baseline: bool) -> dict:
    """Runs in a child process: time weighted_sample (and the naive baseline) on `size` weights."""
    rng = np.random.default_rng(seed)
    uid = rng.integers(0, 2**64 - 1, size, dtype=np.uint64, endpoint=True)
    w = rng.pareto(1.0, size)  # heavy-tailed like inverse frequencies
    w[rng.random(size) < 0.01] = 0.0
    n = size // 10
    rss_inputs = _rss_mb()
    t0 = time.perf_counter()
    mask = B.weighted_sample(uid, w, n, seed)
    out = {
        "size": size,
        "n": n,
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": _rss_mb(),
        "inputs_rss_mb": rss_inputs,
        "selected": int(mask.sum()),
    }
    if baseline:
        t0 = time.perf_counter()
        with np.errstate(divide="ignore"):
            key = np.log(B.uniform01(uid, seed)) / w
        key[~(w > 0)] = -np.inf
        order = np.lexsort((uid, -key))  # key descending, then uid ascending
        ref = np.zeros(size, dtype=bool)
        ref[order[:n]] = True
        out["baseline_full_sort_seconds"] = time.perf_counter() - t0
        out["baseline_equal"] = bool(np.array_equal(ref, mask))
        out["peak_rss_mb_with_baseline"] = _rss_mb()
    return out


def compare(args) -> dict:
    t0 = time.perf_counter()
    topk = B.zipf_topk(
        args.images,
        args.concepts,
        args.k,
        args.seed,
        a=args.zipf_a,
        topic_size=args.topic_size,
        drop=args.drop,
    )
    uid = B.uid64([f"shard-{i // 10000:05d}/{i:09d}" for i in range(args.images)])
    gen_s = time.perf_counter() - t0
    counts = B.concept_counts(topk, args.concepts)
    n = int(args.budget * args.images)
    rows = {"corpus": {"kept": args.images, "counts": counts, "seconds": gen_s}}

    def add(name, fn):
        t = time.perf_counter()
        mask = fn()
        rows[name] = {
            "kept": int(mask.sum()),
            "seconds": time.perf_counter() - t,
            "counts": B.concept_counts(topk[mask], args.concepts),
        }
        return rows[name]

    add("random", lambda: B.random_sample(uid, n, args.seed))
    for agg in B.AGGREGATES:
        add(
            f"invfreq_{agg}",
            lambda agg=agg: B.weighted_sample(
                uid, B.inverse_frequency_weights(topk, counts, agg), n, args.seed
            ),
        )
    t = time.perf_counter()
    mc_t = B.metaclip_t_for_budget(topk, counts, n)
    t_solve = time.perf_counter() - t
    mc = add("metaclip", lambda: B.metaclip_select(topk, counts, uid, mc_t, args.seed))
    mc.update(t=mc_t, t_solve_seconds=t_solve, budget_error=(mc["kept"] - n) / n)
    for r in rows.values():
        r["flatness"] = B.flatness(r["counts"])
    return {"n": n, "rows": rows, "mean_concepts_per_image": float((topk >= 0).sum(1).mean())}


def plot(res: dict, path: Path, flat_level: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    before = np.sort(rows["corpus"]["counts"])[::-1]
    methods = [m for m in rows if m != "corpus"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), sharey=True)
    for ax, m in zip(axes.flat, ["all"] + methods):
        ax.plot(np.arange(1, before.size + 1), before, color="0.6", label="corpus (before)")
        for mm in methods if m == "all" else [m]:
            after = np.sort(rows[mm]["counts"])[::-1]
            after = after[after > 0]  # a curve that ends early = concepts lost
            ax.plot(np.arange(1, after.size + 1), after, label=mm)
        ax.axhline(flat_level, color="k", ls=":", lw=1, label="flat at budget")
        f = rows.get(m, {}).get("flatness")
        title = (
            "all methods"
            if m == "all"
            else (f"{m}: H/Hmax={f['normalized_entropy']:.3f}, gini={f['gini']:.3f}")
        )
        ax.set(xscale="log", yscale="log", title=title, xlabel="concept rank")
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("images with the concept (sorted)")
    fig.suptitle(f"Concept frequency before vs after balancing (budget {res['n']:,} images)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller corpus and timing sizes")
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--concepts", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.1, help="fraction of images to keep")
    ap.add_argument("--zipf-a", type=float, default=1.0)
    ap.add_argument("--topic-size", type=int, default=50)
    ap.add_argument("--drop", type=float, default=0.2, help="P(slot after the first is -1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing-sizes", type=int, nargs="*", default=None)
    ap.add_argument(
        "--baseline-max",
        type=int,
        default=20_000_000,
        help="run the naive full-sort baseline only up to this many weights",
    )
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--time-one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.time_one is not None:  # child process of the timing section
        print(json.dumps(time_one(args.time_one, args.seed, args.time_one <= args.baseline_max)))
        return
    if args.quick:
        args.images, args.concepts = min(args.images, 100_000), min(args.concepts, 2_000)
    sizes = args.timing_sizes or (
        [1_000_000, 10_000_000] if args.quick else [10_000_000, 100_000_000]
    )

    res = compare(args)
    head = (
        f"{'method':<15}{'kept':>9}{'covered':>9}{'max':>9}{'median':>8}{'max/med':>9}"
        f"{'H/Hmax':>8}{'gini':>7}{'sec':>7}"
    )
    print(
        f"corpus: {args.images:,} images, {args.concepts:,} concepts, K={args.k} "
        f"(mean {res['mean_concepts_per_image']:.2f}), budget n={res['n']:,}\n{head}"
    )
    for name, r in res["rows"].items():
        f = r["flatness"]
        print(
            f"{name:<15}{r['kept']:>9,}{f['covered']:>9,}{f['max']:>9,}{f['median']:>8.1f}"
            f"{f['max_over_median']:>9.1f}{f['normalized_entropy']:>8.3f}{f['gini']:>7.3f}"
            f"{r['seconds']:>7.2f}"
        )
    mc = res["rows"]["metaclip"]
    print(
        f"metaclip: t={mc['t']:.2f} (solved in {mc['t_solve_seconds']:.2f}s), "
        f"kept {mc['kept']:,} vs budget {res['n']:,} ({100 * mc['budget_error']:+.2f}%)"
    )

    timings = []
    for size in sizes:
        cmd = [sys.executable, __file__, "--time-one", str(size), "--seed", str(args.seed)]
        cmd += ["--baseline-max", str(args.baseline_max)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
        timings.append(json.loads(out.stdout.strip().splitlines()[-1]))
        tm = timings[-1]
        extra = (
            f", naive full sort {tm['baseline_full_sort_seconds']:.2f}s "
            f"(same mask: {tm['baseline_equal']})"
            if "baseline_equal" in tm
            else ""
        )
        print(
            f"weighted_sample {size:>12,} weights -> {tm['n']:,}: {tm['seconds']:.2f}s, "
            f"peak RSS {tm['peak_rss_mb']:.0f} MB (inputs {tm['inputs_rss_mb']:.0f} MB){extra}"
        )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    flat_level = res["n"] * res["mean_concepts_per_image"] / args.concepts
    plot(res, args.out_dir / "balance.png", flat_level)
    for r in res["rows"].values():
        del r["counts"]
    cfg = {k: v for k, v in vars(args).items() if k not in ("time_one", "out_dir")}
    doc = {
        "config": cfg,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        **res,
        "flat_level": flat_level,
        "timings": timings,
    }
    (args.out_dir / "balance.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out_dir / 'balance.json'} and {args.out_dir / 'balance.png'}")


if __name__ == "__main__":
    main()
