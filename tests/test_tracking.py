"""MLflow preflight: a step that logs fails before its work when its tracking server is missing,
unreachable, or does not hold the run it logs into."""
import http.server
import json
import os
import socket
import threading
import time

import pytest

from ovpipe import storage
from ovpipe.config import load_recipe
from ovpipe.sharded import Context
from ovpipe.train import tracking


@pytest.fixture
def file_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return str(tmp_path / "store")


def test_a_pod_without_a_tracking_uri_is_told_the_fix(file_store, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    with pytest.raises(tracking.TrackingError, match="MLFLOW_TRACKING_URI is not set in this pod.*config_map"):
        tracking.preflight(file_store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:" + file_store + "/mlruns")  # an explicit choice is kept
    assert tracking.preflight(file_store).startswith("file:")


def test_an_unreachable_server_fails_in_seconds(file_store, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        tracking.preflight(file_store)
    assert time.perf_counter() - t0 < 30


def test_a_server_that_answers_passes(file_store, monkeypatch):
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_port}")
        assert tracking.preflight(file_store) == f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_a_run_id_from_another_store_is_refused(file_store):
    tracker = tracking.Tracker(file_store, "r", "sft", {"x": 1})
    assert tracking.preflight(file_store, tracker.run_id)
    with pytest.raises(tracking.TrackingError, match="is not in the tracking store"):
        tracking.preflight(file_store, "0123456789abcdef0123456789abcdef")


def test_eval_checks_the_stage_run_before_lmms_eval(file_store, monkeypatch):
    from ovpipe.evaluate import step

    def never(*args, **kwargs):
        raise AssertionError("lmms-eval ran although the tracking store cannot take its scores")

    monkeypatch.setattr(step, "run_lmms_eval", never)
    monkeypatch.setattr(step, "untrained_export", never)
    os.makedirs(os.path.join(file_store, "x", "sft", "hf"))
    storage.write_text(os.path.join(file_store, "x", "sft", "hf", "ovpipe.json"), "{}")
    storage.write_text(os.path.join(file_store, "x", "sft", "manifest.json"),
                       json.dumps({"metrics": {"mlflow_run_id": "0123456789abcdef0123456789abcdef"}}))
    with pytest.raises(tracking.TrackingError, match="0123456789abcdef"):
        step.run(Context(load_recipe("configs/recipes/tiny.yaml"), file_store, "x"))
