"""Step `caption`: EN/ZH captions for the images the balance step selected, per input shard.

Backends (curation/captioners.py): `passthrough` keeps the source caption, placed under the language
it is written in (script ratio); `hf` and `vllm` generate one caption per recipe language. Output per
shard: `id` and one `caption_<lang>` column per language (null where there is none).
"""
from __future__ import annotations

import functools
import time

import pyarrow as pa
from tqdm import tqdm

from ovpipe import manifest, sharded, storage
from ovpipe.curation.caption_rules import script_ratio
from ovpipe.curation.captioners import check_backend, make_captioner
from ovpipe.data import source, tables
from ovpipe.data.images import decode_image
from ovpipe.data.shards import ShardReport, iter_samples
from ovpipe.sharded import Context, ShardResult, shard_name

STEP = "caption"


def detect_lang(text: str) -> str:
    return "zh" if script_ratio(text, "zh") > script_ratio(text, "en") else "en"


@functools.lru_cache(maxsize=8)
def selected_by_shard(store: str, run_id: str) -> dict[int, frozenset]:
    t = tables.read_parquet(storage.join(store, run_id, "balance", "selected.parquet"), ["id", "shard"])
    out: dict[int, set] = {}
    for sid, shard in zip(t.column("id").to_pylist(), t.column("shard").to_pylist()):
        out.setdefault(shard, set()).add(sid)
    return {k: frozenset(v) for k, v in out.items()}


_CAPTIONERS: dict[str, object] = {}


def _captioner(ctx: Context):
    """One captioner per process and recipe: loading a VLM once per shard would dominate."""
    key = ctx.recipe.digest()
    if key not in _CAPTIONERS:
        cfg = ctx.recipe.caption
        local = storage.localize(cfg.model) if cfg.model and storage.is_remote(cfg.model) else None
        _CAPTIONERS[key] = make_captioner(cfg, local, ctx.recipe.seed)
    return _CAPTIONERS[key]


def caption_shard(ctx: Context, index: int) -> ShardResult:
    cfg, data = ctx.recipe.caption, ctx.recipe.data
    wanted = selected_by_shard(ctx.store, ctx.run_id).get(index, frozenset())
    captioner = _captioner(ctx)
    uri = source.input_shards(ctx)[index]
    report = ShardReport(uri)
    langs = list(cfg.languages)
    rows: dict[str, list] = {"id": [], **{f"caption_{lang}": [] for lang in langs}}
    rejects, seen, batch = [], set(), []

    def flush():
        if not batch:
            return
        keys, images, texts = zip(*batch)
        out = {lang: [None] * len(batch) for lang in langs}
        if cfg.backend == "passthrough":
            for i, text in enumerate(texts):
                lang = detect_lang(text)
                out[lang if lang in out else langs[0]][i] = text
        else:
            for lang in langs:
                out[lang] = captioner.caption(list(images), list(texts), lang)
        rows["id"].extend(keys)
        for lang in langs:
            rows[f"caption_{lang}"].extend(out[lang])
        batch.clear()

    samples = iter_samples(uri, report, data.format, data.id_column, data.image_column, data.caption_column)
    for s in tqdm(samples, desc=f"caption {shard_name(index)}", unit="img", mininterval=5, leave=False):
        if s.key not in wanted or s.key in seen or s.error:  # s.error: a later duplicate of a kept key
            continue
        seen.add(s.key)
        text = s.caption_text()
        if text is None and cfg.backend == "passthrough":
            rejects.append((s.key, "caption_not_utf8", "source caption is not valid UTF-8"))
            continue
        image = None
        if cfg.backend != "passthrough":
            image, err = decode_image(s.image)
            if err:
                rejects.append((s.key, *err))
                continue
        batch.append((s.key, image, text))
        if len(batch) >= cfg.batch_size:
            flush()
    flush()
    for key in sorted(wanted - seen):  # selected but gone from the input since embed
        rejects.append((key, "missing_from_source", f"not found in {uri}"))
    table = pa.table({k: pa.array(v, pa.string()) for k, v in rows.items()})
    out_uri = ctx.uri(STEP, f"{shard_name(index)}.parquet")
    digest = tables.write_parquet(out_uri, table)
    return ShardResult(len(wanted), table.num_rows, [{"uri": out_uri, "sha256": digest, "samples": table.num_rows}],
                       rejects, {"shard_errors": report.errors})


def process(ctx: Context, shards: str = "all", workers: int = 1) -> None:
    check_backend(ctx.recipe.caption)
    indices = sharded.parse_shards(shards, len(source.input_shards(ctx)))
    sharded.run_shards(ctx, STEP, "caption", indices, caption_shard, workers)


def finalize(ctx: Context) -> dict:
    return sharded.finalize(ctx, STEP, ["caption"], len(source.input_shards(ctx)),
                            [manifest.ref(ctx.uri("balance", "manifest.json"))], t_start=time.perf_counter())
