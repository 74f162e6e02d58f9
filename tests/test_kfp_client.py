"""`ovpipe kfp …` and the Makefile targets on top of it, against a stateful loopback stub of the KFP 2.17
v2beta1 API (tests/kfp_stub.py): upload → submit → a task fails → status names it → retry reruns only it →
succeeded; one stage; the nightly schedule. Request paths, methods, bodies and their order are checked."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from ovpipe import kfp_rest
from ovpipe import profile as profiles
from tests.kfp_stub import KFPStub

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "stub-token-0123"


@pytest.fixture
def stub():
    with KFPStub(token=TOKEN) as s:
        yield s


def ovpipe(stub, *args, env=None):
    env = {**os.environ, "KFP_HOST": stub.host, "KFP_TOKEN": TOKEN, **(env or {})}
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "ovpipe"), "kfp", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc


def ok(proc) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def posts(stub, path_suffix: str) -> list:
    return [(q, b) for m, p, q, b in stub.requests if m == "POST" and p.endswith(path_suffix)]


def test_upload_submit_fail_status_retry_succeed(stub):
    up = json.loads(ok(ovpipe(stub, "upload")))
    assert up["pipeline"] == "ovpipe-full" and up["version"].startswith("default-")
    (query, body), = posts(stub, "/pipelines/upload")
    assert query["name"] == "ovpipe-full" and body["filename"] == "full.yaml"
    assert body["uploadfile"] == (ROOT / "pipelines" / "compiled" / "full.yaml").read_bytes()
    (vquery, _), = posts(stub, "/pipelines/upload_version")
    assert vquery["pipelineid"] == up["pipeline_id"] and vquery["name"] == up["version"]
    ok(ovpipe(stub, "upload"))  # unchanged: the same version is reused, nothing uploaded again
    assert len(posts(stub, "/pipelines/upload")) == 1 and len(posts(stub, "/pipelines/upload_version")) == 1

    sub = json.loads(ok(ovpipe(stub, "submit", "--recipe", "configs/recipes/tiny.yaml", "--run-id", "t1",
                               "--store", "s3://bucket/runs", "--set", "train.mid.steps=5")))
    assert sub["url"] == f"{stub.host}/#/runs/details/{sub['run_id']}"
    (_, run), = posts(stub, "/runs")
    assert run["pipeline_version_reference"] == {"pipeline_id": up["pipeline_id"],
                                                 "pipeline_version_id": up["version_id"]}
    assert run["runtime_config"]["parameters"] == {"recipe": "configs/recipes/tiny.yaml", "store": "s3://bucket/runs",
                                                   "run_id": "t1", "overrides": '{"train.mid.steps": 5}'}
    assert run["service_account"] == profiles.Profile().service_account and run["display_name"] == "t1"
    (_, exp), = posts(stub, "/experiments")
    assert exp == {"display_name": "ovpipe"} and run["experiment_id"]

    rid = sub["run_id"]
    assert "RUNNING" in ok(ovpipe(stub, "status", rid))
    stub.fail_task(rid, "train-2", "OOMKilled")  # the DAG key of train-mid
    failed = ovpipe(stub, "status", rid)
    assert failed.returncode == 1
    assert "FAILED" in failed.stdout and "train-mid" in failed.stdout and "failed: train-mid" in failed.stdout
    assert "kubectl -n kubeflow logs" in failed.stdout and "NOT RUN (upstream failed)" in failed.stdout
    assert ok(ovpipe(stub, "retry", rid)) and posts(stub, f"/runs/{rid}:retry") == [({}, None)]
    done = ok(ovpipe(stub, "status", rid, "--wait"))
    assert f"run {rid} (t1): SUCCEEDED" in done
    tasks = stub.tasks(rid)
    assert tasks["train-2"]["retried"] == 1 and tasks["synth"]["retried"] == 0  # only the failed one reran
    # a finished run cannot be retried: the server's refusal, said plainly
    again = ovpipe(stub, "retry", rid)
    assert again.returncode == 1 and "409" in again.stderr
    methods = [(m, p.split("/apis/v2beta1")[1]) for m, p, _, _ in stub.requests if m == "POST"]
    assert methods == [("POST", "/pipelines/upload"), ("POST", "/pipelines/upload_version"), ("POST", "/experiments"),
                       ("POST", "/runs"), ("POST", f"/runs/{rid}:retry"), ("POST", f"/runs/{rid}:retry")]


def test_every_request_carries_the_bearer_token(stub):
    ok(ovpipe(stub, "upload"))
    denied = ovpipe(stub, "upload", env={"KFP_TOKEN": "wrong"})
    assert denied.returncode == 1 and "401" in denied.stderr


def test_token_from_the_pod_file_and_the_kube_config(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert kfp_rest.find_token({"KF_PIPELINES_SA_TOKEN_PATH": str(token_file)}) == "from-file"
    kube = tmp_path / "config"
    kube.write_text(yaml.safe_dump({"current-context": "c", "contexts": [{"name": "c", "context": {"user": "u"}}],
                                    "users": [{"name": "u", "user": {"token": "from-kubeconfig"}}]}))
    assert kfp_rest.find_token({"KUBECONFIG": str(kube), "KF_PIPELINES_SA_TOKEN_PATH": ""}) == "from-kubeconfig"
    with pytest.raises(kfp_rest.KfpError, match="no such file"):
        kfp_rest.find_token({"KF_PIPELINES_SA_TOKEN_PATH": str(tmp_path / "missing")})


def test_run_stage_submits_the_one_stage_pipeline(stub):
    out = json.loads(ok(ovpipe(stub, "run-stage", "--stage", "mid", "--run", "t1", "--recipe",
                               "configs/recipes/tiny.yaml")))
    assert out["pipeline"] == "ovpipe-stage"
    (_, run), = posts(stub, "/runs")
    assert run["runtime_config"]["parameters"] == {"stage": "mid", "run_id": "t1", "store": "s3://ovpipe/runs",
                                                   "recipe": "configs/recipes/tiny.yaml", "overrides": "{}"}
    assert run["display_name"] == "t1-mid"


def test_make_run_stage_goes_to_kfp_when_a_host_is_set(stub):
    env = {**os.environ, "KFP_HOST": stub.host, "KFP_TOKEN": TOKEN}
    proc = subprocess.run(["make", "-s", "run-stage", "STAGE=sft", "RUN=t9"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (_, run), = posts(stub, "/runs")
    params = run["runtime_config"]["parameters"]
    assert params["stage"] == "sft" and params["run_id"] == "t9"


def test_make_schedule_eval_creates_and_lists_a_recurring_run(stub, tmp_path):
    env = {**os.environ, "KFP_HOST": stub.host, "KFP_TOKEN": TOKEN}
    proc = subprocess.run(["make", "-s", "schedule-eval", "CRON=0 0 2 * * *", "CHECKPOINT=latest",
                           f"ARGS=--store {tmp_path} --run-id nightly"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    (_, rr), = posts(stub, "/recurringruns")
    assert rr["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert rr["mode"] == "ENABLE" and rr["max_concurrency"] == "1" and rr["no_catchup"] is True
    params = rr["runtime_config"]["parameters"]
    assert params["checkpoint"] == "latest" and params["run_id"] == "nightly" and params["store"] == str(tmp_path)
    client = kfp_rest.Client(stub.host, TOKEN)
    listed = client.recurring_runs(rr["experiment_id"])
    assert [r["recurring_run_id"] for r in listed] == [out["recurring_run_id"]]
    versions = {v["pipeline_version_id"]: v for v in client.versions(rr["pipeline_version_reference"]["pipeline_id"])}
    spec = versions[rr["pipeline_version_reference"]["pipeline_version_id"]]["pipeline_spec"]
    assert spec.get("pipeline_spec", spec)["pipelineInfo"]["name"] == "ovpipe-evaluation"


def test_bad_input_is_refused_before_any_request(stub, tmp_path):
    bad_cron = ovpipe(stub, "schedule", "--cron", "0 2 * * *")
    assert bad_cron.returncode == 2 and "6 fields" in bad_cron.stderr
    bad_recipe = ovpipe(stub, "submit", "--recipe", "configs/recipes/tiny.yaml", "--run-id", "x",
                        "--set", "train.mid.steps=many")
    assert bad_recipe.returncode == 2 and "train.mid.steps" in bad_recipe.stderr
    no_host = subprocess.run([str(ROOT / ".venv" / "bin" / "ovpipe"), "kfp", "upload"], cwd=ROOT,
                             env={k: v for k, v in os.environ.items() if k != "KFP_HOST"}, capture_output=True,
                             text=True, timeout=60)
    assert no_host.returncode == 2 and "KFP_HOST" in no_host.stderr
    (tmp_path / "never-compiled.yaml").write_text("registry: r.example.org\n")
    other = ovpipe(stub, "upload", "--profile", str(tmp_path / "never-compiled.yaml"))
    assert other.returncode == 1 and "make compile PROFILE=never-compiled" in other.stderr
    assert not [r for r in stub.requests if r[0] == "POST"]
    unreachable = subprocess.run([str(ROOT / ".venv" / "bin" / "ovpipe"), "kfp", "status", "r1", "--host",
                                  "http://127.0.0.1:9"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 1 and "is http://127.0.0.1:9 the KFP API?" in unreachable.stderr
