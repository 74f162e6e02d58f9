"""`ovpipe <step> …` runs one step over all (or some) shards; `ovpipe run` runs the DAG via kfp.local."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time

from ovpipe import kfp_cli, profile, steps, storage
from ovpipe.config import ConfigError
from ovpipe.sharded import Context, make_context
from ovpipe.steps import DATA_STEPS, DATASET_STEPS, STAGES

DEFAULT_RECIPE = "configs/recipes/tiny.yaml"


def default_store() -> str:
    return os.environ.get("OVPIPE_STORE") or os.path.abspath("store")


def container_environment(store: str, root: str) -> dict[str, str]:
    """What each task container gets (`--runner docker`): the object store's settings, as a pod gets them
    from its Secret, and one MLflow store that every container sees (in the mounted pipeline root)."""
    from ovpipe.train.tracking import MLFLOW_ENV

    env = {k: os.environ[k] for k in (*storage.S3_ENV, *MLFLOW_ENV, "AWS_REGION") if os.environ.get(k)}
    env.setdefault("MLFLOW_TRACKING_URI", "file:" + os.path.join(root, "mlruns"))
    return env


def run_local(args, ctx: Context) -> None:
    """`ovpipe run`: the DAG through kfp.local (pipelines/ holds the kfp side), then a summary."""
    from ovpipe.tasks import stage_local_files, write_resolved_recipe

    docker = args.runner == "docker"
    if docker:
        if not storage.is_remote(ctx.store):
            raise ValueError("--runner docker: task containers reach the store the way pods do, so --store must "
                             "be s3://… (make run RUNNER=docker starts a SeaweedFS server for it)")
        os.environ.setdefault(profile.ENV_FILE, "local")  # the profile of the images `make images` builds
    local = importlib.import_module("pipelines.local")  # after the profile is set: components read it
    chosen = local.select_steps(args.first, args.last)
    storage.ensure_bucket(ctx.store)
    root = os.path.join(os.path.abspath(".ovpipe") if storage.is_remote(ctx.store) else ctx.store,
                        ctx.run_id, "_kfp")
    env = None
    if docker:
        ctx = stage_local_files(ctx)  # the containers see none of this machine's files
        os.makedirs(root, exist_ok=True)
        os.chmod(root, 0o1777)  # the images run as uid 1000
        env = container_environment(ctx.store, root)
    # The tasks read the resolved recipe (overrides applied) from a content-addressed copy, so
    # kfp.local's cache, keyed on parameters, never serves results made with other settings.
    recipe = write_resolved_recipe(ctx)
    t0 = time.perf_counter()
    local.run(recipe, ctx.store, ctx.run_id, "{}", chosen, root, cache=not args.no_cache,
              runner=args.runner, environment=env)
    print(f"\novpipe: {', '.join(chosen)} finished in {time.perf_counter() - t0:.0f} s")
    print(summary(ctx, chosen))
    print(f"  outputs: {storage.join(ctx.store, ctx.run_id)}   (kfp task logs and artifacts: {root})")


def run_digests(args, ctx: Context) -> int:
    """`ovpipe digests`: the run's data-artifact digests (JSON), or with --against, how another run's differ."""
    from ovpipe import manifest

    folders = steps.folders(DATA_STEPS)
    mine = manifest.data_digests(storage.join(ctx.store, ctx.run_id), folders)
    if not args.against:
        print(json.dumps(mine, indent=1))
        return 0
    other = args.against if "/" in args.against else storage.join(ctx.store, args.against)
    theirs = manifest.data_digests(other, folders)
    diff = manifest.compare_digests(mine, theirs)
    print("\n".join(diff) if diff else f"{ctx.run_id} and {other}: the same data artifacts "
          f"({sum(len(v) for v in mine.values())} outputs of {len(mine)} steps: {', '.join(mine)})")
    return 1 if diff or not mine else 0


def summary(ctx: Context, names) -> str:
    """One line per finished step: counts, rejects by reason, manifest and plots."""
    lines = []
    folders = steps.folders(names)
    if "eval" in names:
        folders += ["eval-stage1", "eval-mid"]  # when eval.after_each_stage
    for step in folders:
        uri = ctx.uri(step, "manifest.json")
        if not storage.exists(uri):
            continue
        body = storage.read_json(uri)
        c = body["counts"]
        if not step.startswith("eval"):
            lines.append(f"  {step:14s} in={c['in']:<8d} out={c['out']:<8d} rejected={c['rejected']}")
        else:
            lines.append(f"  {step:14s} {body['evaluated']['uri']}")
        if "packing" in body:
            p = body["packing"]
            lines.append(f"  {'':14s} {p['bins']} sequences (lower bound {p['lower_bound']}), efficiency "
                         f"{p['efficiency']:.3%}, {p['compression']:.1f} samples per sequence")
        if step.startswith("eval"):
            from ovpipe.evaluate.report import text_table

            lines.append("\n".join(f"  {'':14s} {line}" for line in text_table(body["metrics"]).splitlines()))
            lines += [f"  {'':14s} report: {r}" for r in body.get("reports", [])]
        if step == "clip":
            m = body["metrics"]
            lines.append(f"  {'':14s} loss {m['loss_first']:.3f} -> {m['loss_last']:.3f} in {m['steps']} steps; "
                         f"held out: P@{m['k']} {m['precision_at_k']:.2f} "
                         f"(random init {m['random_init_precision_at_k']:.2f}), "
                         f"R@{m['k']} {m['recall_at_k']:.2f} ({m['random_init_recall_at_k']:.2f}), caption AUC "
                         f"{m['clip_score_auc']:.2f} ({m['random_init_clip_score_auc']:.2f}); model: "
                         f"{body['outputs'][0]['uri']}")
        if step == "vit":
            m = body["metrics"]
            lines.append(f"  {'':14s} loss {m['loss_first']:.3f} -> {m['loss_last']:.3f} in {m['steps']} steps; "
                         f"held-out accuracy: shape {m['shape_accuracy']:.2f}, color {m['color_accuracy']:.2f}, "
                         f"count {m['count_accuracy']:.2f}; tower: {body['outputs'][0]['uri']}")
        if step in STAGES:
            m = body["metrics"]
            lines.append(f"  {'':14s} loss {m['loss_first']:.3f} -> {m['loss_last']:.3f} in {m['steps']} steps, "
                         f"{m['tokens_per_second']:,.0f} tokens/s; export: {ctx.uri(step, 'hf')}")
        lines.append(f"  {'':14s} manifest: {uri}")
        lines += [f"  {'':14s} plot: {p}" for p in body.get("plots", [])]
    return "\n".join(lines)


def run_train(args, ctx: Context) -> int:
    """`ovpipe train --stage S`: in this process, or under torchrun when the recipe asks for more processes."""
    from ovpipe.train.loop import train_locally

    sets = args.set + ([f"data.input={args.input}"] if args.input else [])
    body = train_locally(ctx, args.stage, args.recipe, sets)
    if body is not None:
        print(json.dumps({"step": body["step"], "metrics": body["metrics"],
                          "manifest": ctx.uri(body["step"], "manifest.json")}))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help="recipe path or URI (default: %(default)s)")
    p.add_argument("--store", default=None, help="store URI: a folder or s3://bucket/prefix "
                   "(default: $OVPIPE_STORE or ./store)")
    p.add_argument("--run-id", default=None, help="run folder under the store (default: the recipe name)")
    p.add_argument("--input", default=None, help="input shards (folder or s3:// prefix) instead of synth")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    p.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline locally through kfp.local")
    rehearse = sub.add_parser("rehearse", help="write the recipe's inputs where it names them (random init, "
                              "configs/recipes/rehearsal.yaml), run the DAG, check and report what it showed")
    for p in (run, rehearse):
        _common(p)
        p.add_argument("--from", dest="first", choices=steps.NAMES, default=None, help="first step to run")
        p.add_argument("--until", dest="last", choices=steps.NAMES, default=None, help="last step to run")
        p.add_argument("--no-cache", action="store_true", help="disable kfp.local caching")
        p.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                       help="subprocess: each task a process of the installed package; docker: each task in its "
                            "component's image (DOCKER_HOST; make images builds them)")
    kfp_cli.build_parser(sub)
    dig = sub.add_parser("digests", help="a run's data-artifact digests; --against RUN: do two runs hold the "
                         "same data (e.g. the docker and subprocess runners)")
    _common(dig)
    dig.add_argument("--against", default=None, metavar="RUN", help="another run: its id in the same store, or its "
                     "folder/URI (e.g. ./store/tiny)")
    vit = sub.add_parser("vit", help="pretrain the vision tower on labelled synthetic scenes (vit.steps > 0)")
    _common(vit)
    train = sub.add_parser("train", help="train one stage on megatron-core (torchrun when train.processes > 1)")
    _common(train)
    train.add_argument("--stage", required=True, choices=STAGES)
    ev = sub.add_parser("eval", help="lmms-eval on a stage's export: scores, controls, report, MLflow")
    _common(ev)
    ev.add_argument("--checkpoint", default=None, help="export URI, 'latest' (the store's newest) or "
                    "'latest:<run id>' (default: latest:<this run id>)")
    for step in DATA_STEPS:
        p = sub.add_parser(step, help=f"run the {step} step")
        _common(p)
        p.add_argument("--shards", default="all", help="'all', 'N', 'A-B' or 'A,B' (per-shard steps)")
        p.add_argument("--workers", type=int, default=None, help="local processes (default: data.workers)")
        p.add_argument("--no-finalize", action="store_true", help="process shards only, write no manifest")
        if step in DATASET_STEPS:
            p.add_argument("--dataset", default="mid", choices=("mid", "stage1", "sft"),
                           help="mid: the curated corpus; stage1: alignment pairs; sft: conversations")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "kfp":  # a KFP server's client: no recipe of this machine's run to read first
        return kfp_cli.main(args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    store = args.store or default_store()
    try:
        ctx = make_context(args.recipe, store, args.run_id, args.set, args.input)
    except ConfigError as exc:
        print(f"ovpipe: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        if args.command == "run":
            run_local(args, ctx)
            return 0
        if args.command == "rehearse":
            from ovpipe.rehearsal import prepare, report

            prepare.prepare(ctx.recipe)
            run_local(args, ctx)
            report.write(ctx, time.perf_counter() - t0)
            return 0
        if args.command == "train":
            return run_train(args, ctx)
        if args.command == "digests":
            return run_digests(args, ctx)
        if args.command == "eval":
            from ovpipe.evaluate.step import run as run_eval

            run_eval(ctx, args.checkpoint)
            return 0
        if args.command == "vit":
            body = steps.run(ctx, "vit")
        else:
            workers = args.workers or ctx.recipe.data.workers
            kw = {"dataset": args.dataset} if args.command in DATASET_STEPS else {}
            if args.no_finalize:
                steps.module(args.command).process(ctx, args.shards, workers, **kw)
                return 0
            body = steps.run(ctx, args.command, args.shards, workers, **kw)
    except (storage.StorageError, ValueError, RuntimeError, FileNotFoundError) as exc:
        if args.verbose or args.command == "train":  # a stage that fails after setup: where, for whoever debugs it
            import traceback

            traceback.print_exc()
        print(f"ovpipe {args.command}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"step": body["step"], "counts": body["counts"], "seconds": round(time.perf_counter() - t0, 1),
                      "manifest": ctx.uri(body["step"], "manifest.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
