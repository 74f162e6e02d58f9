"""The cluster launcher: job objects (golden files, CRD schemas, one command per job), the kustomize
base, and submit_and_wait against fake Kubernetes APIs. Fast: no cluster, no network."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from ovpipe import deploy
from ovpipe import profile as profiles
from ovpipe.config import ClusterConfig, load_recipe
from ovpipe.train import launch
from tests.helpers import tool

ROOT = Path(__file__).resolve().parents[1]
CRDS = Path(__file__).resolve().parents[2] / "shared" / "crds"  # ../shared/crds beside the repo
GOLDEN = Path(__file__).resolve().parent / "golden"
MANIFESTS = ROOT / "manifests"
KW = {"run_id": "r1", "store": "s3://ovpipe", "recipe_uri": "s3://ovpipe/r1/_recipes/abc.yaml"}
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(str(ROOT / "configs" / "recipes" / "ov15-8b.yaml"))


def with_cluster(recipe, **changes):
    cluster = dataclasses.replace(recipe.train.cluster, **changes)
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, cluster=cluster))


PROFILES = ("default", "h100-pool")  # configs/cluster/


def all_jobs(recipe, profile=None):
    """(label, job) for every API × stage × node count × profile the schema tests cover."""
    for p in [profile] if profile else [profiles.load(n) for n in PROFILES]:
        for api in ("trainjob", "pytorchjob"):
            for stage in launch.STAGES:
                for nodes in (1, 4):
                    job = launch.build_job(with_cluster(recipe, api=api, nodes=nodes), stage, p, **KW)
                    yield f"{p.name}-{api}-{stage}-{nodes}", job


# ---------------------------------------------------------------- golden files


@pytest.mark.parametrize("api,nodes,filename", [("trainjob", 1, "trainjob_mid.yaml"),
                                                ("pytorchjob", 2, "pytorchjob_mid.yaml")])
def test_job_matches_golden_file(recipe, api, nodes, filename):
    text = launch.to_yaml(launch.build_job(with_cluster(recipe, api=api, nodes=nodes), "mid", **KW))
    path = GOLDEN / filename
    if os.environ.get("OVPIPE_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: create it with OVPIPE_UPDATE_GOLDEN=1"
    want = path.read_text()
    diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), str(path), "built"))
    assert text == want, f"job differs from the golden file (OVPIPE_UPDATE_GOLDEN=1 rewrites it):\n{diff}"


def test_build_job_dispatches_on_api(recipe):
    assert launch.build_job(with_cluster(recipe, api="trainjob"), "sft", **KW)["kind"] == "TrainJob"
    assert launch.build_job(with_cluster(recipe, api="pytorchjob"), "sft", **KW)["kind"] == "PyTorchJob"
    with pytest.raises(ValueError, match="api"):
        launch.build_job(with_cluster(recipe, api="mpijob"), "sft", **KW)
    with pytest.raises(ValueError, match="stage"):
        launch.build_job(recipe, "pretrain", **KW)


@pytest.mark.parametrize("nodes, gpus, match", [
    (3, 8, r"global_batch \(512\) must be a multiple of micro_batch × data-parallel size \(1 × 6\)"),
    (1, 2, r"2 processes cannot hold tensor_parallel=4"),
])
def test_a_layout_the_cluster_cannot_fit_fails_before_submission(recipe, nodes, gpus, match):
    for api in ("trainjob", "pytorchjob"):
        with pytest.raises(ValueError, match=rf"train.cluster \({nodes} nodes × {gpus} GPUs\): .*{match}"):
            launch.build_job(with_cluster(recipe, api=api, nodes=nodes, gpus_per_node=gpus), "mid", **KW)


# ---------------------------------------------------------------- CRD schemas


def crd_dir() -> Path:
    """The Kubeflow CRDs are not vendored here (their schemas are Kubeflow's): the workspace provides them
    beside the repository. A checkout without them skips the schema checks, loudly."""
    crds = Path(os.environ.get("OVPIPE_CRDS", CRDS))
    if not crds.is_dir():
        pytest.skip(f"no CRD schemas at {crds} (set OVPIPE_CRDS or put them in ../shared/crds)")
    return crds


@functools.lru_cache(maxsize=None)
def validator(filename: str, version: str) -> jsonschema.Draft7Validator:
    docs = [d for d in yaml.load_all((crd_dir() / filename).read_text(), Loader=_Loader) if d]
    (crd,) = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = to_jsonschema(ver["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def to_jsonschema(schema: dict) -> dict:
    """A CRD's openAPIV3Schema as JSON Schema, judged like the API server with strict field validation
    (kubectl's default): unknown fields are errors. int-or-string fields take either; other
    x-kubernetes-* keywords (list types, CEL rules) are not checked here."""
    out = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default", "format", "nullable"):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_jsonschema(sub) for sub in value]
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


SCHEMAS = {"TrainJob": ("trainer.kubeflow.org_trainjobs.yaml", "v1alpha1"),
           "ClusterTrainingRuntime": ("trainer.kubeflow.org_clustertrainingruntimes.yaml", "v1alpha1"),
           "PyTorchJob": ("kubeflow.org_pytorchjobs.yaml", "v1")}


def schema_errors(obj: dict) -> list[str]:
    assert obj["apiVersion"].endswith("/" + SCHEMAS[obj["kind"]][1])
    errors = validator(*SCHEMAS[obj["kind"]]).iter_errors(obj)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def name_errors(obj: dict) -> list[str]:
    """The TrainJob CRD's own rules (RFC 1035 label, <= 63) and JobSet's on the longest pod name."""
    name, problems = obj["metadata"]["name"], []
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        problems.append(f"metadata.name {name!r} is not an RFC 1035 label of <= 63 characters")
    nodes = obj["spec"].get("trainer", {}).get("numNodes") if obj["kind"] == "TrainJob" else None
    if isinstance(nodes, int):
        longest_pod = f"{name}-node-0-{nodes - 1}-abcde"
        if len(longest_pod) > 63:
            problems.append(f"pod name {longest_pod!r} is longer than 63")
    return problems


def test_every_job_and_the_runtime_validate_against_their_crds(recipe):
    objects = dict(all_jobs(recipe)) | {f"runtime-{n}": launch.cluster_training_runtime(profiles.load(n))
                                        for n in PROFILES}
    problems = [f"{label}: {p}" for label, obj in objects.items() for p in schema_errors(obj) + name_errors(obj)]
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize("breakage", ["numNodes is a list", "unknown field", "nprocPerNode is an int",
                                      "runtimeRef missing", "bad quantity", "name too long"])
def test_the_validator_rejects_broken_objects(recipe, breakage):
    trainjob = launch.build_trainjob(recipe, "mid", **KW)
    if breakage == "numNodes is a list":
        trainjob["spec"]["trainer"]["numNodes"] = [4]
        broken = trainjob
    elif breakage == "unknown field":  # e.g. the numProcPerNode older runtimes had in their torch policy
        broken = launch.cluster_training_runtime()
        broken["spec"]["mlPolicy"]["torch"]["numProcPerNode"] = 8
    elif breakage == "nprocPerNode is an int":
        broken = launch.build_pytorchjob(recipe, "mid", **KW)
        broken["spec"]["nprocPerNode"] = 8
    elif breakage == "runtimeRef missing":
        del trainjob["spec"]["runtimeRef"]
        broken = trainjob
    elif breakage == "bad quantity":
        trainjob["spec"]["trainer"]["resourcesPerNode"]["limits"]["memory"] = "lots"
        broken = trainjob
    else:
        trainjob["metadata"]["name"] = "x" * 64
        broken = trainjob
    assert schema_errors(broken) + name_errors(broken), f"{breakage}: passed validation"


@pytest.mark.parametrize("run_id", ["r1", "R1", "ov15-8b", "2025_09_30 sweep/lr=1e-4", "x" * 200, "-", "ü"])
def test_job_names_are_short_dns_labels_and_distinct(run_id):
    names = {launch.job_name(run_id, stage) for stage in launch.STAGES}
    assert len(names) == len(launch.STAGES)
    for name in names:
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= launch.MAX_NAME_LEN, name
        assert len(f"{name}-node-0-{10**6 - 1}-abcde") <= 63  # JobSet's pod-name check, a million nodes
    assert launch.job_name(run_id, "mid") == launch.job_name(run_id, "mid")
    assert launch.job_name("r1", "mid") == "ovpipe-r1-mid"
    assert launch.job_name("R1", "mid") != launch.job_name("r1", "mid")  # case is not silently dropped
    assert launch.job_name("x" * 200, "mid") != launch.job_name("x" * 201, "mid")


# ---------------------------------------------------------------- one command, secrets by reference


def containers(job: dict) -> list[dict]:
    """The container spec of every pod kind the job makes (TrainJob: one template for all nodes)."""
    if job["kind"] == "TrainJob":
        return [job["spec"]["trainer"]]
    return [r["template"]["spec"]["containers"][0] for r in job["spec"]["pytorchReplicaSpecs"].values()]


def test_every_node_runs_one_command_with_the_stage_inputs(recipe):
    for label, job in all_jobs(recipe):
        stage = job["metadata"]["labels"]["ovpipe/stage"]
        want = launch.train_command(stage, **KW)
        for c in containers(job):
            assert c["command"] == want, label
            assert "args" not in c, label
            assert c["env"] == containers(job)[0]["env"], label
        assert want[:4] == ["torchrun", "-m", "ovpipe.cli", "train"]
        pairs = dict(zip(want[4::2], want[5::2]))
        assert pairs == {"--stage": stage, "--recipe": KW["recipe_uri"], "--store": KW["store"],
                         "--run-id": KW["run_id"]}, label
    job = launch.build_pytorchjob(with_cluster(recipe, nodes=4), "mid", **KW)
    assert {k: v["replicas"] for k, v in job["spec"]["pytorchReplicaSpecs"].items()} == {"Master": 1, "Worker": 3}
    single = launch.build_pytorchjob(with_cluster(recipe, nodes=1), "mid", **KW)
    assert list(single["spec"]["pytorchReplicaSpecs"]) == ["Master"]


def test_topology_is_left_to_the_operators(recipe):
    """Trainer's webhook rejects a TrainJob that sets PET_*; both operators set them."""
    for label, job in all_jobs(recipe):
        for c in containers(job):
            names = {e["name"] for e in c["env"]}
            assert not {n for n in names if n.startswith("PET_") or n in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}, label
            assert not any("$(" in part or "$" in part for part in c["command"]), label  # no shell, no expansion


def test_secrets_only_by_reference(recipe, monkeypatch):
    values = {"AWS_ACCESS_KEY_ID": "AKIAFAKEKEYID0000", "AWS_SECRET_ACCESS_KEY": "fake-secret-key-value",
              "OVPIPE_S3_ENDPOINT": "http://fake-endpoint:8333", "MLFLOW_TRACKING_URI": "http://fake-mlflow:5000",
              "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-password"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    team = profiles.from_dict({"s3_secret": "team-s3", "mlflow_secret": "team-mlflow", "config_map": "team-config",
                               "s3_secret_keys": {"AWS_ACCESS_KEY_ID": "accesskey",
                                                  "AWS_SECRET_ACCESS_KEY": "secretkey"}})
    jobs = list(all_jobs(recipe, team))
    texts = [launch.to_yaml(job) for _, job in jobs] + [launch.to_yaml(launch.cluster_training_runtime(team))]
    for text in texts:
        for value in values.values():
            assert value not in text
    for label, job in jobs:
        for c in containers(job):
            env = {e["name"]: e for e in c["env"]}
            assert all("value" not in env[k] for k in values), f"{label}: a secret has a value"
            assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "team-s3", "key": "accesskey"}
            assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "team-s3", "key": "secretkey"}
            for key in profiles.CONFIG_KEYS:
                assert env[key]["valueFrom"]["configMapKeyRef"] == {"name": "team-config", "key": key,
                                                                    "optional": True}, label
            for key in profiles.MLFLOW_CREDENTIALS:
                assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "team-mlflow", "key": key,
                                                                 "optional": True}, label


def test_jobs_follow_the_profile(recipe):
    pool = profiles.load("h100-pool")
    for label, job in all_jobs(recipe, pool):
        assert job["metadata"]["namespace"] == "ml-research", label
        for c in containers(job):
            assert c["image"] == pool.image("gpu") and "@sha256:" in c["image"], label
        if job["kind"] == "PyTorchJob":
            pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
            assert pod["nodeSelector"] == {"node-pool": "h100",
                                           "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
            dedicated = {"key": "dedicated", "operator": "Equal", "value": "h100", "effect": "NoSchedule"}
            assert dedicated in pod["tolerations"]
            assert pod["imagePullSecrets"] == [{"name": "registry-example-org"}]
            assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == "128Gi"


# ---------------------------------------------------------------- manifests/


def test_manifests_are_generated_from_the_profiles():
    tree = deploy.manifest_tree(deploy.OVERLAYS)
    stale = [rel for rel, text in tree.items()
             if not (MANIFESTS / rel).is_file() or (MANIFESTS / rel).read_text() != text]
    assert not stale, f"manifests/{stale} stale: regenerate with `python -m ovpipe.deploy manifests`"
    extra = {str(p.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("*.yaml")} - set(tree)
    assert not extra, f"hand-written manifests beside the generated ones: {extra}"
    runtime = yaml.safe_load((MANIFESTS / "base" / launch.RUNTIME_FILE).read_text())
    assert runtime == launch.cluster_training_runtime()
    assert runtime["metadata"]["name"] == ClusterConfig().runtime
    node = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]
    assert node["name"] == "node"
    assert node["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    (container,) = node["template"]["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "node"
    assert container["env"][2:] == profiles.pod_env(profiles.Profile())


def test_the_role_allows_exactly_what_the_launcher_calls(recipe):
    """Every call submit_and_wait makes (create, poll, delete a failed job, list pods, read logs), for both
    job kinds, is allowed by the Role, and every rule of the Role is used by one of them."""
    verbs = {"create_namespaced_custom_object": "create", "get_namespaced_custom_object": "get",
             "delete_namespaced_custom_object": "delete", "list_namespaced_pod": "list",
             "read_namespaced_pod_log": "get"}
    used = set()

    class Recording:
        def __init__(self, inner, core=False):
            self.inner, self.core = inner, core

        def __getattr__(self, name):
            def call(*args, **kw):
                if self.core:
                    resource = "pods/log" if name == "read_namespaced_pod_log" else "pods"
                    used.add(("", resource, verbs[name]))
                else:
                    used.add((kw["group"], kw["plural"], verbs[name]))
                return getattr(self.inner, name)(*args, **kw)
            return call

    for api in ("trainjob", "pytorchjob"):
        job = launch.build_job(with_cluster(recipe, api=api), "mid", profiles.Profile(), **KW)
        failed = {**job, "status": {"conditions": [cond("Failed")]}}
        custom = FakeCustomObjects([{"conditions": [cond("Failed")]}], existing=failed)  # replaced, fails again
        with pytest.raises(RuntimeError):
            launch.submit_and_wait(job, custom_api=Recording(custom), core_api=Recording(FakeCore([("p-0", "Failed")]),
                                   core=True), timeout_s=5, poll_s=0, log=lambda _: None)
    allowed = {(g, r, v) for rule in deploy.ROLE_RULES for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert used == allowed, f"called but not allowed: {used - allowed}; allowed but never called: {allowed - used}"


@pytest.mark.parametrize("folder, name", [("base", "default"), ("overlays/h100-pool", "h100-pool")])
def test_kustomize_renders_each_profile(folder, name):
    res = subprocess.run([tool("kubectl"), "kustomize", str(MANIFESTS / folder)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    docs = sorted((d for d in yaml.safe_load_all(res.stdout) if d), key=lambda d: d["kind"])
    want = sorted(deploy.objects(profiles.load(name)), key=lambda d: d["kind"])
    assert docs == want  # kustomize added nothing (no namespace on the cluster-scoped runtime)


# ---------------------------------------------------------------- submit_and_wait with fake APIs


def cond(type_, status="True", reason="Reason", message="message"):
    return {"type": type_, "status": status, "reason": reason, "message": message}


class FakeCustomObjects:
    """CustomObjectsApi holding one object; each get applies the next of `statuses` (the last repeats)."""

    def __init__(self, statuses, existing=None, create_error=None):
        self.statuses, self.obj, self.create_error = list(statuses), existing, create_error
        self.created, self.deleted, self.calls = [], [], []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
        self.calls.append(("create", group, version, namespace, plural))
        if self.create_error:
            raise self.create_error
        if self.obj is not None:
            raise ApiException(status=409, reason="Conflict")
        self.created.append(body)
        self.obj = {**body, "status": {}}
        return self.obj

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self.calls.append(("get", group, version, namespace, plural))
        assert self.obj is not None and name == self.obj["metadata"]["name"]
        if self.statuses:
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            self.obj = {**self.obj, "status": status}
        return self.obj

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self.deleted.append((name, kw))
        self.obj = None


class FakeCore:
    def __init__(self, pods):
        self.pods, self.selectors, self.log_reads = pods, [], []

    def list_namespaced_pod(self, namespace, label_selector=None, **kw):
        self.selectors.append(label_selector)
        return SimpleNamespace(items=[SimpleNamespace(metadata=SimpleNamespace(name=n), status=SimpleNamespace(phase=p))
                                      for n, p in self.pods])

    def read_namespaced_pod_log(self, name, namespace, container=None, tail_lines=None, **kw):
        self.log_reads.append((name, container, tail_lines))
        return f"step 10 loss 2.1\nTraceback: CUDA out of memory on {name}\n"


@pytest.fixture
def trainjob(recipe):
    return launch.build_trainjob(recipe, "mid", **KW)


def submit(job, custom, core=None, **kw):
    logs = []
    kw = {"timeout_s": 5, "poll_s": 0} | kw
    result = launch.submit_and_wait(job, custom_api=custom, core_api=core or FakeCore([]), log=logs.append, **kw)
    return result, logs


def test_submit_success(trainjob):
    custom = FakeCustomObjects([{"conditions": [cond("Created", reason="JobsCreationSucceeded")]},
                                {"conditions": [cond("Created", reason="JobsCreationSucceeded")]},
                                {"conditions": [cond("Created", reason="JobsCreationSucceeded"),
                                                cond("Complete", reason="JobSetCompleted")]}])
    result, logs = submit(trainjob, custom)
    assert result["status"]["conditions"][-1]["type"] == "Complete"
    assert custom.created == [trainjob]
    assert ("create", "trainer.kubeflow.org", "v1alpha1", "kubeflow", "trainjobs") in custom.calls
    assert any("created" in line for line in logs)
    assert sum("Created=True" in line for line in logs) == 1  # logged once, on change
    assert any("Complete=True JobSetCompleted" in line for line in logs)


def test_submit_failure_raises_with_reason_and_log_tails(trainjob):
    name = trainjob["metadata"]["name"]
    custom = FakeCustomObjects([{"conditions": [cond("Failed", reason="FailedIndexes",
                                                     message="jobset failed: node-0 exited 1")]}])
    core = FakeCore([(f"{name}-node-0-1-abcde", "Running"), (f"{name}-node-0-0-fghij", "Failed")])
    with pytest.raises(RuntimeError) as info:
        submit(trainjob, custom, core)
    text = str(info.value)
    assert name in text and "FailedIndexes" in text and "node-0 exited 1" in text
    assert f"CUDA out of memory on {name}-node-0-0-fghij" in text
    assert text.index("node-0-0-fghij") < text.index("node-0-1-abcde")  # the failed pod first
    assert core.selectors == [f"jobset.sigs.k8s.io/jobset-name={name}"]
    assert {(c, n) for _, c, n in core.log_reads} == {("node", 50)}


def test_submit_attaches_to_an_existing_job(trainjob):
    running = {**trainjob, "status": {"conditions": [cond("Created")]}}
    custom = FakeCustomObjects([{"conditions": [cond("Created")]}, {"conditions": [cond("Complete")]}],
                               existing=running)
    result, logs = submit(trainjob, custom)
    assert custom.created == [] and custom.deleted == []
    assert result["status"]["conditions"][-1]["type"] == "Complete"
    assert any("attaching" in line for line in logs)


def test_submit_never_attaches_to_a_job_of_another_spec(recipe):
    """Same name, other spec (another recipe or image): a live job is left alone and the task fails saying
    so; the same spec attaches."""
    job = launch.build_job(recipe, "mid", **KW)
    other = launch.build_job(recipe, "mid", **{**KW, "recipe_uri": "s3://ovpipe/r1/_recipes/other.yaml"})
    assert other["metadata"]["annotations"][launch.SPEC_DIGEST] != job["metadata"]["annotations"][launch.SPEC_DIGEST]
    custom = FakeCustomObjects([{"conditions": [cond("Created")]}], existing={**other, "status": {}})
    with pytest.raises(RuntimeError, match="another spec or recipe"):
        submit(job, custom)
    assert custom.deleted == [] and custom.created == []
    same = FakeCustomObjects([{"conditions": [cond("Complete")]}], existing={**job, "status": {}})
    assert submit(job, same)[0]["status"]["conditions"][-1]["type"] == "Complete"


def test_submit_replaces_a_failed_job_of_the_same_name(recipe):
    job = launch.build_pytorchjob(recipe, "mid", **KW)
    failed = {**job, "status": {"conditions": [cond("Failed")]}}
    custom = FakeCustomObjects([{"conditions": [cond("Running")]}, {"conditions": [cond("Succeeded")]}],
                               existing=failed)
    custom.statuses.insert(0, failed["status"])  # the get that finds it failed
    result, logs = submit(job, custom)
    assert [name for name, _ in custom.deleted] == [job["metadata"]["name"]]
    assert custom.created == [job]
    assert ("create", "kubeflow.org", "v1", "kubeflow", "pytorchjobs") in custom.calls
    assert result["status"]["conditions"][-1]["type"] == "Succeeded"


def test_submit_pytorchjob_failure_reads_its_pods(recipe):
    job = launch.build_pytorchjob(recipe, "mid", **KW)
    name = job["metadata"]["name"]
    custom = FakeCustomObjects([{"conditions": [cond("Failed", reason="PyTorchJobFailed")]}])
    core = FakeCore([(f"{name}-master-0", "Failed")])
    with pytest.raises(RuntimeError, match="PyTorchJobFailed"):
        submit(job, custom, core)
    assert core.selectors == [f"training.kubeflow.org/job-name={name}"]
    assert core.log_reads == [(f"{name}-master-0", "pytorch", 50)]


def test_submit_times_out(trainjob):
    name = trainjob["metadata"]["name"]
    custom = FakeCustomObjects([{"conditions": [cond("Created")]}])
    core = FakeCore([(f"{name}-node-0-0-abcde", "Running")])
    with pytest.raises(RuntimeError, match="did not finish within 0.05 s") as info:
        submit(trainjob, custom, core, timeout_s=0.05, poll_s=0.01)
    assert "CUDA out of memory" in str(info.value)


def test_submit_reports_a_rejected_job(trainjob):
    custom = FakeCustomObjects([], create_error=ApiException(status=422, reason="Unprocessable Entity"))
    with pytest.raises(RuntimeError, match="not created: 422"):
        submit(trainjob, custom)
