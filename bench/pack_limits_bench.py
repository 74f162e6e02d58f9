"""Packing under per-sequence limits: bfd (`pack_lengths`, limits as checks) vs `pack_multidim` (limits
as dimensions; what the pack step uses when an image limit is set), both against the
multi-dimensional lower bound, and the time of each vs the one-dimensional packer (`pack_lengths`
without limits) and vs bfd with the same limits, on the same lengths (pack_bench's mix and
LIMIT_ROWS), same run.

    python bench/pack_limits_bench.py                    # 100k, 1M and 10M
    python bench/pack_limits_bench.py --sizes 100000

Writes bench/results/pack_limits.json and pack_limits.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from pack_bench import CAPACITY, LIMIT_ROWS, multimodal_lengths, timed  # noqa: E402

from ovpipe.packing import multidim_lower_bound, pack_lengths, pack_multidim  # noqa: E402


def run(n: int, seed: int, repeats: int) -> dict:
    lengths, images, image_tokens = multimodal_lengths(n, seed, with_images=True)
    pack_lengths(lengths[:1000], CAPACITY)  # compile / load the cached kernels
    one_d, t1, _ = timed(lambda: pack_lengths(lengths, CAPACITY), repeats)
    row = {"n": n, "one_d": {"bins": int(one_d.max()) + 1, "seconds": t1}}
    for name, limits in LIMIT_ROWS.items():
        kw = dict(limits, images=images, image_tokens=image_tokens)
        small = dict(kw, images=images[:1000], image_tokens=image_tokens[:1000])
        bound = multidim_lower_bound(lengths, CAPACITY, **kw)
        r = {"limits": limits, "bound": bound}
        for packer, fn in (("bfd", pack_lengths), ("multidim", pack_multidim)):
            fn(lengths[:1000], CAPACITY, **small)
            bins, wall, cpu = timed(lambda fn=fn, kw=kw: fn(lengths, CAPACITY, **kw), repeats)
            nb = int(bins.max()) + 1
            r[packer] = {"bins": nb, "excess_over_bound": nb / bound["bound"] - 1, "seconds": wall,
                         "cpu_seconds": cpu, "time_vs_one_d": wall / t1,
                         "time_vs_bfd_same_limits": wall / r["bfd"]["seconds"] if "bfd" in r else 1.0}
        row[name] = r
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels, x = [], 0
    for row in rows:
        for name in LIMIT_ROWS:
            for k, packer in enumerate(("bfd", "multidim")):
                r = row[name][packer]
                ax1.bar(x + 0.4 * k, 100 * r["excess_over_bound"], 0.4, color=f"C{k}", label=packer if x == 0 else None)
                ax2.bar(x + 0.4 * k, r["time_vs_one_d"], 0.4, color=f"C{k}", label=packer if x == 0 else None)
            labels.append(f"{name}\n{row['n']:,}")
            x += 1
    for ax, title in ((ax1, "bins over the multi-dimensional bound (%)"), (ax2, "time / 1-D pack_lengths")):
        ax.set_xticks(np.arange(x) + 0.2, labels, fontsize=7)
        ax.set_title(title)
        ax.legend(fontsize=8)
    ax2.axhline(3, color="gray", ls="--", lw=1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",") if s):
        rows.append(run(n, args.seed, args.repeats if n <= 1_000_000 else 1))
        row = rows[-1]
        print(f"\n{n:,} samples: 1-D pack_lengths {row['one_d']['bins']:,} bins in {row['one_d']['seconds']:.3f}s")
        for name in LIMIT_ROWS:
            r = row[name]
            print(f"  {name}: bound {r['bound']['bound']:,} ({r['bound']})")
            for packer in ("bfd", "multidim"):
                p = r[packer]
                print(f"    {packer:<9}{p['bins']:>10,} bins  +{100 * p['excess_over_bound']:.2f}%  "
                      f"{p['seconds']:.3f}s  {p['time_vs_one_d']:.1f}x the 1-D time, "
                      f"{p['time_vs_bfd_same_limits']:.2f}x bfd with the same limits")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out_dir / "pack_limits.png")
    doc = {"config": {"capacity": CAPACITY, "seed": args.seed, "repeats": args.repeats, "limit_rows": LIMIT_ROWS},
           "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}, "results": rows}
    (args.out_dir / "pack_limits.json").write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {args.out_dir / 'pack_limits.json'} and pack_limits.png")


if __name__ == "__main__":
    main()
