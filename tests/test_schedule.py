"""`make schedule-eval`: the requests kfp.Client sends, checked by a stub KFP API on 127.0.0.1
(there is no KFP backend here), and the `latest` export resolver."""
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from ovpipe import storage
from ovpipe.evaluate import exports
from tests.helpers import ROOT


class StubKFP(BaseHTTPRequestHandler):
    """Answers the v2beta1 calls create_experiment / create_recurring_run make; records every request."""

    requests: list = []

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        url = urlparse(self.path)
        self.requests.append(("GET", url.path, parse_qs(url.query), None))
        if url.path == "/apis/v2beta1/healthz":
            return self._reply(200, {"multi_user": False})
        if url.path == "/apis/v2beta1/experiments":
            return self._reply(200, {"experiments": [], "total_size": 0})
        return self._reply(404, {"error": f"not stubbed: GET {url.path}"})

    def do_POST(self):  # noqa: N802
        url = urlparse(self.path)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.requests.append(("POST", url.path, parse_qs(url.query), body))
        if url.path == "/apis/v2beta1/experiments":
            return self._reply(200, {"experiment_id": "exp-1", "display_name": body.get("display_name")})
        if url.path == "/apis/v2beta1/recurringruns":
            return self._reply(200, {**body, "recurring_run_id": "rr-1", "status": "ENABLED"})
        return self._reply(404, {"error": f"not stubbed: POST {url.path}"})

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_stub():
    StubKFP.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubKFP)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", StubKFP.requests
    server.shutdown()


def test_schedule_eval_sends_a_recurring_run(kfp_stub, tmp_path):
    host, requests = kfp_stub
    proc = subprocess.run(["make", "-s", "schedule-eval", "CRON=0 0 2 * * *", "CHECKPOINT=latest",
                           f"ARGS=--store {tmp_path} --run-id nightly"],
                          cwd=ROOT, env={**__import__("os").environ, "KFP_HOST": host}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["recurring_run_id"] == "rr-1"
    posts = {path: body for method, path, _, body in requests if method == "POST"}
    assert posts["/apis/v2beta1/experiments"]["display_name"] == "ovpipe-nightly-eval"
    rr = posts["/apis/v2beta1/recurringruns"]
    assert rr["experiment_id"] == "exp-1" and rr["display_name"] == "ovpipe-nightly-eval"
    assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert rr["mode"] == "ENABLE" and int(rr["max_concurrency"]) == 1 and rr["no_catchup"] is True
    params = rr["runtime_config"]["parameters"]
    assert params["checkpoint"] == "latest" and params["run_id"] == "nightly" and params["store"] == str(tmp_path)
    spec = rr["pipeline_spec"]["pipeline_spec"]  # with the platform spec (Kubernetes settings) beside it
    assert "platform_spec" in rr["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "ovpipe-evaluation"
    compiled = next(yaml.safe_load_all(open(f"{ROOT}/pipelines/compiled/evaluation.yaml").read()))
    assert spec["root"] == compiled["root"], "the recurring run carries the compiled evaluation pipeline"


def test_schedule_eval_refuses_bad_input(kfp_stub):
    host, requests = kfp_stub
    with pytest.raises(ValueError, match="6 fields"):
        __import__("pipelines.schedule", fromlist=["check_cron"]).check_cron("0 2 * * *")
    env_missing = subprocess.run([sys.executable, "-m", "pipelines.schedule", "--cron", "0 0 2 * * *"], cwd=ROOT,
                                 env={k: v for k, v in __import__("os").environ.items() if k != "KFP_HOST"},
                                 capture_output=True, text=True)
    assert env_missing.returncode == 2 and "KFP_HOST" in env_missing.stderr
    bad_cron = subprocess.run([sys.executable, "-m", "pipelines.schedule", "--cron", "0 2 * * *"], cwd=ROOT,
                              env={**__import__("os").environ, "KFP_HOST": host}, capture_output=True, text=True)
    assert bad_cron.returncode == 2 and "6 fields" in bad_cron.stderr
    assert not [r for r in requests if r[0] == "POST"]


def test_latest_export_resolution(tmp_path):
    store = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="no export published"):
        exports.resolve("latest", store)
    for stage in ("stage1", "mid"):
        storage.write_text(f"{store}/r1/{stage}/hf/ovpipe.json", "{}")
    exports.publish(store, "r1", "mid", f"{store}/r1/mid/hf")
    assert exports.resolve("latest", store)["uri"] == f"{store}/r1/mid/hf"
    assert exports.resolve("latest:r1", store)["stage"] == "mid"  # the most advanced stage with an export
    assert exports.resolve("stage:stage1", store, "r1")["uri"] == f"{store}/r1/stage1/hf"
    assert exports.resolve(f"{store}/r1/stage1/hf", store) == {"uri": f"{store}/r1/stage1/hf", "run_id": "r1",
                                                              "stage": "stage1"}
    with pytest.raises(FileNotFoundError, match="not an ovpipe export"):
        exports.resolve(f"{store}/nowhere", store)
    with pytest.raises(FileNotFoundError, match="no exported stage"):
        exports.resolve("latest:r2", store)
