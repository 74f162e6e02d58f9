"""The manifest every step writes last: lineage, counts, hashes (keys fixed by DESIGN.md)."""
from __future__ import annotations

import functools
import os
import subprocess

from ovpipe import __version__, faults, storage

KEYS = ("step", "run_id", "config", "code_version", "inputs", "outputs", "counts", "wall_seconds")


class AccountingError(RuntimeError):
    """in != out + Σrejected: a sample was lost or double counted."""


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when running from a checkout (images set OVPIPE_CODE_VERSION)."""
    if os.environ.get("OVPIPE_CODE_VERSION"):
        return os.environ["OVPIPE_CODE_VERSION"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def counts(n_in: int, n_out: int, rejected: dict[str, int]) -> dict:
    """A checked counts object: in = out + Σrejected, else AccountingError."""
    rejected = {k: int(v) for k, v in sorted(rejected.items()) if v}
    if int(n_in) != int(n_out) + sum(rejected.values()):
        raise AccountingError(f"accounting broken: in={n_in} != out={n_out} + rejected={rejected}")
    return {"in": int(n_in), "out": int(n_out), "rejected": rejected}


def ref(uri: str) -> dict:
    """An input reference: the upstream manifest's URI and the sha256 of its bytes."""
    return {"uri": uri, "sha256": storage.sha256_bytes(storage.read_bytes(uri))}


def build(step: str, run_id: str, config: dict, inputs: list[dict], outputs: list[dict], counts_: dict,
          wall_seconds: float, metrics: dict | None = None, **extra) -> dict:
    manifest = {
        "step": step, "run_id": run_id, "config": config, "code_version": code_version(),
        "inputs": inputs, "outputs": outputs, "counts": counts_, "wall_seconds": round(wall_seconds, 3),
    }
    if metrics:
        manifest["metrics"] = metrics
    manifest.update(extra)
    return manifest


def write(uri: str, manifest: dict) -> str:
    """Write the manifest (atomically, last); returns the sha256 of the written bytes."""
    missing = [k for k in KEYS if k not in manifest]
    if missing:
        raise ValueError(f"manifest for {uri} lacks keys {missing}")
    faults.point("before_manifest", manifest["step"])
    return storage.sha256_bytes(storage.write_json(uri, manifest))


def read(uri: str) -> dict:
    try:
        return storage.read_json(uri)
    except storage.NotFound as exc:
        raise storage.NotFound(f"{uri}: no manifest — has the upstream step finished for this run?") from exc


def data_digests(run_uri: str, steps) -> dict[str, list]:
    """Per step (those of `steps` that ran): the sha256 of every data output its manifest lists, by name —
    what two runs of the same recipe must share whatever ran them (timings and paths left out)."""
    out = {}
    for step in steps:
        uri = storage.join(run_uri, step, "manifest.json")
        if storage.exists(uri):
            out[step] = sorted((storage.basename(o["uri"]), o["sha256"]) for o in storage.read_json(uri)["outputs"])
    return out


def compare_digests(a: dict, b: dict) -> list[str]:
    """The differences between two data_digests results, one line each (empty: the same data)."""
    lines = [f"{step}: only in the {'first' if step in a else 'second'} run" for step in sorted(set(a) ^ set(b))]
    for step in sorted(set(a) & set(b)):
        if a[step] != b[step]:
            differ = sorted({n for n, _ in set(map(tuple, a[step])) ^ set(map(tuple, b[step]))})
            lines.append(f"{step}: {len(differ)} output(s) differ: {', '.join(differ[:5])}")
    return lines
