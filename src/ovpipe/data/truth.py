"""The synthetic corpus's ground truth: which vocabulary concepts each image realizes (its json meta
`concepts`, primary first; data/synth.py). Curation's model-driven steps are measured against it
(concept assignment, balancing); a given input corpus has none (None)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ovpipe import storage
from ovpipe.data import source, tables
from ovpipe.data.shards import ShardReport, iter_samples
from ovpipe.data.synth import load_vocab

TRUTH = ("synth", "truth.parquet")  # per image: id, its concept phrases (synth's finalize writes it)


def scan_truths(ctx, shards: list[str]) -> dict[str, list[str]]:
    """Sample id -> the concept phrases its scene realizes (primary first), read from the json meta of
    `shards` (every member is read: synth's finalize does it once and stores the result)."""
    vocab = load_vocab(ctx.recipe.synth.vocab)
    out: dict[str, list[str]] = {}
    for uri in shards:
        for s in iter_samples(uri, ShardReport(uri)):
            meta = s.meta if isinstance(s.meta, dict) else {}
            out[s.key] = [vocab[j] for j in meta.get("concepts", [])]
    return out


def write_truths(ctx, truths: dict[str, list[str]]) -> dict:
    """The per-image truth as a manifest output entry."""
    uri = ctx.uri(*TRUTH)
    keys = sorted(truths)
    table = pa.table({"id": pa.array(keys, pa.string()),
                      "concepts": pa.array([truths[k] for k in keys], pa.list_(pa.string()))})
    return {"uri": uri, "sha256": tables.write_parquet(uri, table), "samples": 0}


def synthetic_truths(ctx) -> dict[str, list[str]] | None:
    """Sample id -> its concept phrases (primary first) for the synthetic corpus; None for a given input.
    Read from synth's truth.parquet (a run made before it existed: from the shards)."""
    if ctx.recipe.data.input:
        return None
    uri = ctx.uri(*TRUTH)
    if not storage.exists(uri):
        return scan_truths(ctx, source.input_shards(ctx))
    t = tables.read_parquet(uri)
    return dict(zip(t.column("id").to_pylist(), t.column("concepts").to_pylist()))


def phrase_ids(phrases_per_image: list[list[str]], vocab: list[str]) -> list[list[int]]:
    """Each image's concept phrases as indices of `vocab` (phrases outside it left out)."""
    where = {c: i for i, c in enumerate(vocab)}
    return [[where[p] for p in phrases if p in where] for phrases in phrases_per_image]


def truth_ids(truths: dict[str, list[str]], ids: list[str], vocab: list[str]) -> list[list[int]]:
    """Per id (in order), its true concepts as indices of `vocab` (phrases outside it left out)."""
    return phrase_ids([truths.get(k, []) for k in ids], vocab)


def counts_of(ids_per_image: list[list[int]], n: int) -> np.ndarray:
    """Images per concept id (an image counts once per concept)."""
    out = np.zeros(n, np.int64)
    for ids in ids_per_image:
        out[sorted(set(ids))] += 1
    return out


def truth_table(truths: dict[str, list[str]], vocab: list[str]) -> tuple[pa.Table, dict]:
    """Per concept: images whose primary concept it is, and images realizing it; and the long tail's
    shape (concepts present, max/median of the realized counts over present concepts, head share)."""
    ids = phrase_ids(list(truths.values()), vocab)
    primary, realized = counts_of([i[:1] for i in ids], len(vocab)), counts_of(ids, len(vocab))
    table = pa.table({"concept_id": pa.array(np.arange(len(vocab)), pa.int32()), "concept": vocab,
                      "primary": primary, "realized": realized})
    present = realized[realized > 0]
    top = np.sort(primary)[::-1]
    stats = {"images": len(truths), "concepts_present": int(len(present)),
             "realized_max_over_median": float(present.max() / np.median(present)) if len(present) else float("nan"),
             "primary_top10_share": float(top[:10].sum() / max(top.sum(), 1)),
             "primary_concepts": int((primary > 0).sum())}
    return table, stats
