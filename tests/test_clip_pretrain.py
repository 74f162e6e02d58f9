"""The clip step (the embed model's pretraining on tiny recipes), and the measures of curation against the
synthetic corpus's ground truth: concept assignment, caption separation, balancing by method."""
import itertools

import numpy as np
import pytest

from ovpipe import storage
from ovpipe.config import ConfigError, load_recipe
from ovpipe.curation import balance_compare, clip_pretrain, quality
from ovpipe.data.truth import truth_ids, truth_table
from ovpipe.models.clip import load_clip
from ovpipe.sharded import Context
from tests.helpers import TINY


def test_roc_auc_is_the_share_of_pairs_ranked_right():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 40).round(1), rng.normal(0, 1, 30).round(1)  # rounded: ties occur
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    assert quality.roc_auc(pos, neg) == pytest.approx(np.mean(pairs))
    assert quality.roc_auc([2, 3], [0, 1]) == 1 and quality.roc_auc([0], [1]) == 0
    assert np.isnan(quality.roc_auc([], [1.0]))


def test_derangement_pairs_every_item_with_another():
    for n in (2, 3, 10, 101):
        d = quality.derangement(n, 7)
        assert sorted(d) == list(range(n)) and not (d == np.arange(n)).any()
    assert quality.derangement(1, 7).tolist() == [0]


def test_precision_recall_at_k_and_their_ceiling():
    top = np.array([[1, 2], [3, 4], [5, 6]])
    out = quality.topk_precision_recall(top, [[1], [4, 3, 9], []])
    assert out["precision_at_k"] == pytest.approx((1 + 2 + 0) / 6)
    assert out["recall_at_k"] == pytest.approx((1 + 2 / 3) / 2)  # the row without truth is left out
    assert out["recall_at_k_max"] == pytest.approx((1 + 2 / 3) / 2)
    rand = quality.random_topk(50, 20, 5, 1)
    assert rand.shape == (50, 5) and all(len(set(r)) == 5 for r in rand.tolist())


def test_truth_table_counts_primary_and_realized_concepts():
    vocab = ["a", "b", "c", "d"]
    truths = {"x": ["a", "b"], "y": ["a", "c", "a"], "z": ["b", "zzz"]}
    table, stats = truth_table(truths, vocab)
    assert table.column("primary").to_pylist() == [2, 1, 0, 0]
    assert table.column("realized").to_pylist() == [2, 2, 1, 0]
    assert stats["concepts_present"] == 3 and stats["realized_max_over_median"] == 1.0
    assert truth_ids(truths, ["z", "x", "missing"], vocab) == [[1], [0, 1], []]


def test_balance_comparison_heads_tails_and_coverage():
    before = np.array([50, 20, 10, 5, 2, 1, 1, 1, 1, 0])
    present, head, tail = balance_compare.groups(before)
    assert present.tolist() == list(range(9)) and head.tolist() == [0, 1] and tail.tolist() == [5, 6, 7, 8]
    after = np.array([5, 5, 5, 5, 2, 1, 0, 0, 1, 0])
    s = balance_compare.shape(before, after)
    assert s["coverage"] == pytest.approx(7 / 9) and s["tail_coverage"] == pytest.approx(2 / 4)
    assert s["max_over_median"] == pytest.approx(5 / 5) and s["head_share"] == pytest.approx(10 / 24)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    recipe = load_recipe(TINY, ["clip.steps=6", "clip.images=96", "clip.val_images=48", "clip.batch_size=32",
                                "clip.warmup_steps=2"])
    ctx = Context(recipe, str(tmp_path_factory.mktemp("clip")), "r")
    with pytest.raises(FileNotFoundError, match="ovpipe clip"):
        clip_pretrain.embed_settings(ctx)
    return ctx, clip_pretrain.run(ctx)


def test_pretraining_writes_the_model_embed_loads(trained):
    ctx, body = trained
    m = body["metrics"]
    assert m["steps"] == 6 and np.isfinite(m["loss_last"])
    for prefix in ("", "random_init_"):
        assert 0 <= m[prefix + "precision_at_k"] <= m[prefix + "precision_at_k_max"] <= 1
        assert 0 <= m[prefix + "clip_score_auc"] <= 1
    assert m["scored"] == 48 and m["k"] == ctx.recipe.concepts.k
    assert abs(m["random_init_clip_score_auc"] - 0.5) < 0.2  # the random init tells captions apart by chance
    assert body["counts"] == {"in": 96 + 48, "out": 96 + 48, "rejected": {}}
    assert storage.exists(ctx.uri("clip", "clip.png"))
    cfg = clip_pretrain.embed_settings(ctx)
    assert cfg.weights == clip_pretrain.checkpoint_uri(ctx)
    model, _, _, _ = load_clip(cfg, ctx.recipe.seed)
    init, _, _, _ = load_clip(ctx.recipe.embed, ctx.recipe.seed)
    moved = [not a.equal(b) for a, b in zip(model.state_dict().values(), init.state_dict().values())]
    assert any(moved)  # the trained weights, not a fresh random init


def test_training_repeats_and_scenes_are_its_own():
    recipe = load_recipe(TINY)
    ctx = Context(recipe, "/nonexistent", "r")
    a = clip_pretrain.scenes(ctx, clip_pretrain.TRAIN_STREAM, 8, 64, zipf_s=0.0)
    b = clip_pretrain.scenes(ctx, clip_pretrain.TRAIN_STREAM, 8, 64, zipf_s=0.0)
    v = clip_pretrain.scenes(ctx, clip_pretrain.VAL_STREAM, 8, 64)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], v[0])
    assert all(truth for truth in a[2])


def test_recipe_rejects_two_sources_for_the_embed_model(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    with pytest.raises(ConfigError, match="clip.steps"):
        load_recipe(TINY, ["clip.steps=10", f"embed.weights={weights}"])
    with pytest.raises(ConfigError, match="clip.steps"):
        load_recipe(TINY, ["clip.steps=-1"])
    off = Context(load_recipe(TINY, ["clip.steps=0"]), str(tmp_path), "r")
    assert clip_pretrain.embed_settings(off).weights is None
    with pytest.raises(ValueError, match="clip.steps is 0"):
        clip_pretrain.run(off)
