"""Step `pack`: global best-fit-decreasing over every sample of a dataset, then packed shards.

  plan   (global)     all lengths at once (ordered by sample id, so ties break by id) →
                      `pack_lengths` with the recipe's capacity and per-bin limits → `plan/` (one
                      row per sub-sample, in sequence order, a part per output shard),
                      `packing.json`, `fill.png`.
                      A sample longer than capacity is rejected as `too_long`, or with
                      `too_long: truncate` cut to capacity when its images all fit before the cut.
  write  (per shard)  `sequences_per_shard` bins per tar: the sub-samples are fetched from their
                      input shards by position (byte ranges, never a whole shard), images kept as
                      stored; then the megatron-energon metadata (`.nv-meta/`) for the whole dataset.
"""
from __future__ import annotations

import functools
import itertools
import math
import time

import numpy as np
import pyarrow as pa

from ovpipe import manifest, sharded, storage
from ovpipe.data import tables
from ovpipe.data.shards import fetch_ordered
from ovpipe.packing import pack_lengths, pack_multidim, pack_stats
from ovpipe.packing.datasets import dataset_shards, sample_turns, step_name
from ovpipe.packing.images import image_size, image_tokens
from ovpipe.packing.packed_shards import SubSample, write_energon_metadata, write_packed_shard
from ovpipe.sharded import Context, ShardResult, shard_name


def _load_lengths(ctx: Context, dataset: str) -> pa.Table:
    parts = []
    for i in range(len(dataset_shards(ctx, dataset))):
        t = tables.read_parquet(ctx.uri(step_name("lengths", dataset), f"{shard_name(i)}.parquet"))
        parts.append(t.append_column("shard", pa.array(np.full(t.num_rows, i, np.int32))))
    table = pa.concat_tables(parts) if parts else None
    return table.sort_by([("id", "ascending"), ("shard", "ascending"), ("offset", "ascending")]) \
        if table is not None else table


def plan(ctx: Context, dataset: str) -> dict:
    """Pack every sample at once; returns the plan summary (also in plan.json). Idempotent."""
    step = step_name("pack", dataset)
    sharded.once(ctx, step, "plan", lambda: _plan(ctx, dataset))
    return storage.read_json(ctx.uri(step, "plan.json"))


def _plan(ctx: Context, dataset: str) -> None:
    cfg, step = ctx.recipe.packing, step_name("pack", dataset)
    t = _load_lengths(ctx, dataset)
    # lengths saw each shard alone: a key in two of them is packed once (its copy in the first shard)
    ids, shards = t.column("id").to_pylist(), t.column("shard").to_numpy()
    copies = sharded.first_copies(ids)
    duplicates = [(k, "duplicate_key", f"input shard {int(shards[i])}: also in input shard {int(shards[c])}")
                  for i, (k, c) in enumerate(zip(ids, copies)) if c is not None]
    t = t.filter(pa.array([c is None for c in copies], pa.bool_())) if duplicates else t
    lengths = t.column("length").to_numpy().astype(np.int64)
    n_img = t.column("n_images").to_numpy().astype(np.int64)
    img_tok = t.column("image_tokens").to_numpy().astype(np.int64)
    over = lengths > cfg.capacity
    truncated = np.zeros(len(lengths), bool)
    if cfg.too_long == "truncate":
        # Cutting inside an image's tokens would break it: only text after the images may go.
        truncated = over & (img_tok + 2 * n_img + 16 <= cfg.capacity)
        lengths = np.where(truncated, cfg.capacity, lengths)
    limits = dict(max_samples=cfg.max_samples_per_bin, max_images=cfg.max_images_per_bin, images=n_img,
                  max_image_tokens=cfg.max_image_tokens_per_bin, image_tokens=img_tok)
    # image limits are dimensions of their own (multidim.py); without them best fit on tokens alone
    packer = pack_multidim if cfg.max_images_per_bin is not None or cfg.max_image_tokens_per_bin is not None \
        else pack_lengths
    bins = packer(lengths, cfg.capacity, **limits)
    stats = pack_stats(lengths, bins, cfg.capacity, **limits)
    stats["truncated"] = int(truncated.sum())
    placed = np.flatnonzero(bins >= 0)
    order = placed[np.lexsort((-lengths[placed], bins[placed]))]  # by bin, longest sub-sample first
    plan_table = t.take(pa.array(order)).select(["id", "shard", "offset", "size", "n_images"]).append_column(
        "bin", pa.array(bins[order], pa.int64())).append_column(
        "length", pa.array(lengths[order], pa.int32())).append_column(
        "truncated", pa.array(truncated[order]))
    # one plan part per output shard, so a write task reads only its own rows
    shard_of = plan_table.column("bin").to_numpy() // cfg.sequences_per_shard
    starts = np.searchsorted(shard_of, np.arange(shard_of[-1] + 2)) if len(shard_of) else [0]
    for j in range(len(starts) - 1):
        part = plan_table.slice(starts[j], starts[j + 1] - starts[j])
        tables.write_parquet(ctx.uri(step, "plan", f"{shard_name(j)}.parquet"), part)
    ids = t.column("id").to_pylist()
    too_long = [(ids[i], "too_long", f"{int(lengths[i])} tokens > capacity {cfg.capacity}")
                if lengths[i] > cfg.capacity else
                (ids[i], "over_bin_limit", f"{int(n_img[i])} images / {int(img_tok[i])} image tokens exceed a "
                 "per-sequence limit on their own")
                for i in np.flatnonzero(bins < 0)]
    n_bins = int(bins.max()) + 1 if len(bins) and bins.max() >= 0 else 0
    storage.write_json(ctx.uri(step, "packing.json"), stats)
    with storage.atomic_output(ctx.uri(step, "fill.png"), ".png") as path:
        _plot_fill(lengths[placed], bins[placed], cfg.capacity, path, stats)
    storage.write_json(ctx.uri(step, "plan.json"), {
        "bins": n_bins, "shards": math.ceil(n_bins / cfg.sequences_per_shard), "rejects": too_long + duplicates,
        "stats": stats})


def _plot_fill(lengths, bins, capacity, path, stats) -> None:
    from ovpipe.plots import figure

    fill = np.bincount(bins, weights=lengths) / capacity if len(bins) else np.zeros(0)
    with figure(path, (7, 4)) as (_, ax):
        ax.hist(fill, bins=50, range=(0, 1))
        ax.set(xlabel="fill of a packed sequence", ylabel="sequences",
               title=f"{stats['bins']} sequences, efficiency {stats['efficiency']:.4%}, "
                     f"lower bound {stats['lower_bound']}")


def write_shard(ctx: Context, index: int, dataset: str) -> ShardResult:
    cfg, data, step = ctx.recipe.packing, ctx.recipe.data, step_name("pack", dataset)
    rows = tables.read_parquet(ctx.uri(step, "plan", f"{shard_name(index)}.parquet")).to_pylist()
    rows.sort(key=lambda r: r["bin"])  # stable: a sequence keeps its sub-samples in plan order
    inputs = dataset_shards(ctx, dataset)
    # Read ahead while writing (an S3 shard is then downloaded and uploaded at the same time); local
    # images are views of the mapped input: hashed and written, never copied in between.
    samples = fetch_ordered([(inputs[r["shard"]], r["offset"], r["size"]) for r in rows], data.format,
                            id_column=data.id_column, image_column=data.image_column,
                            caption_column=data.caption_column, views=True)

    def sequences():
        for bin_id, group in itertools.groupby(zip(rows, samples), key=lambda t: t[0]["bin"]):
            subs = []
            for r, sample in group:
                turns, images = sample_turns(sample, dataset, cfg.caption_prompt)
                tokens = [image_tokens(*image_size(blob), cfg) for blob, _ in images]
                subs.append(SubSample(id=r["id"], length=r["length"], turns=turns, images=[b for b, _ in images],
                                      image_exts=[e for _, e in images], image_tokens=tokens,
                                      truncated=bool(r["truncated"])))
            yield bin_id, subs

    out_uri = ctx.uri(step, f"{shard_name(index)}.tar")
    info = write_packed_shard(out_uri, sequences())
    n = len(rows)
    return ShardResult(n, n, [{"uri": out_uri, "sha256": info["sha256"], "samples": n,
                               "sequences": info["samples"]}], [], {"shard_info": info})


def process(ctx: Context, shards: str = "all", workers: int = 1, dataset: str = "mid", phase: str = "all") -> None:
    """phase: plan | write | all."""
    summary = plan(ctx, dataset)
    if phase in ("write", "all"):
        indices = sharded.parse_shards(shards, summary["shards"])
        sharded.run_shards(ctx, step_name("pack", dataset), "write", indices,
                           functools.partial(write_shard, dataset=dataset), workers)


def finalize(ctx: Context, dataset: str = "mid") -> dict:
    step = step_name("pack", dataset)
    summary = plan(ctx, dataset)
    markers = sharded.committed(ctx, step, "write", summary["shards"])
    write_energon_metadata(ctx.uri(step), [m["stats"]["shard_info"] for m in markers])
    stats = summary["stats"]
    metrics = {k: stats[k] for k in ("bins", "lower_bound", "efficiency", "compression", "truncated")}
    return sharded.finalize(ctx, step, ["write"], summary["shards"],
                            [manifest.ref(ctx.uri(step_name("lengths", dataset), "manifest.json"))],
                            t_start=time.perf_counter(), metrics=metrics,
                            extra_rejects=[tuple(r) for r in summary["rejects"]],
                            plots=[ctx.uri(step, "fill.png")], packing=stats)
