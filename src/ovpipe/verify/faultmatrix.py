"""The fault matrix: kill every step at each of its fault points (ovpipe.faults), rerun it, and require the
same data artifacts (sha256 of every output and rejects table) and the same training losses and eval
scores as a clean run.

    python -m ovpipe.verify.faultmatrix --store DIR [--points before_marker,…] [--steps embed,…] [--json OUT]

Each step runs as its own `ovpipe` process, as a KFP task would. One pass per point: OVPIPE_FAULT names
that point for every step, OVPIPE_FAULT_ONCE makes each fault fire once, and a step killed by its fault
is started again until it finishes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from ovpipe import manifest, steps, storage

RECIPE = "configs/recipes/tiny.yaml"  # run from the checkout
# Small corpora, short training: every step runs, each in seconds.
OVERRIDES = ["synth.shards=3", "synth.samples_per_shard=40", "balance.target=10000", "data.group_size=1",
             "data.workers=1", "packing.stage1.synth_shards=2", "packing.stage1.synth_samples_per_shard=40",
             "packing.sft.synth_shards=2", "packing.sft.synth_samples_per_shard=60", "packing.sequences_per_shard=4",
             "vit.steps=6", "vit.images=128", "vit.warmup_steps=1", "train.checkpoint_every=2",
             "clip.steps=4", "clip.images=64", "clip.val_images=32", "clip.batch_size=32", "clip.warmup_steps=1",
             "train.stage1.steps=4", "train.mid.steps=4", "train.sft.steps=4", "train.stage1.warmup_steps=1",
             "train.mid.warmup_steps=1", "train.sft.warmup_steps=1", "eval.count=6", "eval.parallel_runs=1"]
# The point each pass kills at, and which reach of it (the 2nd marker: one shard is committed already).
POINTS = {"mid_write": 1, "mid_shard": 2, "before_marker": 2, "before_manifest": 1,
          "mid_checkpoint": 2, "mid_export": 1, "mid_eval": 1}
TRAINING = ("vit", "stage1", "mid", "sft")


def folders(names=None) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(every (run folder, step, dataset) up to the last one named, in the order a run makes them;
    the folders named, which the faults are aimed at)."""
    data = [(steps.folder(s, d), s, d) for d in steps.DATASETS for s in steps.DATA_STEPS
            if d in steps.get(s).datasets]
    order = data + [(s, s, "mid") for s in (*TRAINING, "eval")]
    aimed = [f[0] for f in order if names is None or f[0] in names or f[1] in names]
    if not aimed:
        raise ValueError(f"steps {names}: none of {[f[0] for f in order]}")
    last = max(i for i, f in enumerate(order) if f[0] in aimed)
    return order[:last + 1], aimed


def _command(step: str, dataset: str, store: str, run_id: str) -> list[str]:
    cmd = [sys.executable, "-m", "ovpipe.cli", "train" if step in ("stage1", "mid", "sft") else step,
           "--recipe", RECIPE, "--store", store, "--run-id", run_id]
    cmd += ["--stage", step] if step in ("stage1", "mid", "sft") else []
    cmd += ["--dataset", dataset] if step in steps.DATASET_STEPS else []
    return cmd + [f"--set={o}" for o in OVERRIDES]


def run_steps(store: str, run_id: str, chosen, env: dict | None = None, log=print,
              log_dir: str | None = None) -> dict:
    """Run each chosen step to completion, starting it again whenever a fault killed it; returns
    {folder: kills}. Any other failure raises with the step's output tail. `log_dir` keeps every
    attempt's output (the secret scan reads it)."""
    kills = {}
    for folder, step, dataset in chosen:
        kills[folder] = 0
        while True:
            rc, out = _run_as_a_pod(_command(step, dataset, store, run_id), {**os.environ, **(env or {})})
            if log_dir:
                os.makedirs(log_dir, exist_ok=True)
                with open(os.path.join(log_dir, f"{run_id}.{folder}.{kills[folder]}.log"), "w") as f:
                    f.write(out)
            if rc == 0:
                break
            if rc == -signal.SIGKILL and "ovpipe fault:" in out and kills[folder] < 5:
                kills[folder] += 1
                fault = re.search(r"ovpipe fault: [^\n\r]*", out).group(0)  # may follow a progress bar's \r
                log(f"  {folder}: killed by its fault ({fault}); rerunning")
                continue
            raise RuntimeError(f"{folder} failed (exit {rc}):\n{out[-6000:]}")
    return kills


def _run_as_a_pod(cmd: list[str], env: dict, timeout: float = 3600) -> tuple[int, str]:
    """Run a step in its own process group and, when it ends, end the group as a pod's end would: a
    step killed mid-way can leave helper processes behind (checkpoint writers, compile workers)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if rc is None:
            proc.wait()
            raise RuntimeError(f"{' '.join(cmd[:4])}: still running after {timeout:.0f} s")
        out.seek(0)
        return rc, out.read()


def fingerprint(store: str, run_id: str, chosen) -> dict:
    """What must not change: every data output's and rejects table's sha256, the training losses, the scores."""
    run = storage.join(store, run_id)
    out = {}
    for folder, step, _ in chosen:
        body = manifest.read(storage.join(run, folder, "manifest.json"))
        if step in TRAINING:
            hist = storage.join(run, folder, "history.json")
            metrics = body.get("metrics", {})
            out[folder] = {"losses": [h["loss"] for h in storage.read_json(hist)]} if storage.exists(hist) else \
                {k: v for k, v in metrics.items() if k.startswith(("loss", "shape", "color", "count"))}
        elif step == "eval":
            scores = storage.read_json(storage.join(run, folder, "scores.json"))
            out[folder] = {t: s["score"] for t, s in scores.items()}
        else:
            files = sorted((storage.basename(o["uri"]), o["sha256"]) for o in body["outputs"])
            rejects = storage.join(run, folder, "rejects.parquet")
            files.append(("rejects.parquet", storage.sha256_uri(rejects) if storage.exists(rejects) else None))
            out[folder] = {"counts": body["counts"], "files": files}
    return out


def matrix(store: str, points=None, names=None, log=print, log_dir: str | None = None) -> dict:
    """The clean run, then one faulted run per point; returns the report: faults injected and survived
    (a pass survives when every step's fingerprint equals the clean run's), per pass what was killed."""
    chosen, aimed = folders(names)
    t0 = time.perf_counter()
    log(f"clean run of {len(chosen)} steps; faults aimed at {aimed}")
    run_steps(store, "clean", chosen, log=log, log_dir=log_dir)
    want = fingerprint(store, "clean", chosen)
    passes = []
    for point in points or POINTS:
        run_id = f"fault-{point}"
        once = os.path.join(storage._local(store), f"_faults-{point}")
        spec = ",".join(f"{folder}:{point}:{POINTS[point]}" for folder in aimed)
        log(f"pass {point}: OVPIPE_FAULT={point} for every step")
        kills = run_steps(store, run_id, chosen, {"OVPIPE_FAULT": spec, "OVPIPE_FAULT_ONCE": once}, log=log,
                          log_dir=log_dir)
        got = fingerprint(store, run_id, chosen)
        differ = sorted(f for f in want if got.get(f) != want[f])
        injected = sum(kills.values())
        passes.append({"point": point, "injected": injected, "killed": sorted(f for f, k in kills.items() if k),
                       "differ": differ, "compared": len(want)})
        log(f"  {injected} faults injected; " + (f"DIFFER: {differ}" if differ else "identical to the clean run"))
    return {"steps": aimed, "passes": passes, "seconds": round(time.perf_counter() - t0, 1),
            "injected": sum(p["injected"] for p in passes),
            "survived": sum(p["injected"] for p in passes if not p["differ"]),
            "checks": sum(p["compared"] for p in passes),
            "checks_passed": sum(p["compared"] - len(p["differ"]) for p in passes)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ovpipe.verify.faultmatrix", description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True, help="a local folder (created)")
    ap.add_argument("--points", help=f"comma-separated subset of {list(POINTS)}")
    ap.add_argument("--steps", help="comma-separated run folders or steps (default: all)")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    report = matrix(args.store, args.points.split(",") if args.points else None,
                    args.steps.split(",") if args.steps else None)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(f"faults injected {report['injected']}, survived {report['survived']} ({report['seconds']} s)")
    return 0 if report["injected"] and report["injected"] == report["survived"] else 1


if __name__ == "__main__":
    sys.exit(main())
