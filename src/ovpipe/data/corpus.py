"""The `synth` step: deterministic synthetic corpora as webdataset tar shards.

dataset mid (step `synth`): raw image-caption scenes, the curation pipeline's input.
dataset stage1 (`synth-stage1`): short alignment captions; sft (`synth-sft`): conversations.
"""
from __future__ import annotations

import functools
import time

from ovpipe import sharded
from ovpipe.data.synth import ZIPF_S, load_vocab, synth_samples
from ovpipe.data.tarwriter import TarWriter
from ovpipe.sharded import Context, ShardResult, shard_name


def _step(dataset: str) -> str:
    return "synth" if dataset == "mid" else f"synth-{dataset}"


def samples(ctx: Context, index: int, dataset: str):
    vocab = load_vocab(ctx.recipe.synth.vocab)
    if dataset == "mid":
        cfg = ctx.recipe.synth
        return synth_samples(ctx.recipe.seed, index, cfg.samples_per_shard, vocab, bad_fraction=cfg.bad_fraction,
                             min_size=cfg.min_size, max_size=cfg.max_size, zh_fraction=cfg.zh_fraction)
    from ovpipe.data import synth_stages

    cfg = getattr(ctx.recipe.packing, dataset)
    if dataset == "stage1":
        return synth_stages.align_samples(ctx.recipe.seed, index, cfg.synth_samples_per_shard, vocab,
                                          size=cfg.image_size, zh_fraction=cfg.zh_fraction,
                                          bad_fraction=cfg.bad_fraction)
    return synth_stages.sft_samples(ctx.recipe.seed, index, cfg.synth_samples_per_shard, vocab, size=cfg.image_size,
                                    zh_fraction=cfg.zh_fraction, bad_fraction=cfg.bad_fraction,
                                    question_types=tuple(cfg.questions), max_turns=cfg.max_turns,
                                    question_weights=cfg.question_weights, caption_fraction=cfg.caption_fraction,
                                    options_fraction=cfg.options_fraction)


def n_shards(ctx: Context, dataset: str) -> int:
    return ctx.recipe.synth.shards if dataset == "mid" else getattr(ctx.recipe.packing, dataset).synth_shards


def synth_shard(ctx: Context, index: int, dataset: str = "mid") -> ShardResult:
    uri = ctx.uri(_step(dataset), f"{shard_name(index)}.tar")
    writer = TarWriter(uri)
    for sample in samples(ctx, index, dataset):
        key = sample.pop("__key__")
        writer.write(key, sample)
    n = writer.count
    digest = writer.close()
    return ShardResult(n_in=n, n_out=n, outputs=[{"uri": uri, "sha256": digest, "samples": n}])


def process(ctx: Context, shards: str = "all", workers: int = 1, dataset: str = "mid") -> None:
    indices = sharded.parse_shards(shards, n_shards(ctx, dataset))
    fn = functools.partial(synth_shard, dataset=dataset)
    sharded.run_shards(ctx, _step(dataset), "write", indices, fn, workers)


def finalize(ctx: Context, dataset: str = "mid") -> dict:
    """The manifest; for the curated corpus also its ground truth (truth.parquet: per image, its concepts;
    concept_truth.parquet: per concept, images with it as primary and realizing it) and the long tail's
    shape in the metrics."""
    t0 = time.perf_counter()
    extra, metrics = [], None
    if dataset == "mid":
        from ovpipe.data import tables
        from ovpipe.data.truth import scan_truths, truth_table, write_truths

        truths = scan_truths(ctx, [ctx.uri("synth", f"{shard_name(i)}.tar") for i in range(n_shards(ctx, dataset))])
        extra.append(write_truths(ctx, truths))
        table, metrics = truth_table(truths, load_vocab(ctx.recipe.synth.vocab))
        metrics["zipf_s"] = ZIPF_S
        uri = ctx.uri(_step(dataset), "concept_truth.parquet")
        extra.append({"uri": uri, "sha256": tables.write_parquet(uri, table), "samples": 0})
    return sharded.finalize(ctx, _step(dataset), ["write"], n_shards(ctx, dataset), inputs=[],
                            t_start=t0, metrics=metrics, extra_outputs=extra)
