"""The requirement sets of the images that cannot be built here (CUDA bases) resolve against our pins:
`pip install --dry-run --report` with the same requirements and constraints the Dockerfile uses, so a pin
conflict (faiss-gpu, Transformer Engine, vLLM) shows here, not on the GPU builder. Needs the package index."""
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(1200)
ROOT = Path(__file__).resolve().parent.parent
PINS = ROOT / "constraints.txt"
NETWORK_TRIES = 3
# what pip prints when the network, not the requirements, failed
NETWORK_ERROR = re.compile(r"Could not fetch URL|Failed to establish|Temporary failure in name|incomplete-download"
                           r"|Connection interrupted|Read timed out|ConnectionResetError|Connection broken")


def _name(line: str) -> str:
    return re.split(r"[=<>!~\[; ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def resolve(tmp_path, requirements: list[str], constraints: list[str]) -> dict[str, str]:
    req, con, report = tmp_path / "requirements.txt", tmp_path / "constraints.txt", tmp_path / "report.json"
    req.write_text("\n".join(requirements) + "\n")
    con.write_text("\n".join(constraints) + "\n")
    # the index only: this machine's pip settings (a local mirror, a cap on torch) are not the builder's
    # Transformer Engine's torch package is an sdist: its metadata needs its build dependencies (CUDA
    # wheels of a few hundred MB each, fetched by a pip of its own, hence settings by environment), so a
    # dropped connection is likely; resume, and retry the whole resolution, before calling the index
    # unreachable
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_RESUME_RETRIES="20", PIP_TIMEOUT="60", PIP_RETRIES="10")
    env.pop("PIP_FIND_LINKS", None)
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
           str(report), "-c", str(con), "-r", str(req)]
    for _ in range(NETWORK_TRIES):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if not (proc.returncode and NETWORK_ERROR.search(proc.stdout + proc.stderr)):
            break
    else:
        pytest.skip(f"the package index is not reachable after {NETWORK_TRIES} tries: "
                    f"{NETWORK_ERROR.search(proc.stdout + proc.stderr).group(0)}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return {_name(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


def pins() -> dict[str, str]:
    return {_name(line): line.split("==", 1)[1].strip() for line in PINS.read_text().splitlines()
            if "==" in line and not line.startswith("#")}


def test_gpu_image_requirements_resolve(tmp_path):
    """pyproject's dependencies + the `gpu` and `train` extras (gpu.Dockerfile's default OVPIPE_EXTRAS)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = re.search(r"^ARG OVPIPE_EXTRAS=(\S+)", (ROOT / "images" / "gpu.Dockerfile").read_text(), re.M).group(1)
    reqs = project["dependencies"] + [d for e in extras.split(",") for d in project["optional-dependencies"][e]]
    got = resolve(tmp_path, reqs, PINS.read_text().splitlines())
    want = pins()
    moved = {k: (v, want[k]) for k, v in got.items() if k in want and v != want[k]}
    assert not moved, f"resolved away from constraints.txt: {moved}"
    for extra in ("faiss-gpu-cu12", "transformer-engine", "transformer-engine-torch"):
        assert extra in got, f"{extra} missing from the GPU image's resolution"
    assert got["torch"] == want["torch"]


@pytest.mark.parametrize("image, program", [("caption", "vllm"), ("mlflow", "mlflow")])
def test_image_requirements_resolve_beside_our_pins(tmp_path, image, program):
    """An image on another program's pins (vLLM for captioning, the MLflow server) beside ours:
    constraints.txt less the released pins."""
    text = (ROOT / "images" / f"{image}-requirements.txt").read_text()
    released = set(re.search(r"^# released-pins: *(.+)$", text, re.M).group(1).split())
    reqs = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    constraints = [line for line in PINS.read_text().splitlines() if _name(line) not in released]
    got = resolve(tmp_path, reqs, constraints)
    want = pins()
    moved = {k: (v, want[k]) for k, v in got.items() if k in want and v != want[k] and k not in released}
    assert not moved, f"resolved away from constraints.txt: {moved}"
    assert program in got and got[program] == next(_l.split("==")[1] for _l in reqs if _name(_l) == program)
    # every released pin is one the program really moves: otherwise it should be pinned like the rest
    unneeded = sorted(k for k in released if got.get(k) == want.get(k))
    assert not unneeded, f"released-pins that {program}'s resolution keeps anyway: {unneeded}"
