"""charts/ovpipe, offline: helm lint --strict; the rendering (default values and a GPU cluster's) accepted by
kubernetes-validate --strict, its custom resources by their CRDs (unknown fields rejected); the objects it
renders are the ones ovpipe.deploy builds from the cluster profile (chart and kustomize cannot drift);
trivy finds nothing beyond the documented skip list. The tools come from `make tools` (.tools/bin)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from ovpipe import deploy
from ovpipe import profile as profiles
from tests.helpers import tool
from tests.test_launch import schema_errors

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "ovpipe"
GPU_VALUES = CHART / "values-h100-pool.yaml"
CASES = {"default": ("kubeflow", []), "h100-pool": ("ml-research", ["-f", str(GPU_VALUES)])}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def render(profile: str = "default", *extra: str) -> list[dict]:
    namespace, values = CASES[profile]
    out = helm("template", "ovpipe", str(CHART), "-n", namespace, *values, *extra).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("profile", CASES)
def test_helm_lint_strict(profile):
    helm("lint", "--strict", str(CHART), *CASES[profile][1])


@pytest.mark.parametrize("profile", CASES)
def test_the_rendering_validates(profile, tmp_path):
    namespace, values = CASES[profile]
    text = helm("template", "ovpipe", str(CHART), "-n", namespace, *values).stdout
    validate = ROOT / ".venv" / "bin" / "kubernetes-validate"
    cmd = [str(validate) if validate.exists() else "kubernetes-validate", "--strict", "-k", "1.33.0", "-"]
    res = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "passed for resource deployment/ovpipe-mlflow" in res.stdout + res.stderr
    docs = [d for d in yaml.safe_load_all(text) if d]
    custom = [d for d in docs if d["kind"] == "ClusterTrainingRuntime"]
    assert custom and all(not schema_errors(d) for d in custom), [schema_errors(d) for d in custom]


def _strip_helm_labels(obj: dict) -> dict:
    out = yaml.safe_load(yaml.safe_dump(obj))
    labels = out["metadata"].get("labels", {})
    for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                "helm.sh/chart"):
        labels.pop(key, None)
    return out


@pytest.mark.parametrize("profile", CASES)
def test_the_chart_renders_the_profiles_objects(profile):
    """RBAC and the ClusterTrainingRuntime are the objects ovpipe.deploy makes for the profile (and
    manifests/ holds), but for Helm's own labels."""
    rendered = by_kind(render(profile))
    for want in deploy.objects(profiles.load(profile)):
        assert _strip_helm_labels(rendered[want["kind"]]) == want, want["kind"]


@pytest.mark.parametrize("profile, values", [("default", CHART / "values.yaml"), ("h100-pool", GPU_VALUES)])
def test_values_files_agree_with_the_profile(profile, values):
    given = yaml.safe_load(values.read_text())

    def check(want, got, where):
        if isinstance(want, dict):
            for k, v in want.items():
                assert isinstance(got, dict) and k in got, f"{values.name}: {where}{k} missing"
                check(v, got[k], f"{where}{k}.")
        else:
            assert got == want, f"{values.name}: {where[:-1]} is {got!r}, the profile says {want!r}"

    check(deploy.chart_values(profiles.load(profile)), given, "")


def test_tasks_get_the_tracking_uri_and_the_store_by_reference():
    docs = by_kind(render())
    config = docs["ConfigMap"]
    assert config["metadata"]["name"] == profiles.Profile().config_map
    assert set(config["data"]) == set(profiles.CONFIG_KEYS)
    assert config["data"]["MLFLOW_TRACKING_URI"] == "http://ovpipe-mlflow.kubeflow.svc:5000"
    assert config["data"]["OVPIPE_S3_ENDPOINT"] == "http://seaweedfs.kubeflow:9000"
    service = docs["Service"]
    assert service["metadata"]["name"] == "ovpipe-mlflow" and service["spec"]["ports"][0]["port"] == 5000
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert service["spec"]["selector"].items() <= docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "mlpipeline-minio-artifact",
                                                                     "key": "accesskey"}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == "sqlite:////mlflow/mlflow.db"
    assert "ovpipe-mlflow.kubeflow.svc:*" in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"]
    assert docs["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    external = by_kind(render("default", "--set", "mlflow.enabled=false",
                              "--set", "mlflow.externalTrackingUri=https://mlflow.example.org"))
    assert external["ConfigMap"]["data"]["MLFLOW_TRACKING_URI"] == "https://mlflow.example.org"
    assert "Deployment" not in external and "PersistentVolumeClaim" not in external


def test_postgres_credentials_come_from_a_secret():
    docs = by_kind(render("h100-pool"))
    assert "PersistentVolumeClaim" not in docs
    env = {e["name"]: e for e in docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "password"}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == \
        "postgresql://$(PGUSER):$(PGPASSWORD)@mlflow-db.ml-research.svc:5432/mlflow?sslmode=require"
    runtime = docs["ClusterTrainingRuntime"]["spec"]["template"]["spec"]["replicatedJobs"][0]
    assert runtime["template"]["spec"]["template"]["spec"]["nodeSelector"]["node-pool"] == "h100"


@pytest.mark.parametrize("bad, message", [
    (["--set", "mlflow.bogus=1"], "additional properties 'bogus' not allowed"),
    (["--set", "mlflow.backend.type=mysql"], "mlflow"),
    (["--set", "trainingRuntime.image=no tag"], "trainingRuntime"),
    (["--set", "mlflow.enabled=false"], "mlflow.externalTrackingUri is required"),
    (["--set", "mlflow.backend.type=postgres"], "existingSecret is required for postgres"),
])
def test_bad_values_are_refused_with_the_reason(bad, message):
    res = helm("template", "ovpipe", str(CHART), *bad, check=False)
    assert res.returncode != 0 and message in res.stderr, res.stderr


SECRET_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PGUSER", "PGPASSWORD", "MLFLOW_TRACKING_USERNAME",
              "MLFLOW_TRACKING_PASSWORD"}


def _containers(obj):
    if isinstance(obj, dict):
        if "containers" in obj:
            yield from obj["containers"]
        for v in obj.values():
            yield from _containers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _containers(v)


def test_no_secret_value_in_the_chart(tmp_path):
    """The chart makes no Secret and puts credentials only by reference; trivy's secret scanner finds none
    in the chart, its values files or the compiled pipelines."""
    for profile in CASES:
        docs = render(profile)
        assert "Secret" not in {d["kind"] for d in docs}
        envs = [e for d in docs for c in _containers(d) for e in c.get("env", [])]
        assert {e["name"] for e in envs} & SECRET_ENV
        for e in envs:
            if e["name"] in SECRET_ENV:
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], e
    planted = tmp_path / "planted"
    planted.mkdir()  # the scanner does look: a key pair like a real one is found
    (planted / "creds.ini").write_text("aws_access_key_id = AKIAZ3MHQSPVW7XKD2LA\n"
                                       "aws_secret_access_key = 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\n")
    for folder in (CHART, ROOT / "pipelines" / "compiled", ROOT / "configs" / "cluster", planted):
        if folder == planted:
            res = subprocess.run([tool("trivy"), "fs", "--scanners", "secret", "--quiet", "--cache-dir", str(tmp_path),
                                  "--exit-code", "1", str(folder)], capture_output=True, text=True, timeout=300)
            assert res.returncode == 1 and "aws-access-key-id" in res.stdout, res.stdout[-2000:]
            continue
        res = subprocess.run([tool("trivy"), "fs", "--scanners", "secret", "--quiet", "--cache-dir", str(tmp_path),
                              "--exit-code", "1", str(folder)], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]


def _trivy(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("trivy"), "config", "--skip-check-update", "--quiet", "--cache-dir",
                           str(folder / ".cache"), "--ignorefile", str(ROOT / "charts" / "trivyignore"),
                           "--exit-code", "1", str(folder / "render")], capture_output=True, text=True, timeout=300)


def test_trivy_finds_nothing_beyond_the_skip_list(tmp_path):
    (tmp_path / "render").mkdir()
    for profile in CASES:
        (tmp_path / "render" / f"{profile}.yaml").write_text(yaml.safe_dump_all(render(profile)))
    res = _trivy(tmp_path)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    # and it does look: the same rendering with a privileged MLflow container is a finding
    docs = render()
    for d in docs:
        if d["kind"] == "Deployment":
            d["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    (tmp_path / "render" / "default.yaml").write_text(yaml.safe_dump_all(docs))
    res = _trivy(tmp_path)
    assert res.returncode == 1 and "privileged" in res.stdout.lower(), res.stdout[-2000:]
