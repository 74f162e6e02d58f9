"""Step `eval`: lmms-eval on a stage's Hugging Face export, with two controls, a report and tracking.

    score   the export (`latest`, `latest:<run>` or a URI), through `lmms-eval --model ovpipe`
    before  the same recipe's model untrained (seeded random init, exported once): what training added
    blind   the export with every image replaced by flat gray: must stay near chance, or the answers
            come from the question, not from the image

Tasks: the local held-out synthetic tasks (eval.local_tasks) and any lmms-eval task names in
eval.tasks (the paper's benchmarks on a cluster, read from eval.datasets_cache; nothing is
downloaded). lmms-eval's results JSON and sample logs go to `{run}/{eval step}/lmms-eval/<variant>/`;
the report (report.md, report.html, scores.png) beside them; every score is logged to the MLflow run
of the evaluated stage; the manifest's metrics hold, per task, {score, chance, before, blind, metric}.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from ovpipe import faults, manifest, storage
from ovpipe.evaluate import exports, report
from ovpipe.sharded import Context

VARIANTS = ("score", "before", "blind")


def step_folder(stage: str) -> str:
    return "eval" if stage in ("sft", "unknown") else f"eval-{stage}"


def untrained_export(ctx: Context, local_dir: str) -> str:
    """The recipe's model at initialization (the seed training starts from), exported like a stage. Eval is
    one process, so the model is built unsharded (tensor_parallel 1) with the recipe's vocabulary rows."""
    import dataclasses

    import torch

    from ovpipe.models.convert import export_hf, language_state, load_pretrained, vocab_rows
    from ovpipe.models.vlm import build_model
    from ovpipe.packing.lengths import get_tokenizer, tokenizer_uri
    from ovpipe.train.loop import init_distributed
    from ovpipe.train.vit import vision_weights

    one = dataclasses.replace(ctx.recipe, train=dataclasses.replace(ctx.recipe.train, tensor_parallel=1,
                                                                   pipeline_parallel=1))
    init_distributed(one)
    tok = get_tokenizer(ctx)
    vocab, rows = vocab_rows(ctx.recipe, len(tok))
    torch.manual_seed(ctx.recipe.seed)  # what train.loop.setup does before stage 1
    model = build_model(one, vocab, image_pad_id=tok.convert_tokens_to_ids("<|image_pad|>"))
    load_pretrained(model, one, vision_weights(ctx))
    return export_hf(model, one, storage.localize(tokenizer_uri(ctx)), local_dir, rows, language_state(model))


def run_lmms_eval(model_uri: str, tasks: list[str], include: list[str], out_dir: str, cfg, *, gray: bool = False,
                  log=print) -> dict:
    """One `lmms-eval --model ovpipe` run (the CLI itself, in a subprocess); returns its results JSON."""
    args = f"pretrained={model_uri},batch_size={cfg.batch_size}"
    if gray:
        args += ",gray_images=True"
    if cfg.device != "auto":
        args += f",device={cfg.device}"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "ovpipe", "--model_args", args, "--tasks", ",".join(tasks),
           "--batch_size", str(cfg.batch_size), "--output_path", out_dir, "--log_samples"]
    for path in include:
        cmd += ["--include_path", path]
    if cfg.limit:
        cmd += ["--limit", str(cfg.limit)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if cfg.datasets_cache:
        env["HF_DATASETS_CACHE"] = storage.localize(cfg.datasets_cache)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"lmms-eval failed (exit {proc.returncode}) on {model_uri}:\n{proc.stderr[-4000:]}")
    found = sorted(glob.glob(os.path.join(out_dir, "**", "*_results.json"), recursive=True), key=os.path.getmtime)
    if not found:
        raise RuntimeError(f"lmms-eval wrote no *_results.json under {out_dir}:\n{proc.stdout[-2000:]}")
    log(f"  lmms-eval {'(gray images) ' if gray else ''}on {model_uri}: {time.perf_counter() - t0:.0f} s")
    with open(found[-1]) as f:
        return json.load(f)


def task_scores(results: dict, metrics: dict[str, str]) -> dict[str, float]:
    """{task: value} of each task's metric (lmms-eval keys them "metric,filter")."""
    out = {}
    for task, values in results.get("results", {}).items():
        want = metrics.get(task)
        for key, value in values.items():
            name = key.split(",")[0]
            if isinstance(value, (int, float)) and "stderr" not in name and (want is None or name == want):
                out[task] = float(value)
                break
    return out


def _stage_mlflow_run(store: str, run_id: str, stage: str) -> str | None:
    """The MLflow run the evaluated stage logged into (from its manifest), if any."""
    uri = storage.join(store, run_id, stage, "manifest.json")
    return storage.read_json(uri).get("metrics", {}).get("mlflow_run_id") if storage.exists(uri) else None


def _mlflow_log(ctx: Context, stage: str, run_id: str, scores: dict, store: str) -> str | None:
    """Scores onto the MLflow run of the evaluated stage."""
    mlflow_run = _stage_mlflow_run(store, run_id, stage)
    if not mlflow_run:
        return None
    from mlflow.entities import Metric

    from ovpipe.train.tracking import Tracker

    tracker = Tracker(store, run_id, stage, {}, mlflow_run)
    ts = int(time.time() * 1000)
    items = [Metric(f"eval.{task}.{k}" if k != "score" else f"eval.{task}", float(v), ts, 0)
             for task, s in scores.items() for k, v in s.items() if isinstance(v, (int, float))]
    tracker.client.log_batch(mlflow_run, metrics=items)
    return mlflow_run


def wanted(recipe, checkpoint: str | None) -> bool:
    """False for an earlier stage's export ("stage:stage1" / "stage:mid") unless eval.after_each_stage."""
    early = bool(checkpoint) and checkpoint.startswith("stage:") and checkpoint != "stage:sft"
    return not early or recipe.eval.after_each_stage


def run(ctx: Context, checkpoint: str | None = None, log=print) -> dict | None:
    """Evaluate; None when `checkpoint` is an earlier stage ("stage:stage1"/"stage:mid") and the recipe
    does not ask for eval.after_each_stage."""
    from ovpipe.evaluate.local_tasks import write_tasks

    t_start = time.perf_counter()
    cfg = ctx.recipe.eval
    if not wanted(ctx.recipe, checkpoint):
        log(f"eval of {checkpoint}: skipped (eval.after_each_stage is false)")
        return None
    target = exports.resolve(checkpoint or f"latest:{ctx.run_id}", ctx.store, ctx.run_id)
    from ovpipe.train.tracking import preflight

    # the scores go onto the stage's MLflow run: that store must answer and hold it before lmms-eval starts
    preflight(ctx.store, _stage_mlflow_run(ctx.store, target["run_id"], target["stage"]))
    step = step_folder(target["stage"])
    with tempfile.TemporaryDirectory(prefix="ovpipe-eval-") as tmp:
        info, include = {}, []
        if cfg.local_tasks:
            info = write_tasks(os.path.join(tmp, "tasks"), seed=cfg.seed, count=cfg.count,
                               size=ctx.recipe.packing.sft.image_size)
            info = {t: i for t, i in info.items() if i["format"] in cfg.formats}
            include.append(os.path.join(tmp, "tasks"))
        if cfg.include_path:
            include.append(storage.localize(cfg.include_path))
        tasks = list(info) + [t for t in cfg.tasks if t not in info]
        if not tasks:
            raise ValueError("nothing to evaluate: eval.local_tasks is false and eval.tasks is empty")
        metric_of = {t: i["metric"] for t, i in info.items()}
        models = {"score": (target["uri"], False)}
        if cfg.before:
            models["before"] = (untrained_export(ctx, os.path.join(tmp, "untrained")), False)
        if cfg.blind:
            models["blind"] = (target["uri"], True)

        def one(variant: str) -> dict:
            uri, gray = models[variant]
            out = os.path.join(tmp, "lmms-eval", variant)
            found = task_scores(run_lmms_eval(uri, tasks, include, out, cfg, gray=gray, log=log), metric_of)
            storage.put_tree(out, ctx.uri(step, "lmms-eval", variant))
            faults.point("mid_eval", step)
            return found

        # each run is mostly its own start-up (imports, task set-up): on CPU they overlap well
        with ThreadPoolExecutor(max(1, cfg.parallel_runs)) as pool:
            raw = dict(zip(models, pool.map(one, models)))
        scores = {}
        for task in tasks:
            if task not in raw["score"]:
                raise RuntimeError(f"lmms-eval reported no score for task {task!r}")
            scores[task] = {"score": raw["score"][task], "chance": info.get(task, {}).get("chance"),
                            "before": raw.get("before", {}).get(task), "blind": raw.get("blind", {}).get(task),
                            "metric": metric_of.get(task, "")}
        title = f"{target['run_id']} · {target['stage']} · {target['uri']}"
        chart = os.path.join(tmp, "scores.png")
        report.bar_chart(scores, chart, f"{target['run_id']} · {target['stage']}")
        files = {"report.md": report.markdown(scores, title),
                 "report.html": report.html_page(scores, title, "scores.png"),
                 "scores.json": json.dumps(scores, indent=2, sort_keys=True)}
        for name, text in files.items():
            storage.write_text(ctx.uri(step, name), text)
        storage.put_file(chart, ctx.uri(step, "scores.png"))
    mlflow_run = _mlflow_log(ctx, target["stage"], target["run_id"], scores, ctx.store)
    body = manifest.build(step, ctx.run_id, ctx.recipe.to_dict(), [manifest.ref(storage.join(
        target["uri"], "ovpipe.json"))], [{"uri": ctx.uri(step, "scores.json"), "sha256": storage.sha256_uri(
            ctx.uri(step, "scores.json")), "samples": len(scores)}], manifest.counts(len(tasks), len(tasks), {}),
        time.perf_counter() - t_start, metrics=scores, evaluated=target, mlflow_run_id=mlflow_run,
        reports=[ctx.uri(step, n) for n in ("report.md", "report.html", "scores.png")])
    manifest.write(ctx.uri(step, "manifest.json"), body)
    log(report.text_table(scores))
    log("  reports: " + "  ".join(body["reports"]))
    return body
