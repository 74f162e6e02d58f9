"""MLflow tracking of a training stage: params = the resolved recipe, metrics per step, artifacts.

The tracking URI comes from MLFLOW_TRACKING_URI (the cluster's server); without it, a file store in
the run's local folder (or ./mlruns when the store is remote). One MLflow run per stage, tagged with
the ovpipe run id and stage; its id is saved with each checkpoint so a resumed stage logs into the
same MLflow run.
"""
from __future__ import annotations

import os

from ovpipe import storage

EXPERIMENT = "ovpipe"


def tracking_uri(store: str) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    base = "mlruns" if storage.is_remote(store) else os.path.join(store, "mlruns")
    return "file:" + os.path.abspath(base)


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
        import mlflow

        uri = tracking_uri(store)
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow-skinny refuses file stores otherwise
        self.client = mlflow.MlflowClient(tracking_uri=uri)
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
