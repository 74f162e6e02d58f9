"""Step `lengths`: every sample's exact token length, from image headers and the tokenizer.

Length = chat template + text tokens + image tokens, computed by `sequence.lengths`, the same code
the training loader's `sequence.encode` runs, so the packer and the loader cannot disagree. An image's
size comes from its header, its tokens from the vision encoder's resize rule; each image is also
decoded once with the trainer's decoder, so one that would fail training is rejected here.
Output per shard (compact columns): `id`, `length`, `n_images`, `image_tokens`, and the
sample's position in its input shard (`offset`, `size`) so the packer can fetch it directly.
"""
from __future__ import annotations

import functools
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from ovpipe import sharded, storage
from ovpipe.data import tables
from ovpipe.data.images import ImageError, open_rgb
from ovpipe.data.shards import ShardReport, iter_samples
from ovpipe.packing import sequence
from ovpipe.packing.datasets import SampleError, dataset_inputs, dataset_shards, sample_turns, step_name
from ovpipe.packing.images import HeaderError, image_size, image_tokens
from ovpipe.packing.tokenizer import load_tokenizer, train_tokenizer
from ovpipe.sharded import Context, ShardResult, shard_name

_TOKENIZERS: dict[str, object] = {}


def synthetic_texts(recipe, n: int = 3000):
    """Captions and conversations of the synthetic generators: what a tokenizer trained here learns from."""
    import json

    from ovpipe.data.synth import load_vocab, synth_samples
    from ovpipe.data.synth_stages import sft_samples

    vocab = load_vocab(recipe.synth.vocab)
    for s in synth_samples(recipe.seed, 99_000, n, vocab, bad_fraction=0):
        meta = json.loads(s["json"])
        yield meta["caption_en"]
        yield meta["caption_zh"]
    for s in sft_samples(recipe.seed, 99_000, n, vocab, bad_fraction=0):
        for turn in json.loads(s["json"])["conversation"]:  # role names too: the chat template spells them
            yield f"{turn['role']}\n" + turn["content"].replace("<image>", "")


def tokenizer_uri(ctx: Context) -> str:
    """The recipe's tokenizer, or one trained on the synthetic text and stored in {run}/tokenizer."""
    if ctx.recipe.packing.tokenizer:
        return ctx.recipe.packing.tokenizer

    def train():
        with tempfile.TemporaryDirectory() as tmp:
            train_tokenizer(synthetic_texts(ctx.recipe), tmp, ctx.recipe.packing.tokenizer_vocab)
            for name in sorted(os.listdir(tmp)):
                storage.put_file(os.path.join(tmp, name), ctx.uri("tokenizer", name))

    sharded.once(ctx, "tokenizer", "train", train)
    return ctx.uri("tokenizer")


def get_tokenizer(ctx: Context):
    uri = tokenizer_uri(ctx)
    if uri not in _TOKENIZERS:
        _TOKENIZERS[uri] = load_tokenizer(storage.localize(uri))
    return _TOKENIZERS[uri]


def _check_decodes(blob: bytes, w: int, h: int) -> None:
    """The image decodes in full with the trainer's own decoder, to the size its header gave (the token
    count comes from the header): a body broken behind a valid header is rejected here, not in training."""
    try:
        im = open_rgb(blob)
    except ImageError as exc:
        raise SampleError(exc.reason, exc.detail) from exc
    if im.size != (w, h):
        raise SampleError("header_mismatch", f"header says {w}x{h}, the image decodes to {im.size[0]}x{im.size[1]}")


def lengths_shard(ctx: Context, index: int, dataset: str) -> ShardResult:
    cfg = ctx.recipe.packing
    tok = get_tokenizer(ctx)
    uri = dataset_shards(ctx, dataset)[index]
    report = ShardReport(uri)
    rejects, kept, n_in = [], [], 0
    data = ctx.recipe.data
    for s in tqdm(iter_samples(uri, report, data.format, data.id_column, data.image_column, data.caption_column),
                  desc=f"lengths {shard_name(index)}", unit="sample", mininterval=5, leave=False):
        n_in += 1
        try:
            turns, images = sample_turns(s, dataset, cfg.caption_prompt)
            tokens = []
            for blob, _ in images:
                try:
                    w, h = image_size(blob)
                except HeaderError as exc:
                    raise SampleError("corrupt_header", str(exc)) from exc
                _check_decodes(blob, w, h)
                try:
                    tokens.append(image_tokens(w, h, cfg))
                except ValueError as exc:
                    raise SampleError("bad_aspect_ratio", str(exc)) from exc
        except SampleError as exc:
            rejects.append((s.key, exc.reason, exc.detail))
            continue
        kept.append((s.key, turns, tokens, s.offset, s.size))
    lens = sequence.lengths([(k[1], k[2]) for k in kept], tok) if kept else np.zeros(0, np.int64)
    table = pa.table({
        "id": pa.array([k[0] for k in kept], pa.string()),
        "length": pa.array(lens, pa.int32()),
        "n_images": pa.array([len(k[2]) for k in kept], pa.int16()),
        "image_tokens": pa.array([sum(k[2]) for k in kept], pa.int32()),
        "offset": pa.array([k[3] for k in kept], pa.int64()),
        "size": pa.array([k[4] for k in kept], pa.int64()),
    })
    out_uri = ctx.uri(step_name("lengths", dataset), f"{shard_name(index)}.parquet")
    digest = tables.write_parquet(out_uri, table)
    return ShardResult(n_in, len(kept), [{"uri": out_uri, "sha256": digest, "samples": len(kept)}], rejects,
                       {"shard_errors": report.errors})


def process(ctx: Context, shards: str = "all", workers: int = 1, dataset: str = "mid") -> None:
    tokenizer_uri(ctx)  # trained once, before the shards fan out
    indices = sharded.parse_shards(shards, len(dataset_shards(ctx, dataset)))
    sharded.run_shards(ctx, step_name("lengths", dataset), "lengths", indices,
                       functools.partial(lengths_shard, dataset=dataset), workers)


def finalize(ctx: Context, dataset: str = "mid") -> dict:
    tok = tokenizer_uri(ctx)
    tok_ref = {"uri": tok, "sha256": storage.sha256_uri(storage.join(tok, "tokenizer.json"))}
    return sharded.finalize(ctx, step_name("lengths", dataset), ["lengths"], len(dataset_shards(ctx, dataset)),
                            dataset_inputs(ctx, dataset) + [tok_ref], t_start=time.perf_counter())
