"""The synthetic corpus's ground truth: which vocabulary concepts each image realizes (its json meta
`concepts`, primary first; data/synth.py). Curation's model-driven steps are measured against it
(concept assignment, balancing); a given input corpus has none (None)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ovpipe.data import source
from ovpipe.data.shards import ShardReport, iter_samples
from ovpipe.data.synth import load_vocab


def synthetic_truths(ctx, shards: list[str] | None = None) -> dict[str, list[str]] | None:
    """Sample id -> the concept phrases its scene realizes (primary first), from `shards` (default: the
    run's input shards); None for a given input."""
    if ctx.recipe.data.input:
        return None
    vocab = load_vocab(ctx.recipe.synth.vocab)
    out: dict[str, list[str]] = {}
    for uri in shards if shards is not None else source.input_shards(ctx):
        for s in iter_samples(uri, ShardReport(uri)):
            meta = s.meta if isinstance(s.meta, dict) else {}
            out[s.key] = [vocab[j] for j in meta.get("concepts", [])]
    return out


def truth_ids(truths: dict[str, list[str]], ids: list[str], vocab: list[str]) -> list[list[int]]:
    """Per id (in order), its true concepts as indices of `vocab` (phrases outside it left out)."""
    where = {c: i for i, c in enumerate(vocab)}
    return [[where[p] for p in truths.get(k, []) if p in where] for k in ids]


def truth_table(truths: dict[str, list[str]], vocab: list[str]) -> tuple[pa.Table, dict]:
    """Per concept: images whose primary concept it is, and images realizing it; and the long tail's
    shape (concepts present, max/median of the realized counts over present concepts, head share)."""
    where = {c: i for i, c in enumerate(vocab)}
    primary, realized = np.zeros(len(vocab), np.int64), np.zeros(len(vocab), np.int64)
    for phrases in truths.values():
        idx = [where[p] for p in phrases if p in where]
        if idx:
            primary[idx[0]] += 1
            realized[sorted(set(idx))] += 1
    table = pa.table({"concept_id": pa.array(np.arange(len(vocab)), pa.int32()), "concept": vocab,
                      "primary": primary, "realized": realized})
    present = realized[realized > 0]
    top = np.sort(primary)[::-1]
    stats = {"images": len(truths), "concepts_present": int(len(present)),
             "realized_max_over_median": float(present.max() / np.median(present)) if len(present) else float("nan"),
             "primary_top10_share": float(top[:10].sum() / max(top.sum(), 1)),
             "primary_concepts": int((primary > 0).sum())}
    return table, stats
