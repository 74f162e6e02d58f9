"""Cluster settings in one place: the cluster profile (OVPIPE_PROFILE at compile time; default
configs/cluster/default.yaml) gives each component its image and each task its placement, GPU, Secrets and
ConfigMap by reference, and retries. They compile into the YAML; kfp.local ignores them."""
import os

from kfp import dsl, kubernetes

from ovpipe import profile as profiles
from ovpipe import steps

# Unset: the default profile's values (configs/cluster/default.yaml holds the same; a task container, which
# imports this module too, has no configs/ folder).
PROFILE = profiles.load(os.environ[profiles.ENV_FILE]) if os.environ.get(profiles.ENV_FILE) else profiles.Profile()
STEPS = steps  # the step table, for pipelines/ (which import components only)
COMPILED = profiles.compiled_dir(PROFILE)  # where pipelines/compile.py writes this profile's YAMLs


def image(step_or_family: str) -> str:
    """The image a step's component runs in (the step table's family), or a family's."""
    family = steps.BY_NAME[step_or_family].image if step_or_family in steps.BY_NAME else step_or_family
    return PROFILE.image(family)


def on_cluster(task: dsl.PipelineTask, cpu: str = "1", memory: str = "4G", gpu: int = 0, retries: int = 2,
               profile_env: bool = False) -> dsl.PipelineTask:
    """Resources; GPU, node selector and tolerations of its placement (gpu or data); the env every pod
    reads by reference (profiles.env_refs); retries. profile_env: the task builds pods itself (training),
    so it carries the profile (OVPIPE_PROFILE_JSON: names only, no secret values)."""
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    placement = "gpu" if gpu else "data"
    if gpu:
        task.set_accelerator_type(PROFILE.gpu.resource).set_accelerator_limit(gpu)
    for key, value in profiles.node_selector(PROFILE, placement).items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for t in PROFILE.placement[placement].tolerations:
        kubernetes.add_toleration(task, key=t.get("key"), operator=t.get("operator"), value=t.get("value"),
                                  effect=t.get("effect"), toleration_seconds=t.get("tolerationSeconds"))
    groups: dict = {}
    for env, kind, name, key, optional in profiles.env_refs(PROFILE):
        groups.setdefault((kind, name, optional), {})[key] = env
    for (kind, name, optional), keys in groups.items():
        use = kubernetes.use_secret_as_env if kind == "secret" else kubernetes.use_config_map_as_env
        use(task, name, keys, optional=optional)
    if PROFILE.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(PROFILE.image_pull_secrets))
    if profile_env:
        task.set_env_variable(profiles.ENV_JSON, PROFILE.to_json())
    task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2)
    return task
