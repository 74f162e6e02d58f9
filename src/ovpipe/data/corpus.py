"""The `synth` step: the deterministic synthetic corpus as webdataset tar shards."""
from __future__ import annotations

import time

from ovpipe import sharded
from ovpipe.data.shards import TarWriter
from ovpipe.data.synth import load_vocab, synth_samples
from ovpipe.sharded import Context, ShardResult, shard_name

STEP = "synth"


def synth_shard(ctx: Context, index: int) -> ShardResult:
    cfg = ctx.recipe.synth
    uri = ctx.uri(STEP, f"{shard_name(index)}.tar")
    writer = TarWriter(uri)
    for sample in synth_samples(ctx.recipe.seed, index, cfg.samples_per_shard, load_vocab(cfg.vocab),
                                bad_fraction=cfg.bad_fraction, min_size=cfg.min_size, max_size=cfg.max_size,
                                zh_fraction=cfg.zh_fraction):
        key = sample.pop("__key__")
        writer.write(key, sample)
    n = writer.count
    digest = writer.close()
    return ShardResult(n_in=n, n_out=n, outputs=[{"uri": uri, "sha256": digest, "samples": n}])


def process(ctx: Context, shards: str = "all", workers: int = 1) -> None:
    indices = sharded.parse_shards(shards, ctx.recipe.synth.shards)
    sharded.run_shards(ctx, STEP, "write", indices, synth_shard, workers)


def finalize(ctx: Context) -> dict:
    return sharded.finalize(ctx, STEP, ["write"], ctx.recipe.synth.shards, inputs=[], t_start=time.perf_counter())
