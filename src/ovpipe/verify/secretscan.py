"""Secret scan: the values of the credentials a run was given, token-shaped strings, and trivy's secret
scanner (offline), over folders of what a run leaves behind (compiled pipelines, rendered charts,
manifests, logs, MLflow params, every manifest in a store).

    python -m ovpipe.verify.secretscan PATH... [--known-env AWS_SECRET_ACCESS_KEY,…] [--trivy .tools/bin/trivy]

Exit 1 and one line per finding (file, rule, a masked excerpt) when anything is found.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

# Token shapes. An assignment counts only when its value looks generated (letters of both cases and a
# digit, 16+ characters): names of Secrets and variables (`mlpipeline-minio-artifact`,
# `AWS_SECRET_ACCESS_KEY`) are not secrets.
PATTERNS = {
    "aws-access-key-id": re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private-key": re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "jwt": re.compile(rb"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    "credential-assignment": re.compile(
        rb"(?i)(?:secret|password|passwd|token|api[_-]?key|access[_-]?key)[\"']?\s*[:=]\s*[\"']?"
        rb"([A-Za-z0-9/+_=.-]{16,})"),
}
_GENERATED = re.compile(rb"^(?=.*[a-z])(?=.*[A-Z])(?=.*[0-9]).{16,}$")
MAX_FILE = 64 << 20  # larger files (weights, shards) are data, read in the first 64 MB only


def _files(paths: list[str]):
    for path in paths:
        if os.path.isfile(path):
            yield path
        for base, _, names in os.walk(path):
            for name in names:
                yield os.path.join(base, name)


def _mask(value: bytes) -> str:
    text = value.decode("utf-8", "replace")
    return text[:4] + "…" if len(text) > 4 else "…"


def findings_in(label: str, data: bytes, needles: list[bytes]) -> list[dict]:
    """The known values and token shapes in one file's bytes."""
    out = [{"file": label, "rule": "known-credential-value", "excerpt": _mask(n)} for n in needles if n in data]
    for rule, pattern in PATTERNS.items():
        for m in pattern.finditer(data):
            value = m.group(1) if m.groups() else m.group(0)
            if rule == "credential-assignment" and not _GENERATED.match(value):
                continue
            out.append({"file": label, "rule": rule, "excerpt": _mask(value)})
    return out


def needles_of(known) -> list[bytes]:
    return [k.encode() for k in known if k and len(k) >= 8]


def scan(paths: list[str], known: list[str] = (), trivy: str | None = None) -> tuple[int, list[dict]]:
    """(files scanned, findings [{file, rule, excerpt}])."""
    needles = needles_of(known)
    findings, n = [], 0
    for path in _files(paths):
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE)
        except OSError:
            continue
        n += 1
        findings += findings_in(path, data, needles)
    if trivy:
        findings += trivy_scan(paths, trivy)
    return n, findings


def trivy_scan(paths: list[str], trivy: str, kind: str = "fs", skip_dirs: list[str] = ()) -> list[dict]:
    """trivy's secret scanner (no vulnerability database, so it runs offline) over each path: folders
    (kind fs) or saved image archives (kind image)."""
    out = []
    for path in paths:
        target = ["--input", path] if kind == "image" else [path]
        target += [a for d in skip_dirs for a in ("--skip-dirs", d)]
        proc = subprocess.run([trivy, kind, "--scanners", "secret", "--format", "json", "--quiet",
                               "--skip-db-update", "--skip-version-check", *target],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode:
            raise RuntimeError(f"trivy failed on {path}: {proc.stderr[-2000:]}")
        for result in json.loads(proc.stdout or "{}").get("Results") or []:
            for s in result.get("Secrets") or []:
                out.append({"file": os.path.join(path, result["Target"]), "rule": f"trivy:{s['RuleID']}",
                            "excerpt": s.get("Title", "")})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ovpipe.verify.secretscan", description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--known-env", default="AWS_SECRET_ACCESS_KEY,AWS_ACCESS_KEY_ID,KFP_TOKEN,MLFLOW_TRACKING_PASSWORD",
                    help="variables whose values (when set) must appear nowhere")
    ap.add_argument("--trivy", help="trivy binary (make tools puts one in .tools/bin)")
    args = ap.parse_args(argv)
    known = [os.environ.get(v, "") for v in args.known_env.split(",")]
    n, findings = scan(args.paths, known, args.trivy)
    for f in findings:
        print(f"{f['file']}: {f['rule']}: {f['excerpt']}")
    print(f"{n} files scanned, {len(findings)} secrets found")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
