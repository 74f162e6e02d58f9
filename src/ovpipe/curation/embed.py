"""Step `embed`: open_clip image embeddings per input shard.

Decode straight to the model's input (`data/decode.py`: DCT-scaled JPEG decoding, EXIF orientation,
one resize; open_clip's own preprocessing for a tower whose transform is not the standard one) →
batched encode_image (GPU when present) → per-shard parquet (`id`, `embedding` float16
L2-normalized, `width`, `height`). Undecodable or too-small images become rejects with their reason.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from ovpipe import sharded
from ovpipe.curation.clip_pretrain import embed_settings
from ovpipe.data import source, tables
from ovpipe.data.decode import SquareInput, device_batch, header_size, square_pixels
from ovpipe.data.images import ImageError, decode_image
from ovpipe.data.shards import ShardReport, iter_samples
from ovpipe.models.clip import encode_images, load_clip
from ovpipe.sharded import Context, ShardResult, shard_name

STEP = "embed"


def embedding_table(ids: list[str], emb: np.ndarray, widths: list[int], heights: list[int]) -> pa.Table:
    dim = emb.shape[1] if emb.ndim == 2 else 0
    flat = pa.array(emb.astype(np.float16).reshape(-1), pa.float16())
    return pa.table({"id": pa.array(ids, pa.string()),
                     "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
                     "width": pa.array(widths, pa.int32()), "height": pa.array(heights, pa.int32())})


def embeddings_of(table: pa.Table) -> np.ndarray:
    """(N, d) float32 from an embed parquet table."""
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)


def ordered_map(pool, fn, items, ahead: int):
    """pool.map with at most `ahead` items in flight (Executor.map would read the whole shard first)."""
    pending = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def embed_shard(ctx: Context, index: int) -> ShardResult:
    cfg, data = embed_settings(ctx), ctx.recipe.data
    uri = source.input_shards(ctx)[index]
    model, preprocess, _, device = load_clip(cfg, ctx.recipe.seed)
    report = ShardReport(uri)
    rejects: list[tuple[str, str, str]] = []
    ids, widths, heights, chunks, n_in = [], [], [], [], 0

    square = SquareInput.of(preprocess)
    on_device = square is not None and device == "cuda" and cfg.gpu_decode

    def prepare(sample):
        if sample.error:
            return sample.key, None, sample.error
        if square is not None:
            try:
                if on_device:  # decoded with its batch in flush()
                    return sample.key, (header_size(sample.image, cfg.min_image_side), sample.image), None
                pixels, size = square_pixels(sample.image, square.size, cfg.min_image_side)
            except ImageError as exc:
                return sample.key, None, (exc.reason, exc.detail)
            return sample.key, (size, pixels), None
        image, err = decode_image(sample.image, cfg.min_image_side)
        return sample.key, (image.size, preprocess(image)) if image is not None else None, err

    batch: list[tuple[str, tuple]] = []

    def flush():
        if not batch:
            return
        items = [b[1][1] for b in batch]
        kept = batch
        if on_device:
            pixels, ok, failed = device_batch(items, square, device)
            rejects.extend((batch[i][0], *failed[i]) for i in sorted(failed))
            kept = [batch[i] for i in ok]
        else:
            pixels = square.batch(items) if square is not None else torch.stack(items)
        if kept:
            chunks.append(encode_images(model, pixels, device))
        for key, (size, _) in kept:
            ids.append(key)
            widths.append(size[0])
            heights.append(size[1])
        batch.clear()

    samples = iter_samples(uri, report, data.format, data.id_column, data.image_column, data.caption_column)
    with ThreadPoolExecutor(cfg.decode_threads) as pool:
        prepared_samples = ordered_map(pool, prepare, samples, ahead=2 * cfg.batch_size)
        for key, prepared, err in tqdm(prepared_samples, desc=f"embed {shard_name(index)}",
                                       unit="img", mininterval=5, leave=False):
            n_in += 1
            if err:
                rejects.append((key, *err))
                continue
            batch.append((key, prepared))
            if len(batch) >= cfg.batch_size:
                flush()
        flush()
    # a shard where nothing decoded still gets a table of the model's width (parquet has no 0-wide lists)
    emb = np.concatenate(chunks) if chunks else np.zeros((0, model.visual.output_dim), np.float32)
    out_uri = ctx.uri(STEP, f"{shard_name(index)}.parquet")
    digest = tables.write_parquet(out_uri, embedding_table(ids, emb, widths, heights))
    return ShardResult(n_in, len(ids), [{"uri": out_uri, "sha256": digest, "samples": len(ids)}], rejects,
                       {"shard_errors": report.errors})


def process(ctx: Context, shards: str = "all", workers: int = 1) -> None:
    indices = sharded.parse_shards(shards, len(source.input_shards(ctx)))
    sharded.run_shards(ctx, STEP, "embed", indices, embed_shard, workers)


def finalize(ctx: Context) -> dict:
    return sharded.finalize(ctx, STEP, ["embed"], len(source.input_shards(ctx)), source.input_refs(ctx),
                            t_start=time.perf_counter())
