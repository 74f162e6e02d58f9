"""Cluster profiles (configs/cluster/*.yaml): validated like a recipe, and applied in one place — a
pipeline compiled for a profile names its images, placement, Secrets and ConfigMap, and no secret value."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ovpipe import profile as profiles
from ovpipe.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_every_profile_loads_and_the_default_file_is_the_default():
    names = [p.stem for p in (ROOT / "configs" / "cluster").glob("*.yaml")]
    assert {"default", "h100-pool", "local"} <= set(names)
    for name in names:
        assert profiles.load(name).name == name
    assert profiles.load("default") == profiles.Profile()  # components fall back to Profile() in task pods


def test_one_error_lists_every_problem(tmp_path):
    bad = {"namespace": "Team_A", "bogus": 1, "shm_size": "lots", "kfp": {"host": "kfp.example.org"},
           "images": {"gpu": {"digest": "sha256:xyz"}, "tpu": {"repository": "x"}},
           "placement": {"train": {"tolerations": [{"key": "a", "operator": "Maybe"}]}, "edge": {}},
           "s3_secret_keys": {"AWS_ACCESS_KEY_ID": "accesskey"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as err:
        profiles.load(str(path))
    text = str(err.value)
    for needle in ("namespace: 'Team_A'", "bogus: unknown key", "shm_size", "kfp.host", "images.gpu.digest",
                   "images.tpu: unknown image family", "tolerations[0].operator", "placement.edge: unknown",
                   "s3_secret_keys"):
        assert needle in text, needle
    assert text.count("\n") >= 8  # one line per problem, in one error
    with pytest.raises(ConfigError, match="no such file"):
        profiles.load("no-such-profile")


def test_digest_pins_win_and_tags_are_what_is_built():
    pool = profiles.load("h100-pool")
    assert pool.image("gpu") == "registry.example.org/ml/ovpipe-gpu@sha256:" + "2" * 64
    assert pool.image("gpu", pinned=False) == "registry.example.org/ml/ovpipe-gpu:0.1.0"
    assert pool.image("caption") == "registry.example.org/ml/ovpipe-caption:0.1.0-vllm"
    assert profiles.node_selector(pool, "train")["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert "nvidia.com/gpu.product" not in profiles.node_selector(pool, "data")


def test_a_task_reads_the_profile_it_was_compiled_with(monkeypatch):
    pool = profiles.load("h100-pool")
    monkeypatch.setenv(profiles.ENV_JSON, pool.to_json())
    assert profiles.from_environment() == pool


def _executors(path: Path):
    spec, platform = list(yaml.safe_load_all(path.read_text()))
    return (spec["deploymentSpec"]["executors"], platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every pipeline compiled for the h100-pool profile, with credentials in the compiling environment."""
    out = tmp_path_factory.mktemp("compiled")
    env = dict(os.environ, OVPIPE_PROFILE="h100-pool", AWS_ACCESS_KEY_ID="AKIAFAKECOMPILE0001",
               AWS_SECRET_ACCESS_KEY="compile-time-secret-value", MLFLOW_TRACKING_PASSWORD="compile-mlflow-pw")
    subprocess.run([sys.executable, "-m", "pipelines.compile", str(out)], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    return out


def test_a_compiled_pipeline_names_the_profiles_images_placement_and_secrets(compiled):
    pool = profiles.load("h100-pool")
    executors, k8s = _executors(compiled / "full.yaml")
    images = {ex["container"]["image"] for ex in executors.values()}
    assert images == {pool.image("data"), pool.image("gpu"), pool.image("caption")}
    gpu_tasks = {name for name, ex in executors.items() if ex["container"].get("resources", {}).get("accelerator")}
    assert {"exec-embed", "exec-caption", "exec-concepts-index", "exec-evaluate"} <= gpu_tasks
    for name, cfg in k8s.items():
        placement = "gpu" if name in gpu_tasks else "data"
        assert cfg["nodeSelector"]["labels"] == profiles.node_selector(pool, placement), name
        tolerations = [{k: v for k, v in t.items() if v is not None} for t in cfg.get("tolerations", [])]
        assert tolerations == pool.placement[placement].tolerations, name
        assert [s["secretName"] for s in cfg["secretAsEnv"]] == [pool.s3_secret]  # no MLflow Secret in this profile
        assert [c["configMapName"] for c in cfg["configMapAsEnv"]] == [pool.config_map]
        assert [s["secretName"] for s in cfg["imagePullSecret"]] == ["registry-example-org"]
    for name in gpu_tasks:
        assert executors[name]["container"]["resources"]["accelerator"]["resourceType"] == pool.gpu.resource
    train = executors["exec-train"]["container"]
    carried = {e["name"]: e["value"] for e in train.get("env", [])}
    assert profiles.from_dict(json.loads(carried[profiles.ENV_JSON])) == pool  # the TrainJob is built from it


def test_no_secret_value_in_a_compiled_pipeline(compiled):
    for path in compiled.glob("*.yaml"):
        text = path.read_text()
        for value in ("AKIAFAKECOMPILE0001", "compile-time-secret-value", "compile-mlflow-pw"):
            assert value not in text, f"{path.name} holds {value}"


def test_the_stage_pipeline_runs_one_stage_with_the_stage_as_a_parameter(compiled):
    spec = list(yaml.safe_load_all((compiled / "stage.yaml").read_text()))[0]
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"stage", "recipe", "store", "run_id", "overrides"}
    assert [t["taskInfo"]["name"] for t in spec["root"]["dag"]["tasks"].values()] == ["train"]


def test_skipped_evals_take_no_gpu(compiled):
    """eval-stage1 and eval-mid sit under a condition a CPU task decides from the recipe (after_each_stage)."""
    spec = list(yaml.safe_load_all((compiled / "full.yaml").read_text()))[0]
    executors = spec["deploymentSpec"]["executors"]
    root = {t["taskInfo"]["name"]: (k, t) for k, t in spec["root"]["dag"]["tasks"].items()}
    for stage in ("stage1", "mid"):
        key, cond = root[f"eval-{stage}"]  # the condition group; the GPU task is inside it
        wanted_key, wanted = root[f"eval-{stage}-wanted"]
        assert cond["componentRef"]["name"].startswith("comp-condition")
        assert f"pipelinechannel--{wanted_key}-Output'] == true" in cond["triggerPolicy"]["condition"]
        inner = spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
        (task,) = inner.values()
        ex = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]
        assert ex["container"]["resources"]["accelerator"]["count"] == "1"
        wanted_ex = executors[spec["components"][wanted["componentRef"]["name"]]["executorLabel"]]
        assert not wanted_ex["container"].get("resources", {}).get("accelerator")
    _, sft = root["eval-sft"]
    assert "triggerPolicy" not in sft
