"""The eval step end to end on a tiny export: lmms-eval runs for the model, its untrained self and the
gray-image control; the manifest carries {score, chance, before, blind} per task; the scores reach the
stage's MLflow run, the KFP Metrics artifact and the Markdown report."""
import json
import os

import pytest

from ovpipe import storage
from ovpipe.config import load_recipe
from ovpipe.sharded import Context

pytestmark = pytest.mark.timeout(900)


class FakeMetrics:
    def __init__(self):
        self.logged = {}

    def log_metric(self, key, value):
        self.logged[key] = value


def test_eval_step(tmp_path, tok_dir, monkeypatch):
    import torch

    from ovpipe import tasks
    from ovpipe.evaluate.step import run
    from ovpipe.models import llm
    from ovpipe.models.convert import export_hf
    from ovpipe.models.vlm import build_model
    from ovpipe.packing.tokenizer import load_tokenizer
    from ovpipe.train.loop import init_distributed
    from ovpipe.train.tracking import Tracker

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = str(tmp_path / "store")
    recipe = load_recipe("configs/recipes/tiny.yaml", [f"packing.tokenizer={tok_dir}", "eval.count=4",
                                                       "eval.formats=[short, mc, caption]", "eval.batch_size=8",
                                                       "vit.steps=0"])
    init_distributed(recipe)
    tok = load_tokenizer(tok_dir)
    vocab = llm.padded_vocab(len(tok))
    torch.manual_seed(5)
    model = build_model(recipe, vocab, image_pad_id=tok.convert_tokens_to_ids("<|image_pad|>"))
    export_hf(model, recipe, tok_dir, f"{store}/r/sft/hf", vocab)
    tracker = Tracker(store, "r", "sft", {"x": 1})
    storage.write_text(f"{store}/r/sft/manifest.json", json.dumps({"metrics": {"mlflow_run_id": tracker.run_id}}))

    body = run(Context(recipe, store, "r"))
    scores = body["metrics"]
    assert len(scores) == 13  # color/shape/count × en/zh × short/mc + captioning
    for task, s in scores.items():
        assert {"score", "chance", "before", "blind", "metric"} <= set(s), task
        assert 0 <= s["score"] <= 1 and 0 < s["chance"] < 1 and s["before"] is not None and s["blind"] is not None
    assert scores["ovpipe_color_en"]["chance"] == pytest.approx(1 / 8)
    assert body["evaluated"]["stage"] == "sft" and body["step"] == "eval"
    for name in ("report.md", "report.html", "scores.png", "scores.json", "manifest.json"):
        assert storage.exists(f"{store}/r/eval/{name}"), name
    assert "paper 8B" in storage.read_text(f"{store}/r/eval/report.md")
    samples = [p for p in storage.list_uris(f"{store}/r/eval/lmms-eval/score") if p.endswith(".jsonl")]
    assert samples, "lmms-eval's sample logs are kept"
    # MLflow: on the evaluated stage's run
    logged = tracker.client.get_run(tracker.run_id).data.metrics
    assert logged["eval.ovpipe_color_en"] == pytest.approx(scores["ovpipe_color_en"]["score"])
    assert "eval.ovpipe_color_en.blind" in logged and "eval.ovpipe_color_en.before" in logged
    # KFP: Metrics and the Markdown visualization
    metrics, md = FakeMetrics(), str(tmp_path / "kfp" / "report.md")
    tasks.publish_scores(body, metrics, md)
    assert metrics.logged["ovpipe_shape_en"] == scores["ovpipe_shape_en"]["score"]
    assert metrics.logged["ovpipe_shape_en.chance"] == pytest.approx(0.2)
    assert "ovpipe_shape_en" in open(md).read()
    # an earlier stage is evaluated only when the recipe asks
    assert run(Context(recipe, store, "r"), "stage:mid") is None


def test_eval_refuses_what_it_cannot_evaluate(tmp_path):
    from ovpipe.evaluate.step import run

    recipe = load_recipe("configs/recipes/tiny.yaml")
    with pytest.raises(FileNotFoundError, match="no exported stage"):
        run(Context(recipe, str(tmp_path), "nothing"))
    os.makedirs(tmp_path / "x" / "sft" / "hf")
    storage.write_text(str(tmp_path / "x" / "sft" / "hf" / "ovpipe.json"), "{}")
    empty = load_recipe("configs/recipes/tiny.yaml", ["eval.local_tasks=false"])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        run(Context(empty, str(tmp_path), "x"))
