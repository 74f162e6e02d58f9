"""The compiled pipeline: fresh, valid against the KFP protos, cluster settings where they belong;
and the layering rule (src/ovpipe never imports kfp)."""
from __future__ import annotations

import ast
import os
import pathlib

import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from pipelines.compile import PIPELINES, compile_all
from tests.helpers import ROOT

COMPILED = pathlib.Path(ROOT, "pipelines", "compiled")


def _docs(path):
    return list(yaml.safe_load_all(path.read_text()))


def test_compiled_yaml_is_fresh(tmp_path):
    compile_all(str(tmp_path))
    for name in PIPELINES:
        fresh, committed = (tmp_path / f"{name}.yaml").read_bytes(), (COMPILED / f"{name}.yaml").read_bytes()
        assert fresh == committed, f"pipelines/compiled/{name}.yaml is stale: run `make compile` and commit it"


def test_compiled_yaml_parses_into_protos():
    for name in PIPELINES:
        spec_doc, platform_doc = _docs(COMPILED / f"{name}.yaml")
        spec = json_format.ParseDict(spec_doc, pipeline_spec_pb2.PipelineSpec())
        platform = json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec())
        executors = platform.platforms["kubernetes"].deployment_spec.executors
        configs = {k: json_format.ParseDict(json_format.MessageToDict(v), k8s_pb2.KubernetesExecutorConfig())
                   for k, v in executors.items()}
        assert set(configs) == set(spec.deployment_spec["executors"].keys())
        for cfg in configs.values():  # every task reads S3 and MLflow settings by reference
            assert [(s.secret_name, s.optional) for s in cfg.secret_as_env] == [("mlpipeline-minio-artifact", False),
                                                                              ("ovpipe-mlflow", True)]
            assert [(c.config_map_name, c.optional) for c in cfg.config_map_as_env] == [("ovpipe-config", True)]
            assert {k.env_var for s in cfg.secret_as_env for k in s.key_to_env} >= {"AWS_ACCESS_KEY_ID"}
            assert {k.env_var for c in cfg.config_map_as_env for k in c.key_to_env} == {"MLFLOW_TRACKING_URI",
                                                                                      "OVPIPE_S3_ENDPOINT"}


def test_gpu_only_where_needed():
    spec_doc, platform_doc = _docs(COMPILED / "curation.yaml")
    executors = spec_doc["deploymentSpec"]["executors"]
    tolerations = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu = {name for name, ex in executors.items()
           if ex["container"].get("resources", {}).get("accelerator", {}).get("resourceCount")
           or ex["container"].get("resources", {}).get("accelerator", {}).get("count")}
    assert {"exec-embed", "exec-caption", "exec-concepts-index"} <= gpu
    assert "exec-balance" not in gpu and "exec-filter-rules" not in gpu
    for name in gpu:
        assert tolerations[name]["tolerations"][0]["key"] == "nvidia.com/gpu"
    for ex in executors.values():
        assert ex["container"]["image"].startswith("ghcr.io/ovpipe/")


def test_shard_steps_fan_out_with_parallel_for():
    spec_doc, _ = _docs(COMPILED / "curation.yaml")
    tasks = spec_doc["root"]["dag"]["tasks"]
    loops = {name: t for name, t in tasks.items() if "parameterIterator" in t}
    assert len(loops) == 3  # embed+concepts, caption+filter rules, filter write
    for loop in loops.values():
        assert loop["iteratorPolicy"]["parallelismLimit"] > 1
        assert loop["parameterIterator"]["items"]["inputParameter"].endswith("plan-Output")


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_layers_import_in_one_direction():
    src = pathlib.Path(ROOT, "src", "ovpipe")
    for path in src.rglob("*.py"):
        assert "kfp" not in _imports(path), f"{path} imports kfp: stage logic must stay kfp-free"
        assert not {"components", "pipelines"} & _imports(path) or path.name == "cli.py", path
    for path in pathlib.Path(ROOT, "components").glob("*.py"):
        assert _imports(path) <= {"kfp", "ovpipe", "components", "typing", "os"}, path
        if path.name != "platform.py":  # the one cluster helper beside them
            assert len(path.read_text().splitlines()) <= 40, f"{path}: components stay a few lines each"
    for path in pathlib.Path(ROOT, "pipelines").glob("*.py"):
        assert _imports(path) <= {"__future__", "kfp", "components", "pipelines", "typing", "os", "sys", "argparse",
                                  "json"}, path


def test_cli_only_reaches_pipelines_dynamically():
    text = pathlib.Path(ROOT, "src", "ovpipe", "cli.py").read_text()
    assert "import_module(\"pipelines.local\")" in text and os.path.exists(os.path.join(ROOT, "pipelines", "local.py"))


def test_training_stages_follow_their_data():
    """stage1 after the vit task and the stage-1 packing, mid after stage1 and the curated packing, sft
    after mid and the stage-2 packing; the training tasks need no GPU themselves (the TrainJob has them)."""
    spec_doc, _ = _docs(COMPILED / "full.yaml")
    tasks = spec_doc["root"]["dag"]["tasks"]
    train = {t["taskInfo"]["name"]: t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-train")}
    assert set(train) == {"train-stage1", "train-mid", "train-sft"}
    names = {key: t["taskInfo"]["name"] for key, t in tasks.items()}
    deps = {name: {names[d] for d in t.get("dependentTasks", [])} for name, t in train.items()}
    assert {"vit", "pack-collect-stage1"} <= deps["train-stage1"]
    assert {"train-stage1", "pack-collect-mid"} <= deps["train-mid"]
    assert {"train-mid", "pack-collect-sft"} <= deps["train-sft"]
    executors = spec_doc["deploymentSpec"]["executors"]
    for t in train.values():
        ex = executors[spec_doc["components"][t["componentRef"]["name"]]["executorLabel"]]
        assert not ex["container"].get("resources", {}).get("accelerator")
