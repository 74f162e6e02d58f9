"""Run a training stage on Kubernetes: a pure builder of the job object and a thin submitter.

`build_job(recipe, stage, …)` returns a Kubeflow Trainer v2 `TrainJob` (trainer.kubeflow.org/v1alpha1,
the default) or a v1 Training Operator `PyTorchJob` (kubeflow.org/v1, legacy), as `train.cluster.api`
says. Every node of either runs the same command, `train_command()`:

    torchrun -m ovpipe.cli train --stage STAGE --recipe URI --store URI --run-id ID

It names no topology because torchrun reads each launch option it is not given from `PET_<OPTION>`
(torch/distributed/argparse_util.py), and both operators set those in every pod:
- Trainer v2's torch plugin: PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (the Job completion
  index), PET_MASTER_ADDR (<job>-node-0-0.<job>), PET_MASTER_PORT (29500); its webhook rejects a
  TrainJob that sets any of them itself (kubeflow/trainer pkg/runtime/framework/plugins/torch/torch.go).
- the Training Operator: PET_NNODES (replicas), PET_NPROC_PER_NODE (spec.nprocPerNode), PET_NODE_RANK,
  PET_MASTER_ADDR (<job>-master-0), PET_MASTER_PORT (kubeflow/training-operator
  pkg/controller.v1/pytorch/envvar.go and master.go).
So there is no shell wrapper and no master/worker variant, and locally the same command runs one node.

Where pods run, their image and the Secret / ConfigMap names come from the cluster profile
(ovpipe.profile); the job's shape (nodes, GPUs, memory) from the recipe. Secrets travel by reference
(secretKeyRef), never by value. This module imports no kfp; the kubernetes client is imported only by
`submit_and_wait`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from typing import Callable

import yaml

from ovpipe import profile as profiles
from ovpipe.config import ClusterConfig, Recipe, load_recipe
from ovpipe.profile import Profile
from ovpipe.steps import STAGES
from ovpipe.train.layout import check_layout

TRAINER_API = "trainer.kubeflow.org/v1alpha1"
PYTORCH_API = "kubeflow.org/v1"
PLURALS = {"TrainJob": "trainjobs", "PyTorchJob": "pytorchjobs"}
SUCCEEDED = {"TrainJob": "Complete", "PyTorchJob": "Succeeded"}  # condition types; both fail with "Failed"
POD_LABEL = {"TrainJob": "jobset.sigs.k8s.io/jobset-name", "PyTorchJob": "training.kubeflow.org/job-name"}
CONTAINER = {"TrainJob": "node", "PyTorchJob": "pytorch"}  # the names each operator looks for
PYTORCH_PORT = {"name": "pytorchjob-port", "containerPort": 23456}  # the Training Operator's defaults
RESTARTS = 3  # restarts of a whole stage (all its nodes) before it counts as failed
LOG_LINES, LOG_PODS = 50, 4  # log tail in a failure message: lines per pod, pods (failed ones first)
RUNTIME_FILE = "clustertrainingruntime.yaml"
_DEFAULTS = ClusterConfig()

# The TrainJob CRD allows 63 characters, but JobSet rejects a job whose longest pod name,
# <name>-node-0-<last node>-<5 random>, passes 63: 40 leaves room for any node count.
MAX_NAME_LEN = 40
SPEC_DIGEST = "ovpipe/spec-digest"
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def job_name(run_id: str, stage: str) -> str:
    """`ovpipe-<run_id>-<stage>` when that is a short DNS-1035 label; otherwise a lowercase slug of the
    run id, the stage and 8 hex digits of a hash of both, so two run ids never share a job name."""
    _check_stage(stage)
    plain = f"ovpipe-{run_id}-{stage}"
    if len(plain) <= MAX_NAME_LEN and _DNS1035.fullmatch(plain):
        return plain
    digest = hashlib.sha256(f"{run_id}\0{stage}".encode()).hexdigest()[:8]
    room = MAX_NAME_LEN - len(f"ovpipe--{stage}-{digest}")
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")[:room].strip("-")
    return "-".join(part for part in ("ovpipe", slug, stage, digest) if part)


def train_command(stage: str, *, run_id: str, store: str, recipe_uri: str) -> list[str]:
    """The one command every node runs (topology comes from PET_* variables; see the module doc)."""
    _check_stage(stage)
    return ["torchrun", "-m", "ovpipe.cli", "train", "--stage", stage, "--recipe", recipe_uri,
            "--store", store, "--run-id", run_id]


def build_trainjob(recipe: Recipe, stage: str, *, run_id: str, store: str, recipe_uri: str,
                   profile: Profile | None = None) -> dict:
    """A Trainer v2 TrainJob on the `cluster.runtime` ClusterTrainingRuntime (which adds /dev/shm, the
    placement and the restart policy: see `cluster_training_runtime`)."""
    c, profile = recipe.train.cluster, profile or profiles.from_environment()
    return {
        "apiVersion": TRAINER_API,
        "kind": "TrainJob",
        "metadata": _metadata(job_name(run_id, stage), profile.namespace, stage, run_id, store, recipe_uri),
        "spec": {
            "runtimeRef": {"name": c.runtime, "kind": "ClusterTrainingRuntime", "apiGroup": "trainer.kubeflow.org"},
            "activeDeadlineSeconds": c.timeout_s,
            "trainer": {
                "image": profile.image("gpu"),
                "command": train_command(stage, run_id=run_id, store=store, recipe_uri=recipe_uri),
                "numNodes": c.nodes,
                "numProcPerNode": c.gpus_per_node,  # an int32 >= 1 in the v1alpha1 CRD
                "resourcesPerNode": _resources(c, profile),
                "env": _env(profile),
            },
        },
    }


def build_pytorchjob(recipe: Recipe, stage: str, *, run_id: str, store: str, recipe_uri: str,
                     profile: Profile | None = None) -> dict:
    """A v1 PyTorchJob: Master (node 0) plus nodes-1 Workers, all with the same pod template."""
    c, profile = recipe.train.cluster, profile or profiles.from_environment()
    meta = _metadata(job_name(run_id, stage), profile.namespace, stage, run_id, store, recipe_uri)
    command = train_command(stage, run_id=run_id, store=store, recipe_uri=recipe_uri)

    def replica(count: int) -> dict:  # a fresh dict per replica type: YAML then has no anchors
        container = {"name": CONTAINER["PyTorchJob"], "image": profile.image("gpu"), "command": command,
                     "env": _env(profile), "ports": [dict(PYTORCH_PORT)], "resources": _resources(c, profile),
                     "volumeMounts": _mounts(), "securityContext": _security()}
        pod = {"containers": [container], **_pod_placement(profile)}
        return {"replicas": count, "restartPolicy": "OnFailure",
                "template": {"metadata": {"labels": dict(meta["labels"])}, "spec": pod}}

    replicas = {"Master": replica(1)}
    if c.nodes > 1:
        replicas["Worker"] = replica(c.nodes - 1)
    return {
        "apiVersion": PYTORCH_API,
        "kind": "PyTorchJob",
        "metadata": meta,
        "spec": {
            "nprocPerNode": str(c.gpus_per_node),  # a string in this CRD ("auto", "gpu" or a number)
            "runPolicy": {"backoffLimit": RESTARTS, "cleanPodPolicy": "None",  # keep pods: their logs
                          "activeDeadlineSeconds": c.timeout_s},
            "pytorchReplicaSpecs": replicas,
        },
    }


def build_job(recipe: Recipe, stage: str, profile: Profile | None = None, **kw) -> dict:
    """The job `recipe.train.cluster.api` asks for: build_trainjob or build_pytorchjob, placed by the
    cluster profile (default: the one this task was compiled with, profiles.from_environment). A layout
    that cannot fit nodes × gpus_per_node fails here, not minutes later in every pod."""
    kw["profile"] = profile
    c = recipe.train.cluster
    try:
        check_layout(recipe.train, c.nodes * c.gpus_per_node)
    except ValueError as exc:
        raise ValueError(f"train.cluster ({c.nodes} nodes × {c.gpus_per_node} GPUs): {exc}") from None
    builders = {"trainjob": build_trainjob, "pytorchjob": build_pytorchjob}
    if c.api not in builders:
        raise ValueError(f"train.cluster.api: {c.api!r} is not one of {sorted(builders)}")
    job = builders[c.api](recipe, stage, **kw)
    # What the job will do (image, command with its content-addressed recipe URI, placement): a rerun
    # attaches only to a job whose spec is the same, never to one another recipe or image started
    job["metadata"]["annotations"][SPEC_DIGEST] = hashlib.sha256(
        json.dumps(job["spec"], sort_keys=True).encode()).hexdigest()[:32]
    return job


def cluster_training_runtime(profile: Profile | None = None, name: str = _DEFAULTS.runtime) -> dict:
    """The ClusterTrainingRuntime our TrainJobs reference, for a cluster profile (default: the default
    profile): manifests/clustertrainingruntime.yaml and the chart's template render this object."""
    profile = profile or Profile()
    node = {
        "name": CONTAINER["TrainJob"],  # the torch plugin injects PET_* into the container named `node`
        "image": profile.image("gpu"),  # TrainJobs set their own image, command and resources
        "env": _env(profile),
        "volumeMounts": _mounts(),
        "securityContext": _security(),
    }
    return {
        "apiVersion": TRAINER_API,
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": name, "labels": {"trainer.kubeflow.org/framework": "torch",
                                              "app.kubernetes.io/part-of": "ovpipe"}},
        "spec": {
            # Chart 2.3.0's torch policy has no numProcPerNode (the API server would drop it): each
            # TrainJob sets spec.trainer.numProcPerNode instead.
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {
                # torchrun's static rendezvous cannot take one restarted node back into a running group,
                # so a failed pod fails its Job at once and JobSet restarts every node together.
                "failurePolicy": {"maxRestarts": RESTARTS},
                "replicatedJobs": [{
                    "name": "node",
                    "template": {
                        "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                        "spec": {"backoffLimit": 0, "template": {"spec": {
                            "restartPolicy": "Never",
                            "containers": [node],
                            **_pod_placement(profile),
                        }}},
                    },
                }],
            }},
        },
    }


def submit_and_wait(job: dict, *, timeout_s: float, poll_s: float, api_client=None, custom_api=None,
                    core_api=None, log: Callable[[str], None] = print) -> dict:
    """Create `job` (or attach to the one of that name: a rerun of a KFP task must not start a second
    one), poll it every `poll_s` seconds, log condition changes, and return the final object once it
    succeeded. Raise RuntimeError with the failing condition and the pods' log tails when it failed or
    `timeout_s` passed. `custom_api` / `core_api` (CustomObjectsApi / CoreV1Api) are built from
    `api_client`, by default from the in-cluster config or else the kubeconfig."""
    from kubernetes.client.exceptions import ApiException  # here: building jobs needs no kubernetes package

    if custom_api is None or core_api is None:
        from kubernetes import client

        api_client = api_client or _default_api_client()
        custom_api = custom_api or client.CustomObjectsApi(api_client)
        core_api = core_api or client.CoreV1Api(api_client)
    kind, name, namespace = job["kind"], job["metadata"]["name"], job["metadata"]["namespace"]
    group, version = job["apiVersion"].split("/")
    ref = {"group": group, "version": version, "namespace": namespace, "plural": PLURALS[kind]}
    label = f"{kind} {namespace}/{name}"
    deadline = time.monotonic() + timeout_s
    obj = _create_or_attach(custom_api, ref, job, label, deadline, poll_s, log, ApiException)
    seen: dict = {}
    while True:
        for cond in (obj.get("status") or {}).get("conditions") or []:
            key = (cond.get("status"), cond.get("reason"), cond.get("message"))
            if seen.get(cond.get("type")) != key:
                seen[cond.get("type")] = key
                log(f"{label}: {cond.get('type')}={cond.get('status')} {cond.get('reason') or ''}: "
                    f"{cond.get('message') or ''}")
        state, cond = job_state(obj, kind)
        if state == "succeeded":
            return obj
        if state == "failed":
            raise RuntimeError(_failure(f"{label} failed: {cond.get('reason')}: {cond.get('message')}",
                                        core_api, kind, name, namespace))
        if time.monotonic() >= deadline:
            raise RuntimeError(_failure(f"{label} did not finish within {timeout_s:g} s (it keeps running "
                                        "until its activeDeadlineSeconds)", core_api, kind, name, namespace))
        time.sleep(poll_s)
        try:
            obj = custom_api.get_namespaced_custom_object(name=name, **ref)
        except ApiException as exc:
            if exc.status in (429, 500, 502, 503, 504):  # a busy API server: ask again next poll
                log(f"{label}: status not read ({exc.status} {exc.reason}); retrying")
                continue
            raise RuntimeError(f"{label}: cannot read its status: {exc.status} {exc.reason}") from exc


def job_state(obj: dict, kind: str) -> tuple[str, dict | None]:
    """("failed" | "succeeded" | "running", the deciding condition) from a TrainJob's or PyTorchJob's status."""
    conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
    for cond_type, state in (("Failed", "failed"), (SUCCEEDED[kind], "succeeded")):
        cond = conditions.get(cond_type)
        if cond and cond.get("status") == "True":
            return state, cond
    return "running", None


def to_yaml(obj: dict) -> str:
    """Block-style YAML in the objects' own key order, without anchors."""
    return yaml.dump(obj, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


# ---------------------------------------------------------------- helpers


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {list(STAGES)}")


def _metadata(name: str, namespace: str, stage: str, run_id: str, store: str, recipe_uri: str) -> dict:
    # Label values allow 63 of [A-Za-z0-9_.-]; the exact run id is in an annotation.
    run_label = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id)[:63].strip("-_.")
    return {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/part-of": "ovpipe", "ovpipe/run-id": run_label, "ovpipe/stage": stage},
        "annotations": {"ovpipe/run-id": run_id, "ovpipe/store": store, "ovpipe/recipe": recipe_uri},
    }


def _env(profile: Profile) -> list[dict]:
    """Unbuffered output (the log tail of a crash is complete), then what every KFP task gets too: the
    object store's credentials and the published settings, by reference. No PET_*: the operators own those."""
    return [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "HOME", "value": "/tmp"},
            *profiles.pod_env(profile)]


def _resources(c: ClusterConfig, profile: Profile) -> dict:
    # No CPU limit: a throttled data loader would starve the GPUs; memory and GPUs are capped.
    gpu = profile.gpu.resource
    return {"requests": {"cpu": c.cpu, "memory": c.memory, gpu: c.gpus_per_node},
            "limits": {"memory": c.memory, gpu: c.gpus_per_node}}


def _security() -> dict:
    """The images run as uid 1000 and need no privilege (GPUs come through the device plugin). The root
    filesystem is read-only: caches (HOME) and the checkpoint scratch live on the /tmp volume."""
    return {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def _mounts() -> list[dict]:
    return [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "scratch", "mountPath": "/tmp"}]


def _pod_placement(profile: Profile) -> dict:
    """A training node's volumes, node selector, tolerations and pull secrets (profile.placement.train)."""
    place = profile.placement["train"]
    selector = profiles.node_selector(profile, "train")
    # NCCL and DataLoader workers need more than the runtime's 64 MB /dev/shm
    # /tmp: the node's disk (checkpoint scratch can be tens of GB), the only writable place besides /dev/shm
    pod: dict = {"volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": profile.shm_size}},
                             {"name": "scratch", "emptyDir": {}}]}
    if selector:
        pod["nodeSelector"] = selector
    if place.tolerations:
        pod["tolerations"] = [dict(t) for t in place.tolerations]
    if profile.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in profile.image_pull_secrets]
    return pod


def _default_api_client():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _create_or_attach(api, ref: dict, job: dict, label: str, deadline: float, poll_s: float, log,
                      ApiException) -> dict:
    """Create the job. If one of that name exists, attach to it, unless it failed: then delete it and
    create it again (a retried task should train again, not repeat the old failure)."""
    name = job["metadata"]["name"]

    def create() -> dict | None:  # None: the name is taken
        try:
            obj = api.create_namespaced_custom_object(body=job, **ref)
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise RuntimeError(f"{label}: not created: {exc.status} {exc.reason}: {exc.body}") from exc
        log(f"{label}: created")
        return obj

    obj = create()
    if obj is not None:
        return obj
    existing = api.get_namespaced_custom_object(name=name, **ref)
    state, _ = job_state(existing, job["kind"])
    theirs = ((existing.get("metadata") or {}).get("annotations") or {}).get(SPEC_DIGEST)
    ours = job["metadata"].get("annotations", {}).get(SPEC_DIGEST)
    if state != "failed" and theirs != ours:
        raise RuntimeError(f"{label}: a {state} job of that name exists but was made from another spec or recipe "
                           f"({SPEC_DIGEST} {theirs} != {ours}); it is left alone: delete it, or use another run id")
    if state != "failed":
        log(f"{label}: already exists ({state}); attaching to it")
        return existing
    log(f"{label}: exists and failed; deleting it to run the stage again")
    api.delete_namespaced_custom_object(name=name, propagation_policy="Foreground", **ref)
    while (obj := create()) is None:  # the name frees once the old job and its pods are gone
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{label}: the failed job of that name was not gone in time to create it again")
        time.sleep(poll_s)
    return obj


def _failure(headline: str, core_api, kind: str, name: str, namespace: str) -> str:
    """The headline plus the last LOG_LINES lines of up to LOG_PODS of the job's pods, failed ones first.
    Log trouble is reported inline and never hides the failure itself."""
    selector = f"{POD_LABEL[kind]}={name}"
    lines = [headline]
    try:
        pods = list(core_api.list_namespaced_pod(namespace, label_selector=selector).items)
    except Exception as exc:  # any client error: the failure itself must still be reported
        return "\n".join(lines + [f"(pods not listed: {exc})"])
    if not pods:
        return "\n".join(lines + [f"(no pods with {selector})"])
    pods.sort(key=lambda p: (getattr(p.status, "phase", None) != "Failed", p.metadata.name))
    for pod in pods[:LOG_PODS]:
        try:
            text = core_api.read_namespaced_pod_log(pod.metadata.name, namespace, container=CONTAINER[kind],
                                                    tail_lines=LOG_LINES)
        except Exception as exc:
            text = f"(log not read: {exc})"
        lines.append(f"--- pod {pod.metadata.name} ({getattr(pod.status, 'phase', '?')}), last {LOG_LINES} lines:")
        lines.append(str(text).rstrip())
    if len(pods) > LOG_PODS:
        lines.append(f"({len(pods) - LOG_PODS} more pods: kubectl logs -n {namespace} -l {selector})")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovpipe.train.launch",
                                     description="Print the job a training stage would submit.")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="print the job a training stage would submit, as YAML")
    r.add_argument("--recipe", required=True, help="recipe path or URI")
    r.add_argument("--stage", required=True, choices=STAGES)
    r.add_argument("--run-id", required=True)
    r.add_argument("--store", required=True, help="store URI the pods read and write")
    r.add_argument("--recipe-uri", default=None, help="recipe URI the pods read (default: --recipe)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    r.add_argument("--profile", default=profiles.DEFAULT, help="cluster profile (default: %(default)s)")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, args.set)
    job = build_job(recipe, args.stage, profiles.load(args.profile), run_id=args.run_id, store=args.store,
                    recipe_uri=args.recipe_uri or args.recipe)
    sys.stdout.write(to_yaml(job))
    return 0


if __name__ == "__main__":
    sys.exit(main())
