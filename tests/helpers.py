"""Shared test helpers: a small variant of the tiny recipe and step runners."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq

from ovpipe import storage
from ovpipe.sharded import Context, make_context
from ovpipe.steps import run as run_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "recipes", "tiny.yaml")
STEPS = ("synth", "embed", "concepts", "balance", "caption", "filter")

# Small enough for CI, large enough that every bad kind appears in every shard. The curation steps run on
# the random-init embed model (its scores need a threshold it meets); the clip step has tests of its own.
SMALL = ["synth.shards=3", "synth.samples_per_shard=60", "balance.target=10000", "data.group_size=1",
         "clip.steps=0", "filter.min_clip_score=-0.5"]


def small_context(store: str, *extra: str, run_id: str = "t") -> Context:
    return make_context(TINY, store, run_id, SMALL + list(extra))


def run_all(ctx: Context, workers: int = 1, steps=STEPS) -> dict:
    return {step: run_step(ctx, step, "all", workers) for step in steps}


def data_digests(ctx: Context, steps=STEPS) -> dict:
    """Per step: sha256 of every data output and of rejects.parquet (not manifests: they hold timings)."""
    out = {}
    for step in steps:
        body = storage.read_json(ctx.uri(step, "manifest.json"))
        out[step] = sorted((storage.basename(o["uri"]), o["sha256"]) for o in body["outputs"])
        out[step].append(("rejects.parquet", storage.sha256_uri(ctx.uri(step, "rejects.parquet"))))
    return out


def rejects(ctx: Context, step: str) -> dict[str, str]:
    table = pq.read_table(storage.localize(ctx.uri(step, "rejects.parquet")) if not storage.is_remote(ctx.store)
                          else _tmp_copy(ctx.uri(step, "rejects.parquet")))
    return dict(zip(table.column("id").to_pylist(), table.column("reason").to_pylist()))


def _tmp_copy(uri: str) -> str:
    import tempfile

    path = tempfile.mktemp(suffix=".parquet")
    storage.download(uri, path)
    return path


def synth_meta(ctx: Context) -> dict[str, dict]:
    """key → json meta of every synthetic sample."""
    from ovpipe.data.shards import ShardReport, iter_samples
    from ovpipe.data.source import input_shards

    metas = {}
    for uri in input_shards(ctx):
        for s in iter_samples(uri, ShardReport(uri)):
            metas[s.key] = s.meta
    return metas


def dump(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)


def tool(name: str) -> str:
    """A checker from `make tools` (.tools/bin) or the PATH; the test is skipped, saying so, without it."""
    import shutil

    import pytest

    found = os.path.join(ROOT, ".tools", "bin", name)
    if not os.access(found, os.X_OK):
        found = shutil.which(name) or ""
    if not found:
        pytest.skip(f"{name} not installed: make tools")
    return found


def raw_names(root: str) -> list[str]:
    """Every name under root as the backend holds it, temporaries included."""
    if storage.is_remote(root):
        bucket, key = storage.split_s3(root)
        resp = storage.s3_client().list_objects_v2(Bucket=bucket, Prefix=key + "/")
        return sorted(o["Key"][len(key) + 1:] for o in resp.get("Contents", []))
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def multimodal_sizes(n: int, seed: int):
    """(lengths, images, image tokens) per sample, int64: pack_bench's mix (10% text only, mostly one
    image of lognormal tokens, heavy-tailed text), capacity 8192."""
    rng = np.random.default_rng(seed)
    k = rng.choice(5, n, p=[0.10, 0.80, 0.06, 0.02, 0.02])
    per = np.clip(np.rint(rng.lognormal(np.log(380), 0.85, (n, 4))), 64, 3265).astype(np.int64)
    per[np.arange(4)[None, :] >= k[:, None]] = 0
    tok = per.sum(1)
    return np.minimum(tok + 24 + np.rint(rng.lognormal(np.log(80), 1.1, n)).astype(np.int64), 8192), k, tok
