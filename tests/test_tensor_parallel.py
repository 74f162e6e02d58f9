"""Tensor parallelism on CPU (torchrun, gloo): HF -> megatron conversion into TP-sharded models and the
export gathered back, against the unsharded conversion and transformers itself; a published-style
Qwen3 checkpoint (more embedding rows than tokenizer tokens, sharded safetensors) loads unchanged."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from ovpipe.models import sharding

pytestmark = pytest.mark.timeout(900)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
EXTRA_ROWS = 38  # more rows than tokens, as in every published Qwen3 checkpoint


def test_shard_and_unshard_are_inverse():
    g = torch.Generator().manual_seed(0)
    full = {"embedding.word_embeddings.weight": torch.randn(12, 4, generator=g),
            "decoder.layers.0.self_attention.linear_qkv.weight": torch.randn(16, 4, generator=g),
            "decoder.layers.0.self_attention.linear_proj.weight": torch.randn(4, 8, generator=g),
            "decoder.layers.0.mlp.linear_fc1.weight": torch.randn(16, 4, generator=g),
            "decoder.layers.0.mlp.linear_fc2.weight": torch.randn(4, 8, generator=g),
            "decoder.layers.0.self_attention.q_layernorm.weight": torch.randn(2, generator=g),
            "decoder.final_layernorm.weight": torch.randn(4, generator=g)}
    for tp in (1, 2, 4):
        parts = [sharding.shard(full, tp, r) for r in range(tp)]
        back = sharding.unshard(parts)
        assert all(torch.equal(back[k], v) for k, v in full.items()), tp
    fc1 = full["decoder.layers.0.mlp.linear_fc1.weight"]
    gate, up = fc1[:8], fc1[8:]
    r1 = sharding.shard_tensor("decoder.layers.0.mlp.linear_fc1.weight", fc1, 2, 1)
    assert torch.equal(r1, torch.cat([gate[4:], up[4:]]))  # megatron's [gate_r; up_r] per rank
    with pytest.raises(ValueError, match="does not split over tensor_parallel=3"):
        sharding.shard_tensor("embedding.word_embeddings.weight", full["embedding.word_embeddings.weight"][:10], 3, 0)


def write_checkpoints(out, recipe, tok_dir, tie: bool, odd: bool = False) -> dict:
    """A Qwen3 checkpoint of the recipe's shape as published ones are: sharded safetensors with an index,
    more embedding rows than tokenizer tokens (an even count, or with `odd` one that TP=2 must pad by a
    row and the export cut again); and an MLCD tower folder."""
    from transformers import MLCDVisionModel, Qwen3ForCausalLM

    from ovpipe.models.convert import qwen3_hf_config
    from ovpipe.models.vision import mlcd_config
    from ovpipe.packing.tokenizer import load_tokenizer

    n_tok = len(load_tokenizer(tok_dir))
    rows = (n_tok + EXTRA_ROWS) // 2 * 2 + int(odd)
    cfg = dataclasses.replace(recipe.model.llm, tie_embeddings=tie)
    torch.manual_seed(3)
    qwen = Qwen3ForCausalLM(qwen3_hf_config(cfg, rows))
    llm_dir, vision_dir = os.path.join(out, "qwen3"), os.path.join(out, "mlcd")
    qwen.save_pretrained(llm_dir, max_shard_size="100KB")
    MLCDVisionModel(mlcd_config(recipe.model.vision, recipe.packing.patch_size)).save_pretrained(vision_dir)
    assert os.path.exists(os.path.join(llm_dir, "model.safetensors.index.json"))
    return {"llm": llm_dir, "vision": vision_dir, "rows": rows, "tie": tie}


def _sets(ckpt, tok_dir, tp, processes=1):
    return [f"model.llm.weights={ckpt['llm']}", f"model.vision.weights={ckpt['vision']}",
            f"packing.tokenizer={tok_dir}", f"model.llm.tie_embeddings={str(ckpt['tie']).lower()}", "vit.steps=0",
            f"train.tensor_parallel={tp}", f"train.processes={processes}"]


def run_worker(out, ckpt, tok_dir, tp: int) -> dict:
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={tp}",
           os.path.join(ROOT, "tests", "tp_worker.py"), str(out), *(f"--set={s}" for s in _sets(ckpt, tok_dir, tp))]
    proc = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(out, "losses.json")) as f:
        return json.load(f)


def _safetensors(folder) -> dict:
    from ovpipe.models.convert import HFWeights

    w = HFWeights(folder)
    return {k: w[k] for k in w.keys()}


@pytest.mark.parametrize("tie, odd", [(False, False), (True, True)])
def test_tp2_matches_unsharded_and_transformers(tmp_path, tok_dir, tie, odd):
    """Untied, even rows: TP 1 and 2 give transformers' losses. Tied, odd rows: TP 2 pads a row (it joins
    the softmax, so the losses move by a few thousandths) and the export writes the checkpoint back."""
    from transformers import Qwen3ForCausalLM

    from ovpipe.config import load_recipe

    recipe = load_recipe("configs/recipes/tiny.yaml")
    ckpt = write_checkpoints(tmp_path, recipe, tok_dir, tie, odd)
    runs = {tp: run_worker(tmp_path / f"tp{tp}", ckpt, tok_dir, tp) for tp in ((1, 2) if not odd else (2,))}
    two = runs[2]
    assert two["rows"] == ckpt["rows"] and two["vocab"] == ckpt["rows"] + int(odd)
    assert two["local_rows"] == two["vocab"] // 2
    # the memory estimate's per-rank count is what a TP=2 rank really holds
    from ovpipe.train.memory import estimate

    tp2 = load_recipe("configs/recipes/tiny.yaml", _sets(ckpt, tok_dir, 2))
    assert estimate(tp2, two["vocab"], gpus=2)["parameters_per_rank"] == two["local_params"]
    # transformers on each sub-sample of the packed batch is the reference
    hf = Qwen3ForCausalLM.from_pretrained(ckpt["llm"]).eval()
    ids, labels = torch.tensor(two["ids"])[None], torch.tensor(two["labels"])
    ref, a = [], 0
    with torch.no_grad():
        for n in two["lengths"]:
            logits = hf(input_ids=ids[:, a:a + n]).logits[0]
            ref.append(torch.nn.functional.cross_entropy(logits, labels[a:a + n], reduction="none"))
            a += n
    ref = torch.cat(ref)
    for tp, run in runs.items():
        tol = 1e-2 if odd else 1e-5
        assert torch.allclose(torch.tensor(run["losses"]), ref, atol=tol), (tp, run["losses"][:4], ref[:4])
        # the export, gathered from the slices, is the checkpoint it started from, rows and all
        exported, original = _safetensors(tmp_path / f"tp{tp}" / "hf" / "llm"), _safetensors(ckpt["llm"])
        assert set(exported) == set(original)
        assert all(torch.equal(exported[k], original[k]) for k in original), tp
        with open(tmp_path / f"tp{tp}" / "hf" / "llm" / "config.json") as f:
            assert json.load(f)["vocab_size"] == ckpt["rows"]


def test_tokenizer_larger_than_checkpoint_is_refused(tmp_path, tok_dir):
    from ovpipe.config import load_recipe
    from ovpipe.models.convert import vocab_rows

    recipe = load_recipe("configs/recipes/tiny.yaml")
    ckpt = write_checkpoints(tmp_path, recipe, tok_dir, True, odd=True)
    recipe = load_recipe("configs/recipes/tiny.yaml", _sets(ckpt, tok_dir, 2))
    assert vocab_rows(recipe, ckpt["rows"] - 1) == (ckpt["rows"] + 1, ckpt["rows"])
    with pytest.raises(ValueError, match="do not belong together"):
        vocab_rows(recipe, ckpt["rows"] + 1)


@pytest.fixture(scope="module")
def stage1_data(tmp_path_factory, tok_dir):
    """Packed stage-1 pairs tokenized with the checkpoint's tokenizer."""
    from ovpipe.cli import main as cli_main

    store = str(tmp_path_factory.mktemp("tp-store"))
    common = ["--recipe", "configs/recipes/tiny.yaml", "--store", store, "--run-id", "data", "--dataset", "stage1",
              "--set", f"packing.tokenizer={tok_dir}", "--set", "packing.stage1.synth_shards=1",
              "--set", "packing.stage1.synth_samples_per_shard=120"]
    for step in ("synth", "lengths", "pack"):
        assert cli_main([step, *common]) == 0
    return store


def test_stage1_at_tp2_starts_from_a_published_style_checkpoint(tmp_path, stage1_data, tok_dir):
    """Stage 1 under torchrun at TP 1 and 2 from sharded safetensors with extra embedding rows: the same
    losses, and the export's LLM (frozen in stage 1) is the checkpoint it loaded, rows and all."""
    from ovpipe.config import load_recipe

    recipe = load_recipe("configs/recipes/tiny.yaml")
    ckpt = write_checkpoints(tmp_path, recipe, tok_dir, tie=False)
    losses = {}
    for tp in (1, 2):
        sets = _sets(ckpt, tok_dir, tp, processes=tp) + [
            f"train.stage1.data={stage1_data}/data/pack-stage1", "train.stage1.steps=4",
            "train.stage1.warmup_steps=0", "train.checkpoint_every=4"]
        cmd = [sys.executable, "-m", "ovpipe.cli", "train", "--stage", "stage1", "--recipe",
               "configs/recipes/tiny.yaml", "--store", stage1_data, "--run-id", f"tp{tp}",
               *(f"--set={s}" for s in sets)]
        proc = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        with open(os.path.join(stage1_data, f"tp{tp}", "stage1", "history.json")) as f:
            losses[tp] = [h["loss"] for h in json.load(f)]
        assert losses[tp][-1] < losses[tp][0], losses
        exported = _safetensors(os.path.join(stage1_data, f"tp{tp}", "stage1", "hf", "llm"))
        original = _safetensors(ckpt["llm"])
        assert set(exported) == set(original) and all(torch.equal(exported[k], original[k]) for k in original)
    assert losses[1] == pytest.approx(losses[2], rel=1e-4), losses
