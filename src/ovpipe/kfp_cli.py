"""`ovpipe kfp …`: the client operations on a Kubeflow Pipelines server, for pipelines compiled for a cluster
profile (`make compile PROFILE=…`; the default profile's are pipelines/compiled/).

    ovpipe kfp upload   [--pipeline full]            the pipeline, or a new version of it
    ovpipe kfp submit   --recipe R --run-id ID       a run (prints its id and UI URL)
    ovpipe kfp status   RUN_ID [--wait]              per-task states; the failed step and where its log is
    ovpipe kfp retry    RUN_ID                       rerun the failed tasks of a failed run (same run id)
    ovpipe kfp run-stage --stage mid --run ID        one training stage against an earlier run's store
    ovpipe kfp schedule --cron "0 0 2 * * *"         the nightly evaluation (a recurring run)

The host is --host, else KFP_HOST, else the profile's kfp.host. Retry vs resubmit: `retry` (the UI's Retry
button does the same) keeps the run and reruns only its failed tasks and their dependents; `submit` with
the same inputs is a new run in which cached tasks are skipped (every step also skips shards it committed).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

from ovpipe import kfp_rest
from ovpipe import profile as profiles
from ovpipe.config import ConfigError, load_recipe, parse_overrides
from ovpipe.steps import STAGES

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"}


def cron_fields(cron: str) -> str:
    fields = cron.split()
    if len(fields) != 6:
        raise ValueError(f"cron {cron!r}: KFP schedules take 6 fields (second minute hour day month weekday), "
                         "e.g. '0 0 2 * * *' for 02:00 every day")
    return " ".join(fields)


class Session:
    """A KFP client and the profile whose compiled pipelines it submits."""

    def __init__(self, args):
        self.profile = profiles.load(args.profile)
        host = args.host or os.environ.get("KFP_HOST") or self.profile.kfp.host
        if not host:
            raise ValueError("no KFP host: pass --host, set KFP_HOST, or set kfp.host in the cluster profile")
        self.client = kfp_rest.Client(host, kfp_rest.find_token(), insecure=args.insecure)
        self.namespace = self.profile.kfp.namespace

    def package(self, pipeline: str) -> tuple[str, bytes, dict]:
        path = os.path.join(profiles.compiled_dir(self.profile), f"{pipeline}.yaml")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not compiled for profile {self.profile.name} "
                                    f"(make compile PROFILE={self.profile.name})")
        with open(path, "rb") as f:
            content = f.read()
        import yaml

        spec = next(yaml.safe_load_all(content))
        return path, content, spec

    def upload(self, pipeline: str) -> dict:
        """The pipeline (created when missing) and its version for this exact file, uploaded when new:
        the version name is the profile and the file's digest, so an unchanged pipeline is reused."""
        path, content, spec = self.package(pipeline)
        name = spec["pipelineInfo"]["name"]
        version = f"{self.profile.name}-{hashlib.sha256(content).hexdigest()[:12]}"
        found = self.client.find_pipeline(name, self.namespace)
        if found is None:
            found = self.client.upload_pipeline(name, os.path.basename(path), content,
                                                spec["pipelineInfo"].get("description", ""), self.namespace)
        pid = found["pipeline_id"]
        existing = next((v for v in self.client.versions(pid) if v.get("display_name") == version), None)
        if existing is None:
            existing = self.client.upload_version(pid, version, os.path.basename(path), content,
                                                  f"compiled for cluster profile {self.profile.name}")
        return {"pipeline": name, "pipeline_id": pid, "version": version,
                "version_id": existing["pipeline_version_id"], "parameters": spec["root"]["inputDefinitions"]}

    def parameters(self, uploaded: dict, given: dict) -> dict:
        known = uploaded["parameters"].get("parameters", {})
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"pipeline {uploaded['pipeline']} has no parameters {unknown} (it has {sorted(known)})")
        return {k: v for k, v in given.items() if v is not None}

    def run(self, pipeline: str, display_name: str, params: dict, description: str = "") -> dict:
        uploaded = self.upload(pipeline)
        exp = self.client.experiment_id(self.profile.kfp.experiment, self.namespace)
        run = self.client.create_run(display_name, exp, uploaded["pipeline_id"], uploaded["version_id"],
                                     self.parameters(uploaded, params), self.profile.service_account, description)
        return {"run_id": run["run_id"], "url": self.client.run_url(run["run_id"]), "pipeline": uploaded["pipeline"],
                "version": uploaded["version"], "experiment_id": exp}


def _checked_recipe(recipe: str, overrides: list[str]) -> str:
    """A local recipe is read and checked before a cluster run is paid for; the run gets its path as the
    image sees it (the images carry configs/) or the URI as given."""
    if "://" not in recipe:
        load_recipe(recipe, overrides)
    return recipe


def _overrides(items: list[str]) -> str:
    return json.dumps(parse_overrides(items), sort_keys=True)


def task_names(s: Session, run: dict) -> dict[str, str]:
    """DAG task key → the name the pipeline gave it (train-2 → train-mid), from the run's pipeline version:
    the server reports tasks by key."""
    ref = run.get("pipeline_version_reference") or {}
    spec = run.get("pipeline_spec")
    if spec is None and ref.get("pipeline_id"):
        try:
            versions = s.client.versions(ref["pipeline_id"])
        except kfp_rest.KfpError:
            return {}
        spec = next((v.get("pipeline_spec") for v in versions
                     if v.get("pipeline_version_id") == ref.get("pipeline_version_id")), None)
    spec = (spec or {}).get("pipeline_spec", spec) or {}
    dags = [spec.get("root", {})] + list((spec.get("components") or {}).values())
    return {k: t.get("taskInfo", {}).get("name", k)
            for d in dags for k, t in (d.get("dag") or {}).get("tasks", {}).items()}


def task_lines(run: dict, namespace: str, names: dict[str, str]) -> tuple[list[str], list[str]]:
    """A line per task that did not succeed and a count of those that did, and the failed ones' names. A
    task whose upstream failed has no state (Argo omits it): it is shown as not run."""
    lines, failed, succeeded = [], [], 0
    for t in sorted((run.get("run_details") or {}).get("task_details") or [], key=lambda t: t.get("create_time", "")):
        key = t.get("display_name") or t.get("task_id")
        name = names.get(key, key)
        state = t.get("state") or ("NOT RUN (upstream failed)" if run.get("state") == "FAILED" else "PENDING")
        if state == "SUCCEEDED":
            succeeded += 1
            continue
        line = f"  {name:32s} {state}"
        if t.get("state") == "FAILED":
            failed.append(name)
            err = (t.get("error") or {}).get("message")
            pods = [c["pod_name"] for c in t.get("child_tasks") or [] if c.get("pod_name")] or \
                [p for p in [t.get("pod_name")] if p]
            line += (f": {err}" if err else "") + "".join(f"\n  {'':32s} log: kubectl -n {namespace} logs {p}"
                                                           for p in pods)
        lines.append(line)
    return [f"  {succeeded} tasks succeeded"] + lines, failed


def status(s: Session, run_id: str, wait: bool, poll_s: float = 15.0, out=print) -> int:
    while True:
        run = s.client.get_run(run_id)
        state = run.get("state", "PENDING")
        if not wait or state in TERMINAL:
            break
        time.sleep(poll_s)
    lines, failed = task_lines(run, s.profile.namespace, task_names(s, run))
    out(f"run {run_id} ({run.get('display_name', '')}): {state}   {s.client.run_url(run_id)}")
    for line in lines:
        out(line)
    if failed:
        out(f"failed: {', '.join(failed)} — logs in the UI (the task's Logs tab) or with kubectl above; "
            f"rerun them: ovpipe kfp retry {run_id}")
    return 1 if state in ("FAILED", "CANCELED") else 0


def build_parser(sub) -> None:
    kfp = sub.add_parser("kfp", help="upload, submit, follow, retry, run one stage, schedule (a KFP server)",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ops = kfp.add_subparsers(dest="op", required=True)

    def op(name: str, help: str):
        p = ops.add_parser(name, help=help)
        p.add_argument("--profile", default=os.environ.get(profiles.ENV_FILE) or profiles.DEFAULT,
                       help="cluster profile (configs/cluster/NAME.yaml) the pipelines were compiled for")
        p.add_argument("--host", default=None, help="KFP API endpoint (default: $KFP_HOST, else the profile's)")
        p.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
        return p

    def run_args(p, pipeline_default: str | None):
        if pipeline_default:
            p.add_argument("--pipeline", default=pipeline_default,
                           choices=("full", "curation", "packing", "training", "evaluation"))
        p.add_argument("--recipe", default="configs/recipes/ov15-8b.yaml", help="path in the image, or a URI")
        p.add_argument("--store", default=os.environ.get("OVPIPE_STORE", "s3://ovpipe/runs"))
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
        p.add_argument("--name", default=None, help="the run's display name")

    up = op("upload", "upload a compiled pipeline (a new version when it changed)")
    up.add_argument("--pipeline", default="full",
                    choices=("full", "curation", "packing", "training", "stage", "evaluation"))
    sm = op("submit", "submit a run; prints its id and UI URL")
    run_args(sm, "full")
    sm.add_argument("--run-id", required=True, help="the run's folder in the store")
    st = op("status", "a run's state, per task; the failed step and its log")
    st.add_argument("run_id")
    st.add_argument("--wait", action="store_true", help="poll until the run ends")
    rt = op("retry", "retry a failed run: only its failed tasks (and their dependents) run again")
    rt.add_argument("run_id")
    rs = op("run-stage", "one training stage of an earlier run, from that run's store")
    run_args(rs, None)
    rs.add_argument("--stage", required=True, choices=STAGES)
    rs.add_argument("--run", required=True, help="the earlier run's id (its folder in the store)")
    sc = op("schedule", "a recurring run of the evaluation pipeline (the nightly eval)")
    run_args(sc, None)
    sc.add_argument("--cron", required=True, help="6 fields, seconds first: '0 0 2 * * *' = 02:00 daily")
    sc.add_argument("--checkpoint", default="latest", help="export URI, 'latest' or 'latest:<run id>'")
    sc.add_argument("--run-id", default="nightly-eval", help="where the eval outputs go in the store")


def main(args) -> int:
    try:
        if args.op == "schedule":
            cron = cron_fields(args.cron)  # before any request
        s = Session(args)
        if args.op == "upload":
            print(json.dumps({k: v for k, v in s.upload(args.pipeline).items() if k != "parameters"}))
            return 0
        if args.op == "status":
            return status(s, args.run_id, args.wait)
        if args.op == "retry":
            s.client.retry_run(args.run_id)
            print(json.dumps({"run_id": args.run_id, "retried": True, "url": s.client.run_url(args.run_id)}))
            return 0
        recipe = _checked_recipe(args.recipe, args.set)
        params = {"recipe": recipe, "store": args.store, "overrides": _overrides(args.set)}
        if args.op == "submit":
            out = s.run(args.pipeline, args.name or args.run_id, {**params, "run_id": args.run_id})
        elif args.op == "run-stage":
            out = s.run("stage", args.name or f"{args.run}-{args.stage}",
                        {**params, "run_id": args.run, "stage": args.stage},
                        f"stage {args.stage} of run {args.run}")
        else:
            uploaded = s.upload("evaluation")
            exp = s.client.experiment_id(s.profile.kfp.experiment + "-nightly-eval", s.namespace)
            rr = s.client.create_recurring_run(
                args.name or "ovpipe-nightly-eval", exp, uploaded["pipeline_id"], uploaded["version_id"], cron,
                s.parameters(uploaded, {**params, "run_id": args.run_id, "checkpoint": args.checkpoint}),
                s.profile.service_account, f"lmms-eval of {args.checkpoint} ({cron})")
            out = {"recurring_run_id": rr["recurring_run_id"], "cron": cron, "checkpoint": args.checkpoint,
                   "experiment_id": exp, "version": uploaded["version"]}
        print(json.dumps(out))
        return 0
    except (kfp_rest.KfpError, ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"ovpipe kfp {args.op}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (ConfigError, ValueError)) else 1
