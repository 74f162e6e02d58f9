"""The rehearsal's inputs (src/ovpipe/rehearsal/prepare.py), written at shrunk widths into a folder: each in
the format users download, loadable by the code that reads it on a cluster, skipped when already there;
and the report's checks. The full rehearsal (`make rehearsal`, ~25 min) runs outside `make test`."""
from __future__ import annotations

import json
import os

import pytest
import torch

from ovpipe import storage
from ovpipe.config import load_recipe
from ovpipe.rehearsal import prepare, report
from ovpipe.sharded import Context

SHRINK = ["model.llm.hidden_size=64", "model.llm.num_attention_heads=4", "model.llm.num_query_groups=2",
          "model.llm.head_dim=16", "model.llm.ffn_hidden_size=128",
          "model.vision.hidden_size=64", "model.vision.num_attention_heads=4", "model.vision.intermediate_size=128",
          "embed.model_config.vision_cfg.width=64", "embed.model_config.vision_cfg.head_width=32",
          "embed.model_config.text_cfg.width=64", "embed.model_config.text_cfg.heads=2",
          "embed.model_config.embed_dim=32", "packing.tokenizer_vocab=400"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    where = {"embed.weights": "metaclip/h14.bin", "concepts.vocab": "metaclip/entries.txt",
             "model.vision.weights": "mlcd", "model.llm.weights": "Qwen3-4B", "packing.tokenizer": "Qwen3-4B",
             "caption.model": "captioner", "data.input": "raw/", "packing.stage1.input": "stage1/",
             "packing.sft.input": "sft/"}
    os.makedirs(root / "metaclip")
    sets = SHRINK + [f"{k}={root / v}" for k, v in where.items()]
    # file values must exist at load time: the recipe is loaded with placeholders first, as a user would
    for v in set(where.values()):
        p = root / v
        (p.parent.mkdir(parents=True, exist_ok=True), p.touch()) if "." in p.name else p.mkdir(exist_ok=True)
    recipe = load_recipe("configs/recipes/rehearsal.yaml", sets)
    for v in set(where.values()):  # ... then removed, so prepare writes every one
        p = root / v
        p.unlink() if p.is_file() else p.rmdir()
    logs: list[str] = []
    out = prepare.prepare(recipe, log=logs.append)
    return recipe, out, logs


def test_every_input_is_written_where_the_recipe_names_it(written):
    recipe, out, logs = written
    assert len(logs) == 8 and all(os.path.exists(uri) for uri in out.values())
    again: list[str] = []
    prepare.prepare(recipe, log=again.append)
    assert again == [], "a rerun skips inputs already written with the same settings"


def test_qwen3_folder_is_sharded_with_more_rows_than_tokens(written):
    from ovpipe.models.convert import HFWeights, checkpoint_rows
    from ovpipe.packing.tokenizer import QWEN3_SPECIAL, load_tokenizer

    recipe, out, _ = written
    folder = out["qwen3"]
    index = json.loads(open(os.path.join(folder, "model.safetensors.index.json")).read())
    assert len(set(index["weight_map"].values())) >= 1
    tok = load_tokenizer(folder)
    assert checkpoint_rows(folder) == prepare.QWEN3_ROWS > len(tok)
    added = {t.content for t in tok.backend_tokenizer.get_added_tokens_decoder().values()}
    assert set(QWEN3_SPECIAL) <= added
    emb = HFWeights(folder)["model.embed_tokens.weight"]
    assert emb.dtype == torch.bfloat16 and emb.shape == (prepare.QWEN3_ROWS, recipe.model.llm.hidden_size)
    assert emb.float().std().item() == pytest.approx(recipe.model.init_std, rel=0.05)


def test_towers_and_captioner_load_as_the_steps_load_them(written):
    from transformers import MLCDVisionModel

    from ovpipe.curation.captioners import make_captioner
    from ovpipe.models.clip import load_clip

    recipe, out, _ = written
    model, _, _, _ = load_clip(recipe.embed, recipe.seed)
    saved = torch.load(out["metaclip"], weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    mlcd = MLCDVisionModel.from_pretrained(out["mlcd"])
    assert mlcd.config.hidden_size == recipe.model.vision.hidden_size
    assert mlcd.config.patch_size == recipe.packing.patch_size
    from PIL import Image

    cap = make_captioner(recipe.caption, out["captioner"], seed=0)
    assert len(cap.caption([Image.new("RGB", (40, 30))], [None], "en")) == 1


def test_datasets_are_webdataset_shards(written):
    from ovpipe.data.shards import ShardReport, iter_samples

    recipe, out, _ = written
    for kind, shards in (("mid", recipe.synth.shards), ("stage1", recipe.packing.stage1.synth_shards),
                         ("sft", recipe.packing.sft.synth_shards)):
        names = sorted(os.listdir(out[kind]))
        assert names == [f"shard-{i:05d}.tar" for i in range(shards)], (kind, names)
        uri = os.path.join(out[kind], names[0])
        samples, rep = list(iter_samples(uri, ShardReport(uri))), ShardReport(uri)
        assert samples and all("json" in s.members for s in samples) and not rep.errors


def test_report_fails_on_a_loss_that_did_not_fall(tmp_path):
    recipe = load_recipe("configs/recipes/tiny.yaml")
    ctx = Context(recipe, str(tmp_path), "r")
    check = {"max_abs_diff": 1e-6, "tolerance": 1e-3, "tokens": 10}
    for i, stage in enumerate(("stage1", "mid", "sft")):
        storage.write_json(ctx.uri(stage, "manifest.json"), {"metrics": {
            "loss_first": 2.0, "loss_last": 1.0 if i else 2.5, "steps": 3, "tokens_per_second": 1.0,
            "export_check": check, "ranks": [{"rank": 0, "tp_rank": 0, "dp_rank": 0, "peak_memory_gib": 1.0,
                                              "memory": "max_rss", "step_seconds": 0.5}]}})
    body = report.build(ctx, 1.0)
    assert "stage1: loss did not fall (2.0000 -> 2.5000)" in body["problems"]
    assert not any(p.startswith(("mid:", "sft:")) for p in body["problems"])
    assert any(p.startswith("embed: no manifest") for p in body["problems"])
    with pytest.raises(report.RehearsalFailed):
        report.write(ctx, 1.0)
    assert storage.exists(ctx.uri("rehearsal.json"))


def test_digests_compare_two_runs(tmp_path):
    """`ovpipe digests --against`: the same outputs are the same data; a changed or missing one is named."""
    from ovpipe import manifest

    def run(name: str, outputs: dict) -> str:
        for step, outs in outputs.items():
            storage.write_json(str(tmp_path / name / step / "manifest.json"),
                               {"outputs": [{"uri": f"/anywhere/{name}/{step}/{n}", "sha256": h} for n, h in outs]})
        return str(tmp_path / name)

    a = run("a", {"embed": [("shard-00000.parquet", "1"), ("shard-00001.parquet", "2")], "pack": [("p.tar", "3")]})
    b = run("b", {"embed": [("shard-00001.parquet", "2"), ("shard-00000.parquet", "1")], "pack": [("p.tar", "3")]})
    c = run("c", {"embed": [("shard-00000.parquet", "1"), ("shard-00001.parquet", "9")]})
    steps = ("embed", "pack", "filter")
    da, db, dc = (manifest.data_digests(r, steps) for r in (a, b, c))
    assert set(da) == {"embed", "pack"} and manifest.compare_digests(da, db) == []
    assert manifest.compare_digests(da, dc) == ["pack: only in the first run",
                                               "embed: 1 output(s) differ: shard-00001.parquet"]
