"""The secret scan finds what it must (planted credentials, token shapes, trivy's rules) and nothing in what
the project ships: compiled pipelines, the rendered chart, generated manifests."""
from __future__ import annotations

import os
import subprocess

from ovpipe.verify.secretscan import scan
from tests.helpers import ROOT, tool

PLANTED = {
    "known-credential-value": "run.log", "aws-access-key-id": "a.yaml", "jwt": "b.json",
    "credential-assignment": "c.env", "private-key": "d.pem",
}


def _plant(tmp_path) -> str:
    d = tmp_path / "leaky"
    d.mkdir()
    (d / "run.log").write_text("step embed ok; using key Zq8sLpV3xW0mNn4RrT7y for s3\n")
    (d / "a.yaml").write_text("env:\n- name: X\n  value: AKIA2E0A8F3B244C9986\n")
    (d / "b.json").write_text('{"auth": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJrZnAtdXNlciJ9.c2lnbmF0dXJlLXZhbHVlLTEyMw"}')
    (d / "c.env").write_text("MLFLOW_TRACKING_PASSWORD=h7Gk2LmQ9pXz4WcV8bN1\n")
    (d / "d.pem").write_text("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n")
    (d / "names.yaml").write_text("secretKeyRef: {name: mlpipeline-minio-artifact, key: AWS_SECRET_ACCESS_KEY}\n")
    return str(d)


def test_planted_secrets_are_found_and_names_are_not(tmp_path):
    n, findings = scan([_plant(tmp_path)], known=["Zq8sLpV3xW0mNn4RrT7y"])
    assert n == 6
    found = {(os.path.basename(f["file"]), f["rule"]) for f in findings}
    assert {(file, rule) for rule, file in PLANTED.items()} <= found
    assert not any(os.path.basename(f["file"]) == "names.yaml" for f in findings), findings
    assert all("Zq8sLpV3" not in f["excerpt"] for f in findings)  # reports never repeat the secret


def test_trivy_finds_a_planted_key(tmp_path):
    findings = scan([_plant(tmp_path)], trivy=tool("trivy"))[1]
    assert any(f["rule"].startswith("trivy:") for f in findings), findings


def test_nothing_the_project_ships_holds_a_secret(tmp_path):
    rendered = tmp_path / "chart"
    rendered.mkdir()
    for values in ("values.yaml", "values-h100-pool.yaml"):
        chart = os.path.join(ROOT, "charts", "ovpipe")
        out = subprocess.run([tool("helm"), "template", "ovpipe", chart, "-f", os.path.join(chart, values)],
                             capture_output=True, text=True, check=True)
        (rendered / values).write_text(out.stdout)
    paths = [os.path.join(ROOT, p) for p in ("pipelines/compiled", "manifests", "configs")] + [str(rendered)]
    n, findings = scan(paths, trivy=tool("trivy"))
    assert n > 10 and findings == [], findings


def _archive(tmp_path, files: dict[str, bytes]) -> str:
    """A docker-archive (as `podman save` writes) with one layer holding `files`."""
    import io
    import json
    import tarfile

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    path = tmp_path / "image.tar"
    with tarfile.open(path, "w") as t:
        for name, data in (("abc/layer.tar", layer.getvalue()),
                           ("manifest.json", json.dumps([{"Layers": ["abc/layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return str(path)


def test_image_layers_are_scanned_file_by_file(tmp_path):
    from ovpipe.verify.imagescan import scan_archive

    clean = _archive(tmp_path, {"opt/venv/x.py": b"print('hi')\n", "etc/os-release": b"ID=debian\n"})
    assert scan_archive("img", clean, [b"Zq8sLpV3xW0mNn4RrT7y"]) == (
        {"files": 2, "third_party_files": 0, "third_party_token_shapes": 0}, [])
    vendor = "opt/venv/lib/python3.11/site-packages/botocore/examples.json"
    leaky = _archive(tmp_path, {"root/.aws/credentials": b"aws_access_key_id = AKIA2E0A8F3B244C9986\n",
                                "app/run.log": b"key Zq8sLpV3xW0mNn4RrT7y\n",
                                "opt/venv/lib/python3.11/site-packages/ovpipe/x.py": b"k = 'AKIA2E0A8F3B244C9986'\n",
                                vendor: b'{"AccessKeyId": "AKIAIOSFODNN7EXAMPLE"}',
                                "usr/lib/libx.so": b"\0Zq8sLpV3xW0mNn4RrT7y\0"})
    counts, found = scan_archive("img", leaky, [b"Zq8sLpV3xW0mNn4RrT7y"])
    assert counts == {"files": 5, "third_party_files": 2, "third_party_token_shapes": 1}
    assert {(f["file"].split(":")[-1], f["rule"]) for f in found} == {
        ("root/.aws/credentials", "aws-access-key-id"), ("app/run.log", "known-credential-value"),
        ("opt/venv/lib/python3.11/site-packages/ovpipe/x.py", "aws-access-key-id"),
        ("usr/lib/libx.so", "known-credential-value")}  # a known value counts in any file
