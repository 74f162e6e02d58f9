"""Cluster-only task settings in one place: they compile into the YAML and kfp.local ignores them."""
from kfp import dsl, kubernetes

S3_SECRET = "ovpipe-s3"  # keys: OVPIPE_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
S3_KEYS = ("OVPIPE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def on_cluster(task: dsl.PipelineTask, cpu: str = "1", memory: str = "4G", gpu: int = 0,
               retries: int = 2) -> dsl.PipelineTask:
    """Resources, GPU + toleration, S3 credentials from a Secret (by reference), retries."""
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    if gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpu)
        kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env={k: k for k in S3_KEYS})
    task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2)
    return task
