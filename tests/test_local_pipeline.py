"""The DAG through kfp.local (what `make run` does), on a folder store and on a real S3 server
(SeaweedFS with real credentials): both give the same data digests as the steps run directly."""
from __future__ import annotations

import pytest

from ovpipe.cli import main
from ovpipe.steps import run as run_step
from pipelines.local import select_steps
from tests.helpers import SMALL, TINY, data_digests, run_all, small_context

PACKED = ("lengths", "pack", "synth-stage1", "lengths-stage1", "pack-stage1", "synth-sft", "lengths-sft", "pack-sft")
ALL = ("synth", "embed", "concepts", "balance", "caption", "filter") + PACKED
STAGES = ("stage1", "mid", "sft")
FEW_STEPS = [f"train.{s}.{k}={v}" for s in STAGES for k, v in (("steps", 2), ("warmup_steps", 0))] + [
    "eval.count=3", "eval.formats=[short, caption]", "vit.steps=3", "vit.images=32"]
DATA = ["packing.sft.synth_shards=2", "packing.sft.synth_samples_per_shard=200"]  # both runs: digests compare


def _run(store: str, run_id: str = "kfp") -> None:
    args = ["run", "--recipe", TINY, "--store", store, "--run-id", run_id, "--no-cache"]
    # one task per loop (outputs do not depend on the grouping): kfp.local starts a process per task
    args += sum((["--set", s] for s in SMALL + DATA + FEW_STEPS + ["data.group_size=4"]), [])
    assert main(args) == 0


def _trained(store: str) -> None:
    """The vit step and the three stages ran, each leaving a manifest with its metrics and its weights."""
    from safetensors.torch import load_file

    from ovpipe import storage

    body = storage.read_json(storage.join(store, "kfp", "vit", "manifest.json"))
    assert body["metrics"]["steps"] == 3
    tower, after_stage1 = (load_file(storage.localize(storage.join(store, "kfp", *p, "model.safetensors")))
                           for p in (("vit", "hf"), ("stage1", "hf", "vision")))
    assert tower.keys() == after_stage1.keys() and all(tower[k].equal(after_stage1[k]) for k in tower)  # loaded, frozen
    for stage in STAGES:
        body = storage.read_json(storage.join(store, "kfp", stage, "manifest.json"))
        assert body["metrics"]["steps"] == 2 and body["metrics"]["loss_last"] > 0
        assert storage.exists(storage.join(store, "kfp", stage, "hf", "llm", "model.safetensors"))
        assert storage.exists(storage.join(store, "kfp", stage, "checkpoints", "latest.json"))
    body = storage.read_json(storage.join(store, "kfp", "eval", "manifest.json"))
    assert body["evaluated"]["stage"] == "sft" and len(body["metrics"]) == 7
    assert all({"score", "chance", "before", "blind"} <= set(s) for s in body["metrics"].values())


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    ctx = small_context(str(tmp_path_factory.mktemp("direct")), *DATA, run_id="kfp")
    run_all(ctx)
    for dataset in ("mid", "stage1", "sft"):
        for step in ("synth", "lengths", "pack") if dataset != "mid" else ("lengths", "pack"):
            run_step(ctx, step, dataset=dataset)
    return data_digests(ctx, ALL)


def test_local_pipeline_on_a_folder_matches_direct_steps(direct, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _run(str(tmp_path / "store"))
    out = capsys.readouterr().out
    assert "filter" in out and "manifest.json" in out and "balance.png" in out and "loss" in out
    assert data_digests(small_context(str(tmp_path / "store"), *DATA, run_id="kfp"), ALL) == direct
    _trained(str(tmp_path / "store"))


def test_local_pipeline_on_seaweedfs_matches_folder_store(direct, s3_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run(s3_root)
    assert data_digests(small_context(s3_root, *DATA, run_id="kfp"), ALL) == direct
    _trained(s3_root)  # the loader streamed from S3, checkpoints and exports went there


def test_step_ranges():
    assert select_steps("balance", None) == ("balance", "caption", "filter", "lengths", "pack", "vit", *STAGES, "eval")
    assert select_steps("stage1", None) == (*STAGES, "eval")  # a rerun of the stages keeps the pretrained tower
    assert select_steps("mid", "mid") == ("mid",)
    assert select_steps(None, "embed") == ("synth", "clip", "embed")
    with pytest.raises(ValueError):
        select_steps("filter", "embed")
