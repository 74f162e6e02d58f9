"""Step `filter`: caption validity rules, image–text similarity, exact and near-duplicate removal.

Three phases so the work stays parallel where it can:
  rules  (per shard)  pick each image's caption: the first language of `filter.prefer` whose caption
                      passes every rule (curation/caption_rules.py); reject with the preferred
                      caption's reason otherwise; then the CLIP score (stored image embedding · text
                      tower embedding of the caption) against `filter.min_clip_score`; survivors get
                      an exact key and a MinHash signature.
  dedup  (global)     clusters over the compact signatures; each cluster keeps its smallest id.
  write  (per shard)  curated webdataset shards: original image bytes, chosen caption, metadata.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from ovpipe import manifest, sharded, storage
from ovpipe.curation import dedup, quality
from ovpipe.curation.caption_rules import check_caption
from ovpipe.curation.clip_pretrain import embed_settings
from ovpipe.curation.embed import embeddings_of
from ovpipe.data import source, tables
from ovpipe.data.shards import ShardReport, iter_samples, sniff_ext
from ovpipe.data.tarwriter import TarWriter
from ovpipe.models.clip import encode_texts, load_clip
from ovpipe.sharded import Context, ShardResult, shard_name

STEP = "filter"
NUM_PERM = 64


def choose_caption(row: dict, prefer: list[str], cfg) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """((caption, lang), None) for the first valid caption in preference order, else (None, (reason, detail))."""
    langs = [lang for lang in prefer if f"caption_{lang}" in row]
    langs += sorted(k[len("caption_"):] for k in row if k.startswith("caption_") and k[len("caption_"):] not in langs)
    first_problem = None
    for lang in langs:
        text = row.get(f"caption_{lang}")
        if text is None:
            continue
        problem = check_caption(text, lang, cfg)
        if problem is None:
            return (text.strip(), lang), None
        first_problem = first_problem or (problem[0], f"{lang}: {problem[1]}")
    return None, first_problem or ("caption_empty", "no caption in any language")


def rules_shard(ctx: Context, index: int) -> ShardResult:
    cfg = ctx.recipe.filter
    caps = tables.read_parquet(ctx.uri("caption", f"{shard_name(index)}.parquet")).to_pylist()
    rejects, chosen = [], []
    for row in caps:
        pick, problem = choose_caption(row, cfg.prefer, cfg)
        if problem:
            rejects.append((row["id"], *problem))
        else:
            chosen.append((row["id"], *pick))
    scores = np.full(len(chosen), np.nan, np.float32)
    scored = [i for i, c in enumerate(chosen) if c[2] in cfg.clip_score_languages]
    if scored and cfg.min_clip_score is not None:
        emb_table = tables.read_parquet(ctx.uri("embed", f"{shard_name(index)}.parquet"), ["id", "embedding"])
        position = {k: i for i, k in enumerate(emb_table.column("id").to_pylist())}
        image_emb = embeddings_of(emb_table)[[position[chosen[i][0]] for i in scored]]
        model, _, tokenizer, device = load_clip(embed_settings(ctx), ctx.recipe.seed)
        text_emb = encode_texts(model, tokenizer, [chosen[i][1] for i in scored], device)
        image_emb /= np.maximum(np.linalg.norm(image_emb, axis=1, keepdims=True), 1e-12)
        scores[scored] = (image_emb * text_emb).sum(axis=1)
        # the same images against other images' captions: how well the score separates (finalize's AUC)
        shuffled = (image_emb * text_emb[quality.derangement(len(scored), ctx.recipe.seed + index)]).sum(axis=1)
        tables.write_parquet(ctx.uri(STEP, "_scores", f"{shard_name(index)}.parquet"), pa.table(
            {"matched": pa.array(scores[scored], pa.float32()), "shuffled": pa.array(shuffled, pa.float32())}))
        low = scores < cfg.min_clip_score  # NaN (unscored) compares False
        rejects += [(c[0], "low_clip_score", f"{s:.3f} < {cfg.min_clip_score}")
                    for c, s, bad in zip(chosen, scores, low) if bad]
        chosen, scores = [c for c, bad in zip(chosen, low) if not bad], scores[~low]
    texts = [c[1] for c in chosen]
    sig = dedup.minhash_many(texts, num_perm=NUM_PERM, seed=ctx.recipe.seed) if texts else \
        np.zeros((0, NUM_PERM), np.uint64)
    table = pa.table({
        "id": pa.array([c[0] for c in chosen], pa.string()), "caption": pa.array(texts, pa.string()),
        "lang": pa.array([c[2] for c in chosen], pa.string()), "clip_score": pa.array(scores, pa.float32()),
        "exact": pa.array([dedup.exact_key(t) for t in texts], pa.int64()),
        "minhash": pa.FixedSizeListArray.from_arrays(pa.array(sig.reshape(-1), pa.uint64()), NUM_PERM),
    })
    out_uri = ctx.uri(STEP, "_candidates", f"{shard_name(index)}.parquet")
    digest = tables.write_parquet(out_uri, table)
    return ShardResult(len(caps), table.num_rows, [{"uri": out_uri, "sha256": digest, "samples": table.num_rows}],
                       rejects)


def dedup_all(ctx: Context) -> str:
    """Global duplicate clusters over every shard's candidates → duplicates.parquet (id, kept_id, detail)."""
    out_uri = ctx.uri(STEP, "duplicates.parquet")
    sharded.once(ctx, STEP, "dedup", lambda: _dedup(ctx, out_uri))
    return out_uri


def _dedup(ctx: Context, out_uri: str) -> None:
    n = len(source.input_shards(ctx))
    sharded.committed(ctx, STEP, "rules", n)
    parts = [tables.read_parquet(ctx.uri(STEP, "_candidates", f"{shard_name(i)}.parquet"),
                                 ["id", "exact", "minhash"]) for i in range(n)]
    t = pa.concat_tables(parts)
    ids = t.column("id").to_pylist()
    mode = ctx.recipe.filter.dedup
    dups = {}
    if mode != "none" and ids:
        col = t.column("minhash").combine_chunks()
        sig = col.flatten().to_numpy().reshape(-1, NUM_PERM) if mode == "near" else None
        dups = dedup.duplicates(ids, t.column("exact").to_numpy(), sig, ctx.recipe.filter.near_dup_threshold)
    keys = sorted(dups)
    tables.write_parquet(out_uri, pa.table({"id": pa.array(keys, pa.string()),
                                            "kept_id": pa.array([dups[k][0] for k in keys], pa.string()),
                                            "detail": pa.array([dups[k][1] for k in keys], pa.string())}))


def write_shard(ctx: Context, index: int) -> ShardResult:
    data = ctx.recipe.data
    cand = tables.read_parquet(ctx.uri(STEP, "_candidates", f"{shard_name(index)}.parquet"),
                               ["id", "caption", "lang", "clip_score"]).to_pylist()
    dup_table = tables.read_parquet(dedup_all(ctx))
    dups = dict(zip(dup_table.column("id").to_pylist(), dup_table.column("detail").to_pylist()))
    rejects = [(c["id"], "duplicate", dups[c["id"]]) for c in cand if c["id"] in dups]
    keep = {c["id"]: c for c in cand if c["id"] not in dups}
    uri = source.input_shards(ctx)[index]
    report = ShardReport(uri)
    out_uri = ctx.uri(STEP, f"{shard_name(index)}.tar")
    written = set()
    samples = iter_samples(uri, report, data.format, data.id_column, data.image_column, data.caption_column)
    with TarWriter(out_uri) as writer:
        for s in tqdm(samples, desc=f"filter {shard_name(index)}", unit="img", mininterval=5, leave=False):
            row = keep.get(s.key)
            if row is None or s.error or s.key in written:  # s.error: a later duplicate of a kept key
                continue
            meta = {"id": s.key, "lang": row["lang"], "clip_score": row["clip_score"], "source": s.meta}
            ext = s.image_ext or sniff_ext(s.image)
            writer.write(s.key, {ext: s.image, "txt": row["caption"].encode("utf-8"),
                                 "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")})
            written.add(s.key)
        digest = writer.close()
    rejects += [(k, "missing_from_source", f"not found in {uri}") for k in sorted(set(keep) - written)]
    return ShardResult(len(cand), len(written), [{"uri": out_uri, "sha256": digest, "samples": len(written)}],
                       rejects, {"shard_errors": report.errors})


def process(ctx: Context, shards: str = "all", workers: int = 1, phase: str = "all") -> None:
    """phase: rules | dedup | write | all (the CLI runs all three)."""
    indices = sharded.parse_shards(shards, len(source.input_shards(ctx)))
    if phase in ("rules", "all"):
        sharded.run_shards(ctx, STEP, "rules", indices, rules_shard, workers)
    if phase in ("dedup", "all"):
        dedup_all(ctx)
    if phase in ("write", "all"):
        sharded.run_shards(ctx, STEP, "write", indices, write_shard, workers)


def score_separation(ctx: Context) -> dict | None:
    """The CLIP score of each scored image with its caption vs with another image's caption (ROC AUC and
    quantiles), and the share of each that `filter.min_clip_score` lets through; None when nothing was scored."""
    if ctx.recipe.filter.min_clip_score is None:
        return None
    parts = [ctx.uri(STEP, "_scores", f"{shard_name(i)}.parquet") for i in range(len(source.input_shards(ctx)))]
    parts = [tables.read_parquet(u) for u in parts if storage.exists(u)]
    if not parts:
        return None
    t = pa.concat_tables(parts)
    matched, shuffled = (t.column(c).to_numpy().astype(np.float64) for c in ("matched", "shuffled"))
    out = quality.caption_separation(matched, shuffled)
    threshold = ctx.recipe.filter.min_clip_score
    out["matched_passing"] = float((matched >= threshold).mean()) if len(matched) else float("nan")
    out["shuffled_passing"] = float((shuffled >= threshold).mean()) if len(shuffled) else float("nan")
    return out


def finalize(ctx: Context) -> dict:
    return sharded.finalize(ctx, STEP, ["rules", "write"], len(source.input_shards(ctx)),
                            [manifest.ref(ctx.uri("caption", "manifest.json")),
                             manifest.ref(ctx.uri("embed", "manifest.json"))], t_start=time.perf_counter(),
                            metrics=score_separation(ctx))
