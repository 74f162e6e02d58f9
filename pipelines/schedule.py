"""Nightly evaluation: a KFP recurring run of the evaluation pipeline (compiled/evaluation.yaml).

    KFP_HOST=https://kfp.example.org make schedule-eval CRON="0 0 2 * * *" CHECKPOINT=latest

CHECKPOINT `latest` is resolved by each run (the store's newest export), so one schedule keeps
evaluating whatever training published last. KFP crons have six fields (seconds first).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import kfp

COMPILED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compiled", "evaluation.yaml")
EXPERIMENT = "ovpipe-nightly-eval"


def check_cron(cron: str) -> str:
    fields = cron.split()
    if len(fields) != 6:
        raise ValueError(f"cron {cron!r}: KFP needs 6 fields (second minute hour day month weekday), "
                         f"e.g. '0 0 2 * * *' for 02:00 every day")
    return " ".join(fields)


def schedule_eval(host: str, cron: str, checkpoint: str, *, recipe: str, store: str, run_id: str,
                  overrides: str = "{}", name: str = "ovpipe-nightly-eval", experiment: str = EXPERIMENT,
                  service_account: str | None = None, client=None):
    """Create the recurring run; returns kfp's V2beta1RecurringRun."""
    cron = check_cron(cron)  # before any request
    client = client or kfp.Client(host=host)
    exp = client.create_experiment(name=experiment)  # returns the existing one when the name is taken
    return client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=name, description=f"lmms-eval of {checkpoint} ({cron})",
        cron_expression=cron, max_concurrency=1, no_catchup=True, enable_caching=False,
        pipeline_package_path=COMPILED, service_account=service_account,
        params={"checkpoint": checkpoint, "recipe": recipe, "store": store, "run_id": run_id, "overrides": overrides})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cron", required=True, help="6-field cron, e.g. '0 0 2 * * *'")
    ap.add_argument("--checkpoint", default="latest", help="export URI, 'latest' or 'latest:<run id>'")
    ap.add_argument("--recipe", default="configs/recipes/ov15-8b.yaml")
    ap.add_argument("--store", default=os.environ.get("OVPIPE_STORE", "s3://ovpipe/runs"))
    ap.add_argument("--run-id", default="nightly-eval", help="where the eval outputs go in the store")
    ap.add_argument("--name", default="ovpipe-nightly-eval")
    ap.add_argument("--service-account", default=os.environ.get("KFP_SERVICE_ACCOUNT"))
    args = ap.parse_args(argv)
    host = os.environ.get("KFP_HOST")
    if not host:
        print("schedule-eval: set KFP_HOST to the KFP API endpoint (e.g. http://ml-pipeline-ui.kubeflow)",
              file=sys.stderr)
        return 2
    try:
        rr = schedule_eval(host, args.cron, args.checkpoint, recipe=args.recipe, store=args.store,
                           run_id=args.run_id, name=args.name, service_account=args.service_account)
    except ValueError as exc:
        print(f"schedule-eval: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"recurring_run_id": rr.recurring_run_id, "cron": check_cron(args.cron),
                      "checkpoint": args.checkpoint, "host": host}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
