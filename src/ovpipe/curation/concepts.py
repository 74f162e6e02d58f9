"""Step `concepts`: top-K nearest concepts of the vocabulary for every image embedding.

The vocabulary (one concept per line) is embedded once with the same model's text tower through the
recipe's prompt template and indexed with faiss (exact inner product, or IVF with nprobe); then every
embed shard is searched. Output per shard: `id`, `uid` (64-bit hash of the id, the balancing RNG's
counter), `topk_ids` int32[K], `topk_sims` float32[K].
"""
from __future__ import annotations

import functools
import time

import numpy as np
import pyarrow as pa

from ovpipe import manifest, sharded, storage
from ovpipe.curation import quality, topk
from ovpipe.curation.balancing import uid64
from ovpipe.curation.clip_pretrain import embed_settings
from ovpipe.curation.embed import embeddings_of
from ovpipe.data import source, tables
from ovpipe.data.synth import load_vocab
from ovpipe.data.truth import synthetic_truths, truth_ids
from ovpipe.models.clip import encode_texts, load_clip
from ovpipe.sharded import Context, ShardResult, shard_name

STEP = "concepts"


def load_concepts(uri: str) -> list[str]:
    """The vocabulary from a path or URI; a clear error when empty or duplicated."""
    local = storage.localize(uri)
    vocab = load_vocab(local)
    if not vocab:
        raise ValueError(f"concepts.vocab {uri}: no concepts (expected one per line)")
    return vocab


def build_vocab_index(ctx: Context) -> str:
    """Embed the vocabulary and store the faiss index (skipped when already committed)."""
    sharded.once(ctx, STEP, "index", lambda: _build_vocab_index(ctx))
    return ctx.uri(STEP, "index.faiss")


def _build_vocab_index(ctx: Context) -> None:
    index_uri = ctx.uri(STEP, "index.faiss")
    cfg = ctx.recipe.concepts
    vocab = load_concepts(cfg.vocab)
    model, _, tokenizer, device = load_clip(embed_settings(ctx), ctx.recipe.seed)
    emb = encode_texts(model, tokenizer, [cfg.prompt_template.format(c) for c in vocab], device,
                       cfg.text_batch_size)
    tables.write_parquet(ctx.uri(STEP, "vocab.parquet"), pa.table({
        "concept_id": pa.array(np.arange(len(vocab)), pa.int32()), "concept": vocab}))
    index = topk.build_index(emb.astype(np.float32), cfg.index, cfg.nlist, cfg.nprobe, cfg.use_gpu,
                             seed=ctx.recipe.seed)
    storage.write_bytes(index_uri, topk.serialize_index(index))


@functools.lru_cache(maxsize=2)
def _index(index_uri: str, use_gpu: str, nprobe: int):
    index = topk.deserialize_index(storage.read_bytes(index_uri), use_gpu=use_gpu)
    topk.set_nprobe(index, nprobe)  # no-op for exact indices
    return index


def concepts_shard(ctx: Context, index: int) -> ShardResult:
    cfg = ctx.recipe.concepts
    emb_uri = ctx.uri("embed", f"{shard_name(index)}.parquet")
    table = tables.read_parquet(emb_uri, ["id", "embedding"])
    ids = table.column("id").to_pylist()
    emb = embeddings_of(table)
    finite = np.isfinite(emb).all(axis=1) & (np.linalg.norm(emb, axis=1) > 0) if len(ids) else np.ones(0, bool)
    rejects = [(ids[i], "bad_embedding", "embedding is zero or not finite") for i in np.flatnonzero(~finite)]
    keep = np.flatnonzero(finite)
    if len(keep):
        searcher = _index(build_vocab_index(ctx), cfg.use_gpu, cfg.nprobe)
        q = emb[keep]
        q /= np.linalg.norm(q, axis=1, keepdims=True)  # float16 storage loses a little norm
        top_ids, top_sims = topk.search(searcher, q, cfg.k)
    else:
        top_ids, top_sims = np.zeros((0, cfg.k), np.int32), np.zeros((0, cfg.k), np.float32)
    kept_ids = [ids[i] for i in keep]
    out = pa.table({
        "id": pa.array(kept_ids, pa.string()),
        "uid": pa.array(uid64(kept_ids), pa.uint64()),
        "topk_ids": pa.FixedSizeListArray.from_arrays(pa.array(top_ids.reshape(-1), pa.int32()), cfg.k),
        "topk_sims": pa.FixedSizeListArray.from_arrays(pa.array(top_sims.reshape(-1), pa.float32()), cfg.k),
    })
    out_uri = ctx.uri(STEP, f"{shard_name(index)}.parquet")
    digest = tables.write_parquet(out_uri, out)
    return ShardResult(len(ids), len(kept_ids), [{"uri": out_uri, "sha256": digest, "samples": len(kept_ids)}],
                       rejects)


def topk_of(table: pa.Table) -> np.ndarray:
    col = table.column("topk_ids").combine_chunks()
    return col.flatten().to_numpy().reshape(-1, col.type.list_size)


def process(ctx: Context, shards: str = "all", workers: int = 1) -> None:
    build_vocab_index(ctx)
    indices = sharded.parse_shards(shards, len(source.input_shards(ctx)))
    sharded.run_shards(ctx, STEP, "assign", indices, concepts_shard, workers)


def assignment_quality(ctx: Context) -> dict | None:
    """Concept assignment against the synthetic corpus's ground truth (None for a given input): precision
    and recall@K of the assigned top-K, and of K concepts drawn at random (an embedding that knows nothing)."""
    truths = synthetic_truths(ctx)
    if truths is None:
        return None
    vocab = load_concepts(ctx.recipe.concepts.vocab)
    parts = [tables.read_parquet(ctx.uri(STEP, f"{shard_name(i)}.parquet"), ["id", "topk_ids"])
             for i in range(len(source.input_shards(ctx)))]
    ids = [k for t in parts for k in t.column("id").to_pylist()]
    if not ids:
        return None
    top = np.concatenate([topk_of(t) for t in parts])
    true_ids = truth_ids(truths, ids, vocab)
    ours = quality.topk_precision_recall(top, true_ids)
    chance = quality.topk_precision_recall(quality.random_topk(len(ids), len(vocab), top.shape[1], ctx.recipe.seed),
                                           true_ids)
    return {**ours, "random_precision_at_k": chance["precision_at_k"], "random_recall_at_k": chance["recall_at_k"]}


def finalize(ctx: Context) -> dict:
    cfg = ctx.recipe.concepts
    vocab_ref = {"uri": cfg.vocab, "sha256": storage.sha256_uri(cfg.vocab)}
    index_ref = {"uri": ctx.uri(STEP, "index.faiss"), "sha256": storage.sha256_uri(ctx.uri(STEP, "index.faiss"))}
    return sharded.finalize(ctx, STEP, ["assign"], len(source.input_shards(ctx)),
                            [manifest.ref(ctx.uri("embed", "manifest.json")), vocab_ref],
                            t_start=time.perf_counter(), extra_outputs=[{**index_ref, "samples": 0}],
                            metrics=assignment_quality(ctx))
