"""`make verify`: bad inputs through the whole DAG, the fault matrix, store faults and the secret scan, then
one table. Every number comes from a check that fails when its property breaks; exit 1 if any did.

    python -m ovpipe.verify --dir build/verify [--quick] [--fuzz build/verify/fuzz.json]

Run from the checkout (it runs `ovpipe` commands on configs/recipes/tiny.yaml). The runs' environment
carries canary credentials (`AWS_SECRET_ACCESS_KEY`, `MLFLOW_TRACKING_PASSWORD`, `KFP_TOKEN`): the secret
scan then looks for their values in everything the runs left — stores, manifests, MLflow params, task
logs — as well as in the compiled pipelines, the generated manifests and the rendered chart.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time

from ovpipe.verify import accounting, badinput, faultmatrix, imagescan, secretscan, storefaults

TRAIN_SHORT = [o for o in faultmatrix.OVERRIDES if o.startswith(("vit.", "train.", "eval."))]


def bad_inputs(workdir: str, env: dict, log) -> dict:
    """The generated bad corpus through `ovpipe run` (all of it: curation, packing, training, eval)."""
    corpus, store = os.path.join(workdir, "bad-corpus"), os.path.join(workdir, "bad-store")
    expected = badinput.write(corpus)
    cmd = [sys.executable, "-m", "ovpipe.cli", "run", "--recipe", faultmatrix.RECIPE, "--store", store,
           "--run-id", "bad", "--input", os.path.join(corpus, "curated"),
           "--set", f"packing.stage1.input={os.path.join(corpus, 'stage1')}",
           "--set", f"packing.sft.input={os.path.join(corpus, 'sft')}", *(f"--set={o}" for o in TRAIN_SHORT)]
    log("bad inputs: ovpipe run on the generated corpus")
    t0 = time.perf_counter()
    with open(os.path.join(workdir, "logs", "bad-run.log"), "w") as f:
        rc = subprocess.call(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    report = {"exit_code": rc, "seconds": round(time.perf_counter() - t0, 1),
              "tried": sum(len(d["keys"]) + len(d["unreadable"]) for d in expected.values())}
    if rc == 0:
        report["datasets"] = accounting.check_run(store, "bad", expected)
    return report


def rendered_chart(workdir: str) -> str | None:
    helm = os.path.join(".tools", "bin", "helm")
    if not os.access(helm, os.X_OK):
        return None
    out = os.path.join(workdir, "chart")
    os.makedirs(out, exist_ok=True)
    for values in ("values.yaml", "values-h100-pool.yaml"):
        text = subprocess.run([helm, "template", "ovpipe", "charts/ovpipe", "-f", f"charts/ovpipe/{values}"],
                              capture_output=True, text=True, check=True).stdout
        with open(os.path.join(out, values), "w") as f:
            f.write(text)
    return out


def table(r: dict) -> str:
    bad, fm, sf, sec = r["bad_inputs"], r["faults"], r["store_faults"], r["secrets"]
    fuzz = r.get("fuzz") or {}
    keys = sum(d["keys"] for d in bad.get("datasets", {}).values())
    accounted = sum(d["out"] + d["rejected"] for d in bad.get("datasets", {}).values())
    det = fm["checks_passed"] + sf["checks_passed"], fm["checks"] + sf["checks"]
    rows = [
        ("bad inputs tried", f"{bad['tried']} corpus samples + {sum(fuzz.values())} fuzzed inputs "
                             f"({', '.join(f'{k} {v}' for k, v in fuzz.items()) or 'fuzzing not run'})"),
        ("samples accounted", f"{accounted} / {keys} readable keys (ovpipe run exit {bad['exit_code']}, "
                              f"{bad['seconds']} s)"),
        ("faults injected / survived", f"{fm['injected']} / {fm['survived']} over {len(fm['passes'])} points"),
        ("store faults survived", f"{sf['proxy']['faulted']} of {sf['proxy']['requests']} requests faulted: "
                                  f"{'same digests' if sf['proxy']['identical'] else 'DIGESTS DIFFER'}; "
                                  f"{sf['restart']['restarts']} SeaweedFS restarts: "
                                  f"{'same digests' if sf['restart']['identical'] else 'DIGESTS DIFFER'}"),
        ("secrets found", f"{len(sec['found'])} in {sec['files']} files"),
        ("images", "; ".join(f"{i['image']}: {len(i['found'])} secrets in {i['files']} layer files "
                             f"({i['third_party_token_shapes']} vendor examples in {i['third_party_files']} "
                             f"package files), runs as {i['user'] or 'root'}" for i in sec["images"])
         or "none built here (make images)"),
        ("determinism checks passed", f"{det[0]} / {det[1]}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def passed(r: dict) -> bool:
    bad, fm, sf = r["bad_inputs"], r["faults"], r["store_faults"]
    return (bad["exit_code"] == 0 and all(not d["missing"] and not d["unexpected"] for d in bad["datasets"].values())
            and fm["injected"] > 0 and fm["injected"] == fm["survived"]
            and sf["proxy"]["identical"] and sf["restart"]["identical"] and not sf["partial_objects"]
            and not r["secrets"]["found"]
            and all(i["non_root"] and not i["found"] for i in r["secrets"]["images"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ovpipe.verify", description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="build/verify")
    ap.add_argument("--quick", action="store_true", help="two fault points on the curation steps, one restart")
    ap.add_argument("--fuzz", help="fuzz.json written by tests/test_fuzz.py (OVPIPE_VERIFY_DIR)")
    args = ap.parse_args(argv)
    workdir = os.path.abspath(args.dir)
    for sub in ("bad-corpus", "bad-store", "faults", "store-faults", "chart", "logs"):
        shutil.rmtree(os.path.join(workdir, sub), ignore_errors=True)
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    canaries = {name: "cAnArY" + secrets.token_hex(16)
                for name in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "KFP_TOKEN")}
    env = {**os.environ, **canaries, "HF_HUB_OFFLINE": "1"}
    os.environ.update(canaries)  # the fault matrix's steps inherit them too
    log = print
    report = {"bad_inputs": bad_inputs(workdir, env, log)}
    points = ["before_marker", "mid_write"] if args.quick else None
    names = ["embed", "filter"] if args.quick else None
    log("fault matrix")
    report["faults"] = faultmatrix.matrix(os.path.join(workdir, "faults"), points, names, log=log,
                                          log_dir=os.path.join(workdir, "logs", "faults"))
    log("store faults")
    for k in canaries:  # the store-fault runs use the server's own keys, scanned for by value
        os.environ.pop(k, None)
    report["store_faults"] = storefaults.run(os.path.join(workdir, "store-faults"), restarts=1 if args.quick else 2,
                                             log=log)
    paths = ["src", "components", "pipelines", "manifests", "configs", os.path.join(workdir, "bad-store"),
             os.path.join(workdir, "faults"), os.path.join(workdir, "logs")]
    chart = rendered_chart(workdir)
    paths += [chart] if chart else []
    trivy = os.path.join(".tools", "bin", "trivy")
    files, found = secretscan.scan(paths, list(canaries.values()), trivy if os.access(trivy, os.X_OK) else None)
    store_secrets = report["store_faults"]["secrets"]
    report["secrets"] = {"files": files + store_secrets["files"], "found": found + store_secrets["found"],
                         "chart_rendered": bool(chart), "trivy": os.access(trivy, os.X_OK)}
    images = imagescan.local_images()
    log(f"image layers: {', '.join(images) or 'no images built'}")
    report["secrets"]["images"] = imagescan.scan(images, list(canaries.values()),
                                                 trivy if os.access(trivy, os.X_OK) else None)
    if args.fuzz and os.path.exists(args.fuzz):
        with open(args.fuzz) as f:
            report["fuzz"] = json.load(f)
    with open(os.path.join(workdir, "verify.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    print()
    print(table(report))
    print(f"\nreport: {os.path.join(workdir, 'verify.json')}")
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
