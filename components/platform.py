"""Cluster-only task settings in one place: they compile into the YAML and kfp.local ignores them."""
from kfp import dsl, kubernetes

from ovpipe.config import ClusterConfig
from ovpipe.storage import S3_ENV
from ovpipe.train.tracking import MLFLOW_ENV

_SECRETS = ClusterConfig()  # the Secret names every pod of a run gets by reference (recipe defaults)


def on_cluster(task: dsl.PipelineTask, cpu: str = "1", memory: str = "4G", gpu: int = 0,
               retries: int = 2) -> dsl.PipelineTask:
    """Resources, GPU + toleration, S3 and MLflow settings from Secrets (by reference), retries. The MLflow
    Secret is optional in the pod spec: a step that logs without it fails with the fix (train.tracking)."""
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    if gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpu)
        kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    kubernetes.use_secret_as_env(task, secret_name=_SECRETS.s3_secret, secret_key_to_env={k: k for k in S3_ENV})
    kubernetes.use_secret_as_env(task, secret_name=_SECRETS.mlflow_secret, secret_key_to_env={k: k for k in MLFLOW_ENV},
                                 optional=True)
    task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2)
    return task
