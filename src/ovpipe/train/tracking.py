"""MLflow tracking of a training stage: params = the resolved recipe, metrics per step, artifacts.

The tracking URI comes from MLFLOW_TRACKING_URI (the cluster's server, from the Secret the pods get
by reference); without it, a file store in the run's local folder (or ./mlruns when the store is
remote). In a Kubernetes pod an unset URI is an error: a file store there dies with the pod, and the
eval step would then log to a run id that exists nowhere. One MLflow run per stage, tagged with the
ovpipe run id and stage; its id is saved with each checkpoint so a resumed stage logs into the same
MLflow run. `preflight` runs before a stage's or eval's work, so an unreachable server fails the step
in seconds, not after hours of training.
"""
from __future__ import annotations

import os

from ovpipe import storage
from ovpipe.runtime import on_kubernetes

EXPERIMENT = "ovpipe"
# The variables a step reads: the URI from the ConfigMap the chart publishes, credentials from the
# profile's mlflow_secret (ovpipe.profile.env_refs).
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


class TrackingError(RuntimeError):
    """The tracking server is missing, unreachable, or does not hold the run a step logs into."""


def tracking_uri(store: str) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if on_kubernetes():
        raise TrackingError("MLFLOW_TRACKING_URI is not set in this pod: install the chart (charts/ovpipe publishes "
                            "it in the ConfigMap the cluster profile names, config_map, key MLFLOW_TRACKING_URI, e.g. "
                            "http://ovpipe-mlflow.<ns>:5000) in the namespace of the run")
    base = "mlruns" if storage.is_remote(store) else os.path.join(store, "mlruns")
    return "file:" + os.path.abspath(base)


def _client(uri: str):
    import mlflow

    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow-skinny refuses file stores otherwise
    return mlflow.MlflowClient(tracking_uri=uri)


def _health(uri: str, timeout: float = 10.0, tries: int = 3) -> None:
    """An MLflow server answers GET /health with OK; a few tries, seconds apart (a server restarting)."""
    import time
    import urllib.error
    import urllib.request

    last = None
    for i in range(tries):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(2 * (i + 1) if i + 1 < tries else 0)
    raise TrackingError(f"MLflow tracking server {uri} is unreachable ({last}); check MLFLOW_TRACKING_URI "
                        "and the server (the chart's mlflow Service) before rerunning")


def preflight(store: str, mlflow_run_id: str | None = None) -> str:
    """Before the work: the tracking store answers and, when given, holds `mlflow_run_id`. Returns its URI."""
    uri = tracking_uri(store)
    if uri.startswith(("http://", "https://")):
        _health(uri)
    if mlflow_run_id:
        try:
            _client(uri).get_run(mlflow_run_id)
        except Exception as exc:  # mlflow raises MlflowException (or a transport error) for a missing run
            raise TrackingError(f"MLflow run {mlflow_run_id} is not in the tracking store {uri}: the stage logged "
                                "to another store (is MLFLOW_TRACKING_URI the same as where it trained?)") from exc
    return uri


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:6000]
    return out


class Tracker:
    """A thin MLflow run handle; every call is a no-op on ranks other than 0 (`enabled=False`)."""

    def __init__(self, store: str, run_id: str, stage: str, recipe: dict, mlflow_run_id: str | None = None,
                 enabled: bool = True):
        self.enabled = enabled
        self.run_id = mlflow_run_id
        if not enabled:
            return
        self.client = _client(tracking_uri(store))
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(EXPERIMENT)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(EXPERIMENT)
            run = self.client.create_run(exp_id, run_name=f"{run_id}-{stage}",
                                         tags={"ovpipe.run_id": run_id, "ovpipe.stage": stage})
            self.run_id = run.info.run_id
            params = flatten(recipe)
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])

    def metrics(self, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])

    def artifact(self, path: str) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, path)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self.client.set_terminated(self.run_id, status)
