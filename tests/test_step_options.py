"""Recipe options of the steps, each through the real step: embed weights from a path and from S3,
IVF concepts, MetaCLIP and random balancing, the hf caption backend, the CLIP-score filter."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from ovpipe import storage
from ovpipe.curation.concepts import topk_of
from ovpipe.data import tables
from ovpipe.models.clip import load_clip
from ovpipe.rehearsal.captioner import build_tiny_vlm
from ovpipe.sharded import make_context
from ovpipe.steps import run as run_step
from tests.helpers import SMALL, TINY, rejects

OPTS = SMALL + ["synth.shards=2", "synth.samples_per_shard=40"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """synth → balance once; variants fork a copy of it under another run id."""
    store = str(tmp_path_factory.mktemp("opts"))
    ctx = make_context(TINY, store, "base", OPTS)
    for step in ("synth", "embed", "concepts", "balance"):
        run_step(ctx, step)
    return ctx


def fork(base, run_id: str, keep: tuple[str, ...], *overrides: str):
    for step in keep:
        shutil.copytree(base.uri(step), storage.join(base.store, run_id, step))
    return make_context(TINY, base.store, run_id, OPTS + list(overrides))


def _embeddings(ctx, shard="shard-00000"):
    from ovpipe.curation.embed import embeddings_of

    return embeddings_of(tables.read_parquet(ctx.uri("embed", f"{shard}.parquet")))


def test_embed_weights_from_a_path_and_from_s3(base, tmp_path, s3_root):
    model, *_ = load_clip(base.recipe.embed, base.recipe.seed)
    weights = tmp_path / "tiny-clip.pt"
    torch.save(model.state_dict(), weights)
    storage.put_file(str(weights), f"{s3_root}/models/tiny-clip.pt")
    # A different seed proves the weights, not the random init, made the embeddings.
    for uri in (str(weights), f"{s3_root}/models/tiny-clip.pt"):
        ctx = fork(base, f"w-{len(uri)}", ("synth",), f"embed.weights={uri}", "seed=99")
        run_step(ctx, "embed")
        np.testing.assert_array_equal(_embeddings(ctx), _embeddings(base))


def test_ivf_with_every_list_probed_equals_exact(base):
    ctx = fork(base, "ivf", ("synth", "embed"), "concepts.index=ivf", "concepts.nlist=4", "concepts.nprobe=4")
    run_step(ctx, "concepts")
    for shard in ("shard-00000", "shard-00001"):
        exact = topk_of(tables.read_parquet(base.uri("concepts", f"{shard}.parquet")))
        ivf = topk_of(tables.read_parquet(ctx.uri("concepts", f"{shard}.parquet")))
        np.testing.assert_array_equal(ivf, exact)


@pytest.mark.parametrize("method", ["metaclip", "random"])
def test_other_balancing_methods(base, method):
    ctx = fork(base, f"bal-{method}", ("synth", "embed", "concepts"), f"balance.method={method}",
               "balance.target=30")
    body = run_step(ctx, "balance")
    assert 15 <= body["counts"]["out"] <= 45 and set(body["counts"]["rejected"]) == {"not_sampled"}
    stats = storage.read_json(ctx.uri("balance", "flatness.json"))
    assert stats["method"] == method and stats["after"]["covered"] > 0
    if method == "metaclip":
        assert stats["metaclip_t"] > 0


def test_hf_caption_backend_through_the_step(base, tmp_path):
    model = build_tiny_vlm(tmp_path / "vlm", ["a red circle", "一个红色的圆"])
    ctx = fork(base, "hf", ("synth", "embed", "concepts", "balance"), "caption.backend=hf",
               f"caption.model={model}", "caption.languages=[en, zh]", "caption.max_new_tokens=6",
               "caption.batch_size=4")
    body = run_step(ctx, "caption")
    table = tables.read_parquet(ctx.uri("caption", "shard-00000.parquet")).to_pylist()
    # hf decodes every image itself: the bad caption bytes no longer matter, every selected image is captioned
    assert body["counts"]["out"] == body["counts"]["in"] and table
    assert all(isinstance(r["caption_en"], str) and isinstance(r["caption_zh"], str) for r in table)


def test_clip_score_threshold_rejects_with_its_reason(base):
    ctx = fork(base, "clip", ("synth", "embed", "concepts", "balance"), "filter.min_clip_score=0.99",
               "filter.clip_score_languages=[en, zh]")
    run_step(ctx, "caption")
    body = run_step(ctx, "filter")
    assert body["counts"]["out"] == 0 and body["counts"]["rejected"]["low_clip_score"] > 0
    assert "low_clip_score" in set(rejects(ctx, "filter").values())
