"""The cluster profile (`configs/cluster/<name>.yaml`): where a compiled pipeline's pods run and what they
are given — images, GPU resource and type, node selectors and tolerations per family, /dev/shm size, the
names of the Secrets and the ConfigMap (never their values), the service account, and the KFP server.

It is validated like a recipe (one ConfigError listing every problem). `components/platform.py` applies
it at compile time (`OVPIPE_PROFILE`, default `configs/cluster/default.yaml`); the training task, which
builds its TrainJob at run time, reads the same profile from `OVPIPE_PROFILE_JSON`, which the compiled
task carries (`for_tasks`).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from ovpipe.config import ConfigError, _build

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT = "default"
ENV_FILE, ENV_JSON = "OVPIPE_PROFILE", "OVPIPE_PROFILE_JSON"
VERSION = "0.1.0"  # the images' tag in the default profile (images/build.sh)
FAMILIES = ("data", "gpu", "caption", "mlflow")  # image families: images/README.md (mlflow: the chart's server)
PLACEMENTS = ("data", "gpu", "train")  # data: CPU steps; gpu: embed/index/caption/eval; train: TrainJob nodes
CONFIG_KEYS = ("MLFLOW_TRACKING_URI", "OVPIPE_S3_ENDPOINT")  # the ConfigMap the chart publishes
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")  # keys of mlflow_secret
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?")
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass
class Image:
    repository: str = ""
    tag: str = VERSION
    digest: str = ""  # sha256:… pins the image (wins over the tag)


@dataclass
class Placement:
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)  # key, operator, value, effect


def _gpu_placement() -> Placement:
    return Placement(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])


@dataclass
class Gpu:
    resource: str = "nvidia.com/gpu"
    product_label: str = "nvidia.com/gpu.product"  # the node label GPU feature discovery sets
    product: str = ""  # e.g. NVIDIA-H100-80GB-HBM3; "" = any GPU node


@dataclass
class Kfp:
    host: str = ""  # the KFP API (e.g. https://kubeflow.example.org/pipeline); KFP_HOST wins
    namespace: str = "kubeflow"  # the KFP namespace runs are submitted to (multi-user: the profile's)
    experiment: str = "ovpipe"


@dataclass
class Profile:
    name: str = DEFAULT
    namespace: str = "kubeflow"  # where runs execute and TrainJobs are created
    registry: str = "ghcr.io/ovpipe"
    # caption runs in the gpu image unless a profile names the vLLM one (ovpipe-caption, caption.backend vllm)
    images: dict[str, Image] = field(default_factory=lambda: {
        "data": Image("ovpipe-data"), "gpu": Image("ovpipe-gpu"), "caption": Image("ovpipe-gpu"),
        "mlflow": Image("ovpipe-mlflow")})
    image_pull_secrets: list[str] = field(default_factory=list)
    gpu: Gpu = field(default_factory=Gpu)
    placement: dict[str, Placement] = field(default_factory=lambda: {
        "data": Placement(), "gpu": _gpu_placement(), "train": _gpu_placement()})
    shm_size: str = "64Gi"  # /dev/shm of training nodes (NCCL, loader workers)
    # The object store's credentials: by default the Secret KFP (>= 2.15) deploys for its SeaweedFS
    # (seaweedfs.kubeflow:9000); env variable → key in s3_secret.
    s3_secret: str = "mlpipeline-minio-artifact"
    s3_secret_keys: dict[str, str] = field(default_factory=lambda: {"AWS_ACCESS_KEY_ID": "accesskey",
                                                                    "AWS_SECRET_ACCESS_KEY": "secretkey"})
    config_map: str = "ovpipe-config"  # CONFIG_KEYS, published by the chart
    mlflow_secret: str = "ovpipe-mlflow"  # optional: MLFLOW_TRACKING_USERNAME / _PASSWORD
    service_account: str = "ovpipe-pipeline-runner"
    kfp: Kfp = field(default_factory=Kfp)

    def image(self, family: str, pinned: bool = True) -> str:
        """A family's image reference: by digest when the profile pins one (pinned=False: by tag, as built)."""
        img = self.images[family]
        repo = f"{self.registry.rstrip('/')}/{img.repository}" if self.registry else img.repository
        return f"{repo}@{img.digest}" if img.digest and pinned else f"{repo}:{img.tag}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def path_of(name: str) -> str:
    """A profile's file: a path as given, or configs/cluster/<name>.yaml."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return name
    return os.path.join(ROOT, "configs", "cluster", f"{name}.yaml")


def load(name: str = DEFAULT) -> Profile:
    path = path_of(name)
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"cluster profile {path}: no such file (profiles: configs/cluster/*.yaml)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"cluster profile {path}: not YAML: {exc}") from None
    if isinstance(data, dict):
        data.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return from_dict(data, path)


def from_dict(data: dict, where: str = "profile") -> Profile:
    if not isinstance(data, dict):
        raise ConfigError(f"cluster profile {where}: expected a mapping")
    problems: list[str] = []
    data = dict(data)
    for key in ("images", "placement"):  # mappings of sections, merged key by key on the defaults
        given = data.pop(key, {})
        if not isinstance(given, dict):
            problems.append(f"{key}: expected a mapping")
            given = {}
        sections = {k: asdict(v) for k, v in getattr(Profile(), key).items()}
        for k, v in given.items():
            sections[k] = {**sections.get(k, {}), **v} if isinstance(v, dict) else v
        data[key] = sections
    profile = _build(Profile, {k: v for k, v in data.items() if k not in ("images", "placement")}, "", problems, ".")
    for key, cls in (("images", Image), ("placement", Placement)):
        built = {}
        for k, v in data[key].items():
            if not isinstance(v, dict):
                problems.append(f"{key}.{k}: expected a mapping")
                continue
            built[k] = _build(cls, v, f"{key}.{k}.", problems, ".")
        setattr(profile, key, built)
    _check(profile, problems)
    if problems:
        raise ConfigError("\n".join(f"cluster profile {where}: {p}" for p in problems))
    return profile


def _check(p: Profile, problems: list[str]) -> None:
    for fam in FAMILIES:
        if fam not in p.images:
            problems.append(f"images.{fam}: missing (every family needs an image: {', '.join(FAMILIES)})")
    for fam, img in p.images.items():
        if fam not in FAMILIES:
            problems.append(f"images.{fam}: unknown image family (known: {', '.join(FAMILIES)})")
        if not img.repository:
            problems.append(f"images.{fam}.repository: empty")
        if img.digest and not _DIGEST.fullmatch(img.digest):
            problems.append(f"images.{fam}.digest: {img.digest!r} is not sha256:<64 hex digits>")
        if not img.digest and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", img.tag):
            problems.append(f"images.{fam}.tag: {img.tag!r} is not a valid image tag")
    for fam, place in p.placement.items():
        if fam not in PLACEMENTS:
            problems.append(f"placement.{fam}: unknown family (known: {', '.join(PLACEMENTS)})")
        for i, t in enumerate(place.tolerations):
            where = f"placement.{fam}.tolerations[{i}]"
            if unknown := sorted(set(t) - {"key", "operator", "value", "effect", "tolerationSeconds"}):
                problems.append(f"{where}: unknown keys {unknown}")
            if t.get("operator", "Equal") not in ("Equal", "Exists"):
                problems.append(f"{where}.operator: {t.get('operator')!r} is not Equal or Exists")
            if t.get("effect") not in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"):
                problems.append(f"{where}.effect: {t.get('effect')!r} is not NoSchedule, PreferNoSchedule or NoExecute")
            if t.get("operator") == "Exists" and t.get("value"):
                problems.append(f"{where}: operator Exists takes no value")
    for key in ("namespace", "s3_secret", "config_map", "service_account"):
        if not _DNS1123.fullmatch(getattr(p, key)):
            problems.append(f"{key}: {getattr(p, key)!r} is not a Kubernetes name (lowercase letters, digits, '-')")
    if p.mlflow_secret and not _DNS1123.fullmatch(p.mlflow_secret):
        problems.append(f"mlflow_secret: {p.mlflow_secret!r} is not a Kubernetes name")
    if set(p.s3_secret_keys) != set(S3_KEYS):
        problems.append(f"s3_secret_keys: must map exactly {', '.join(S3_KEYS)} to keys of {p.s3_secret}")
    if not _QUANTITY.fullmatch(p.shm_size):
        problems.append(f"shm_size: {p.shm_size!r} is not a Kubernetes quantity (e.g. 64Gi)")
    if p.kfp.host and not p.kfp.host.startswith(("http://", "https://")):
        problems.append(f"kfp.host: {p.kfp.host!r} must start with http:// or https://")


def compiled_dir(p: Profile) -> str:
    """Where `make compile PROFILE=…` writes a profile's pipelines: pipelines/compiled/ (checked in) for the
    default profile, build/compiled/<name>/ for the others."""
    if p.name == DEFAULT:
        return os.path.join(ROOT, "pipelines", "compiled")
    return os.path.join(ROOT, "build", "compiled", p.name)


def from_environment() -> Profile:
    """The profile a task was compiled with (OVPIPE_PROFILE_JSON), else OVPIPE_PROFILE's file, else default."""
    if os.environ.get(ENV_JSON):
        return from_dict(json.loads(os.environ[ENV_JSON]), ENV_JSON)
    return load(os.environ.get(ENV_FILE) or DEFAULT)


def env_refs(p: Profile) -> list[tuple[str, str, str, str, bool]]:
    """What every pod of a run reads by reference, as (variable, "secret" | "config_map", object, key,
    optional): the object store's credentials (required), the published settings (optional: a missing
    MLFLOW_TRACKING_URI is reported by the step that needs it, ovpipe.train.tracking) and MLflow credentials."""
    refs = [(env, "secret", p.s3_secret, key, False) for env, key in sorted(p.s3_secret_keys.items())]
    refs += [(k, "config_map", p.config_map, k, True) for k in CONFIG_KEYS]
    if p.mlflow_secret:
        refs += [(k, "secret", p.mlflow_secret, k, True) for k in MLFLOW_CREDENTIALS]
    return refs


def pod_env(p: Profile) -> list[dict]:
    """env_refs as a Kubernetes container's `env` (secretKeyRef / configMapKeyRef)."""
    out = []
    for env, kind, name, key, optional in env_refs(p):
        ref = {"name": name, "key": key} | ({"optional": True} if optional else {})
        out.append({"name": env, "valueFrom": {"secretKeyRef" if kind == "secret" else "configMapKeyRef": ref}})
    return out


def node_selector(p: Profile, placement: str) -> dict[str, str]:
    """A family's node selector; GPU families (gpu, train) also select the profile's GPU product."""
    selector = dict(p.placement[placement].node_selector)
    if placement != "data" and p.gpu.product:
        selector[p.gpu.product_label] = p.gpu.product
    return selector


def main(argv: list[str] | None = None) -> int:
    """`python -m ovpipe.profile check NAME` | `tag NAME FAMILY` (the tag images/build.sh builds and pushes)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) == 2 and args[0] == "check":
            print(load(args[1]).to_json())
            return 0
        if len(args) == 3 and args[0] == "tag":
            print(load(args[1]).image(args[2], pinned=False))
            return 0
    except (ConfigError, KeyError) as exc:
        print(f"ovpipe.profile: {exc}", file=sys.stderr)
        return 2
    print("usage: python -m ovpipe.profile check NAME | tag NAME FAMILY", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
