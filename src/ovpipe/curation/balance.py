"""Step `balance`: global concept counts → per-image weights → a concept-balanced subset.

Reads every concepts shard (compact columns: uid and top-K ids), counts concepts, and draws
`balance.target` images: `inverse_frequency` (Efraimidis–Spirakis on the aggregate of 1/count over an
image's K concepts), `metaclip` (MetaCLIP's per-concept rule, t solved for the target when not given)
or `random` (the baseline). Every draw comes from a counter-based RNG keyed on the sample id, so the
selection does not depend on shard order or worker count. Images are not rewritten here: the output is
`selected.parquet` (id, uid, shard, weight), plus `concept_counts.parquet`, `flatness.json` and a PNG.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from ovpipe import manifest, sharded, storage
from ovpipe.curation import balance_compare, balancing
from ovpipe.curation.concepts import load_concepts, topk_of
from ovpipe.data import source, tables
from ovpipe.data.truth import synthetic_truths, truth_ids
from ovpipe.sharded import Context, shard_name

STEP = "balance"


def _load(ctx: Context):
    ids, uids, shards, topks = [], [], [], []
    for i in range(len(source.input_shards(ctx))):
        t = tables.read_parquet(ctx.uri("concepts", f"{shard_name(i)}.parquet"), ["id", "uid", "topk_ids"])
        ids.extend(t.column("id").to_pylist())
        uids.append(t.column("uid").to_numpy())
        topks.append(topk_of(t))
        shards.append(np.full(t.num_rows, i, np.int32))
    k = ctx.recipe.concepts.k
    cat = lambda xs, dt, shape=(0,): np.concatenate(xs) if xs else np.zeros(shape, dt)  # noqa: E731
    return ids, cat(uids, np.uint64), cat(shards, np.int32), cat(topks, np.int32, (0, k))


def select(method: str, topk: np.ndarray, counts: np.ndarray, uid: np.ndarray, target: int, seed: int,
           aggregate: str = "sum", t: float | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(mask, weight per image, info) for one balancing method."""
    if method == "random":
        return balancing.random_sample(uid, target, seed), np.ones(len(uid)), {}
    if method == "metaclip":
        t = t if t is not None else balancing.metaclip_t_for_budget(topk, counts, min(target, len(uid)))
        probs = balancing.metaclip_probs(counts, t)
        keep_prob = 1 - np.prod(np.where(topk >= 0, 1 - probs[np.maximum(topk, 0)], 1.0), axis=1)
        return balancing.metaclip_select(topk, counts, uid, t, seed), keep_prob, {"metaclip_t": float(t)}
    w = balancing.inverse_frequency_weights(topk, counts, aggregate)
    return balancing.weighted_sample(uid, w, target, seed), w, {"aggregate": aggregate}


def plot(curves: dict[str, np.ndarray], path: str, title: str) -> None:
    """Sorted concept counts: before, and after each method at the same budget (the chosen one bold)."""
    from ovpipe.plots import figure

    with figure(path, (7, 4)) as (_, ax):
        for label, counts in curves.items():
            c = np.sort(counts[counts > 0])[::-1]
            ax.plot(np.arange(1, len(c) + 1), c, lw=2.5 if label.endswith("(chosen)") else 1.2,
                    label=f"{label}: {int(counts.sum())} assignments, {len(c)} concepts")
        ax.set(xscale="log", yscale="log", xlabel="concept rank", ylabel="images", title=title)
        ax.legend()


def _method_metrics(methods: dict, chosen: str) -> dict:
    """Flat numbers of the comparison (flatness.json keeps it whole): per method and view, coverage, tail
    coverage and max/median; and how much flatter than random the chosen method is."""
    out = {}
    for m in balance_compare.METHODS:
        for view, s in methods[m].items():
            if view == "selected":
                continue
            for key in ("coverage", "tail_coverage", "max_over_median"):
                out[f"{m}_{view}_{key}"] = s[key]
    for view in methods[chosen]:
        if view != "selected":
            out[f"max_over_median_random_over_chosen_{view}"] = (methods["random"][view]["max_over_median"]
                                                                  / methods[chosen][view]["max_over_median"])
    return out


def run(ctx: Context) -> dict:
    t0 = time.perf_counter()
    cfg, seed = ctx.recipe.balance, ctx.recipe.seed
    vocab = load_concepts(ctx.recipe.concepts.vocab)
    all_ids, uid, shard, topk = _load(ctx)
    copies = sharded.first_copies(all_ids)  # the first shard's copy of a repeated key stays in the draw
    unique = np.array([c is None for c in copies], bool)
    duplicates = [(k, "duplicate_key", f"also in input shard {int(shard[c])}")
                  for k, c in zip(all_ids, copies) if c is not None]
    ids = [k for k, u in zip(all_ids, unique) if u]
    uid, shard, topk = uid[unique], shard[unique], topk[unique]
    counts = balancing.concept_counts(topk, len(vocab))
    mask, weight, info = select(cfg.method, topk, counts, uid, cfg.target, seed, cfg.aggregate, cfg.metaclip_t)
    after = balancing.concept_counts(topk[mask], len(vocab))
    truths = synthetic_truths(ctx)
    methods, curves = balance_compare.compare(
        lambda m: mask if m == cfg.method else select(m, topk, counts, uid, cfg.target, seed, cfg.aggregate,
                                                      cfg.metaclip_t)[0],
        topk, counts, uid, len(vocab), truth_ids(truths, ids, vocab) if truths is not None else None)
    order = np.argsort(np.array(ids, dtype=object)[mask], kind="stable") if mask.any() else np.zeros(0, int)
    sel = np.flatnonzero(mask)[order]
    outputs = []
    selected = pa.table({"id": pa.array([ids[i] for i in sel], pa.string()), "uid": pa.array(uid[sel]),
                         "shard": pa.array(shard[sel]), "weight": pa.array(weight[sel], pa.float64())})
    sel_uri = ctx.uri(STEP, "selected.parquet")
    outputs.append({"uri": sel_uri, "sha256": tables.write_parquet(sel_uri, selected), "samples": len(sel)})
    counts_uri = ctx.uri(STEP, "concept_counts.parquet")
    ctab = pa.table({"concept_id": pa.array(np.arange(len(vocab)), pa.int32()), "concept": vocab,
                     "count_before": counts, "count_after": after})
    outputs.append({"uri": counts_uri, "sha256": tables.write_parquet(counts_uri, ctab), "samples": 0})
    stats = {"before": balancing.flatness(counts), "after": balancing.flatness(after),
             "method": cfg.method, "target": cfg.target, "selected": int(len(sel)), **info, "methods": methods}
    outputs.append({"uri": ctx.uri(STEP, "flatness.json"), "samples": 0,
                    "sha256": storage.sha256_bytes(storage.write_json(ctx.uri(STEP, "flatness.json"), stats))})
    png_uri = ctx.uri(STEP, "balance.png")
    with storage.atomic_output(png_uri, ".png") as path:
        plot({"before": counts, **{f"{m} (chosen)" if m == cfg.method else m: c for m, c in curves.items()}}, path,
             f"assigned concept frequency, {len(sel)} of {len(ids)} images")
    rejected_ids = [ids[i] for i in np.flatnonzero(~mask)]
    rejects = sharded.rejects_table([(i, "not_sampled", f"{cfg.method} draw") for i in rejected_ids] + duplicates, -1)
    tables.write_parquet(ctx.uri(STEP, "rejects.parquet"), rejects)
    counts_obj = manifest.counts(len(all_ids), len(sel), {"not_sampled": len(rejected_ids),
                                                          "duplicate_key": len(duplicates)})
    metrics = {"selected": len(sel), "max_over_median_before": stats["before"]["max_over_median"],
               "max_over_median_after": stats["after"]["max_over_median"],
               "normalized_entropy_before": stats["before"]["normalized_entropy"],
               "normalized_entropy_after": stats["after"]["normalized_entropy"],
               "gini_before": stats["before"]["gini"], "gini_after": stats["after"]["gini"],
               **_method_metrics(methods, cfg.method)}
    body = manifest.build(STEP, ctx.run_id, ctx.recipe.to_dict(), [manifest.ref(ctx.uri("concepts", "manifest.json"))],
                          outputs, counts_obj, time.perf_counter() - t0, metrics=metrics,
                          plots=[png_uri])
    manifest.write(ctx.uri(STEP, "manifest.json"), body)
    return body
