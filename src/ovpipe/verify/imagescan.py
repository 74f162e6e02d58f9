"""The built images, layer by layer: the values of the run's credentials in every file of every layer;
the token-shape rules of `secretscan` and trivy's image secret scanner in every file that is not a
published third-party package (Debian's and PyPI's files carry their vendors' example keys and
public API tokens — botocore's docs, yt-dlp's extractors, GnuTLS's test keys — which are counted
apart, not ours to hide); and the user each image runs as (never root).

    python -m ovpipe.verify.imagescan [IMAGE ...] [--trivy .tools/bin/trivy]   # default: the local profile's

An image is saved with `podman save` (docker-archive) into a temporary folder and read from there;
nothing is pulled. Exit 1 when anything is found or an image runs as root.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

from ovpipe import profile
from ovpipe.verify import secretscan

ROOT_USERS = ("", "0", "root", "0:0", "root:root")
# files installed from Debian or PyPI packages (ovpipe itself is installed into site-packages: kept)
THIRD_PARTY = re.compile(r"^(?:\./)?(?:opt/venv/lib/python[\d.]+/site-packages/(?!ovpipe[-_/.])|"
                         r"usr/(?:lib|lib64|libexec|share|include|bin|sbin)/|s?bin/|lib(?:64)?/|var/lib/dpkg/)")
TRIVY_SKIP = ["usr/lib", "usr/lib64", "usr/libexec", "usr/share", "usr/include", "usr/bin", "usr/sbin", "bin",
              "sbin", "lib", "lib64", "var/lib/dpkg", "opt/venv/lib/python*/site-packages"]


def engine() -> str | None:
    return shutil.which("podman") or shutil.which("docker")


def local_images(name: str = "local") -> list[str]:
    """The profile's image of each family that is built on this machine."""
    p, tool = profile.load(name), engine()
    refs = [p.image(fam, pinned=False) for fam in profile.FAMILIES]
    return [r for r in dict.fromkeys(refs)
            if tool and subprocess.run([tool, "image", "inspect", r], capture_output=True).returncode == 0]


def _layer_files(archive: str):
    """(label, first bytes) of every regular file in every layer of a docker-archive."""
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(layer), mode="r|*") as inner:
                for member in inner:
                    if member.isfile():
                        yield f"{layer}:{member.name}", inner.extractfile(member).read(secretscan.MAX_FILE)


def scan_archive(ref: str, archive: str, needles: list[bytes]) -> tuple[dict, list[dict]]:
    """({files, third_party_files, third_party_token_shapes}, findings)."""
    counts, found = {"files": 0, "third_party_files": 0, "third_party_token_shapes": 0}, []
    for label, data in _layer_files(archive):
        counts["files"] += 1
        where = f"{ref}//{label}"
        if THIRD_PARTY.match(label.split(":", 1)[1]):
            counts["third_party_files"] += 1
            hits = secretscan.findings_in(where, data, needles)
            known = [h for h in hits if h["rule"] == "known-credential-value"]
            found += known
            counts["third_party_token_shapes"] += len(hits) - len(known)
        else:
            found += secretscan.findings_in(where, data, needles)
    return counts, found


def scan_image(ref: str, known: list[str], trivy: str | None, workdir: str) -> dict:
    tool = engine()
    config = json.loads(subprocess.run([tool, "image", "inspect", ref], capture_output=True, text=True,
                                       check=True).stdout)[0].get("Config") or {}
    user = str(config.get("User") or "")
    archive = os.path.join(workdir, "image.tar")
    subprocess.run([tool, "save", "--format", "docker-archive", "-o", archive, ref], check=True,
                   capture_output=True)
    needles = secretscan.needles_of(known)
    try:
        counts, found = scan_archive(ref, archive, needles)
        found += [{**f, "file": f"{ref}//{f['file']}"}
                  for f in secretscan.trivy_scan([archive], trivy, "image", skip_dirs=TRIVY_SKIP)] if trivy else []
        # the image's environment and labels are part of what ships
        found += secretscan.findings_in(f"{ref}//config", json.dumps(config).encode(), needles)
    finally:
        os.remove(archive)
    return {"image": ref, "user": user, "non_root": user not in ROOT_USERS, **counts, "found": found}


def scan(refs: list[str], known: list[str] = (), trivy: str | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="ovpipe-imagescan-", dir=os.environ.get("OVPIPE_IMAGESCAN_DIR")) as d:
        return [scan_image(r, known, trivy, d) for r in refs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ovpipe.verify.imagescan", description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="*")
    ap.add_argument("--trivy", help="trivy binary (make tools puts one in .tools/bin)")
    ap.add_argument("--known-env", default="AWS_SECRET_ACCESS_KEY,AWS_ACCESS_KEY_ID,KFP_TOKEN,MLFLOW_TRACKING_PASSWORD")
    args = ap.parse_args(argv)
    refs = args.images or local_images()
    if not refs:
        print("no images built here (make images)")
        return 1
    results = scan(refs, [os.environ.get(v, "") for v in args.known_env.split(",")], args.trivy)
    for r in results:
        for f in r["found"]:
            print(f"{f['file']}: {f['rule']}: {f['excerpt']}")
        print(f"{r['image']}: user {r['user'] or 'root'}, {r['files']} files, {len(r['found'])} secrets "
              f"({r['third_party_token_shapes']} token-shaped strings in {r['third_party_files']} third-party files)")
    return 0 if all(r["non_root"] and not r["found"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
