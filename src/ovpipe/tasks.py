"""Entry points the KFP components call: plain functions of strings (no kfp here).

Every component passes the same four strings — recipe URI, store URI, run id, JSON overrides — plus
a shard range for per-shard work. Bulk data stays in the store; what goes back to KFP is small.
"""
from __future__ import annotations

import json
import logging
import os

from ovpipe import faults, sharded, steps
from ovpipe.data import source
from ovpipe.runtime import on_kubernetes
from ovpipe.sharded import Context, make_context
from ovpipe.steps import DATASET_STEPS

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def context(recipe: str, store: str, run_id: str, overrides: str = "{}") -> Context:
    extra = json.loads(overrides or "{}")
    if not isinstance(extra, dict):
        raise ValueError(f"overrides {overrides!r}: expected a JSON object of key.path → value")
    return make_context(recipe, store, run_id or None, [f"{k}={json.dumps(v)}" for k, v in extra.items()])


def synth(recipe: str, store: str, run_id: str, overrides: str, dataset: str = "mid") -> dict | None:
    """A synthetic corpus, unless the recipe names that dataset's input (then nothing to do)."""
    ctx = context(recipe, store, run_id, overrides)
    given = ctx.recipe.data.input if dataset == "mid" else getattr(ctx.recipe.packing, dataset).input
    if given:
        return None
    with faults.active(steps.folder("synth", dataset)):
        mod = steps.module("synth")
        mod.process(ctx, dataset=dataset)
        return mod.finalize(ctx, dataset=dataset)


def plan(recipe: str, store: str, run_id: str, overrides: str, step: str = "embed", dataset: str = "mid") -> list[str]:
    """Shard ranges ('A-B') for a ParallelFor loop over a step's shards, data.group_size per task."""
    ctx = context(recipe, store, run_id, overrides)
    if step == "lengths":
        from ovpipe.packing.datasets import dataset_shards

        n = len(dataset_shards(ctx, dataset))
    elif step == "pack":
        from ovpipe.packing.pack import plan as pack_plan

        n = pack_plan(ctx, dataset)["shards"]
    else:
        n = len(source.input_shards(ctx))
    return sharded.group_specs(n, ctx.recipe.data.group_size)


def process(step: str, recipe: str, store: str, run_id: str, overrides: str, shards: str, **kw) -> str:
    ctx = context(recipe, store, run_id, overrides)
    with faults.active(steps.folder(step, kw.get("dataset", "mid"))):
        steps.module(step).process(ctx, shards, 1, **kw)
    return shards


def concepts_index(recipe: str, store: str, run_id: str, overrides: str) -> str:
    from ovpipe.curation.concepts import build_vocab_index

    with faults.active("concepts"):
        return build_vocab_index(context(recipe, store, run_id, overrides))


def filter_dedup(recipe: str, store: str, run_id: str, overrides: str) -> str:
    from ovpipe.curation.filter import dedup_all

    with faults.active("filter"):
        return dedup_all(context(recipe, store, run_id, overrides))


def finalize(step: str, recipe: str, store: str, run_id: str, overrides: str, dataset: str = "mid") -> dict:
    """Collect a step's shards into its manifest (global steps run whole here)."""
    ctx = context(recipe, store, run_id, overrides)
    mod = steps.module(step)
    with faults.active(steps.folder(step, dataset)):
        if not hasattr(mod, "finalize"):
            return mod.run(ctx)
        return mod.finalize(ctx, dataset=dataset) if step in DATASET_STEPS else mod.finalize(ctx)


def publish(body: dict | None, dataset_path: str | None = None, metadata: dict | None = None,
            metrics=None) -> None:
    """Copy a manifest into the KFP artifact file and surface its numbers in the UI."""
    if body is None:
        return
    if dataset_path:
        os.makedirs(os.path.dirname(dataset_path), exist_ok=True)
        with open(dataset_path, "w") as f:
            json.dump(body, f, indent=2, sort_keys=True)
    counts = body["counts"]
    summary = {"step": body["step"], "in": counts["in"], "out": counts["out"],
               "rejected": sum(counts["rejected"].values()), "wall_seconds": body["wall_seconds"]}
    if metadata is not None:
        metadata.update(summary)
        metadata["rejected_by_reason"] = counts["rejected"]
    if metrics is not None:
        for key, value in {**summary, **body.get("metrics", {})}.items():
            if isinstance(value, (int, float)) and value == value:  # KFP metrics are numbers, NaN-free
                metrics.log_metric(key, float(value))


def clip(recipe: str, store: str, run_id: str, overrides: str) -> dict | None:
    """The embed model's contrastive pretraining, unless the recipe loads it (clip.steps 0: nothing to do)."""
    ctx = context(recipe, store, run_id, overrides)
    if not ctx.recipe.clip.steps:
        return None
    with faults.active("clip"):
        return steps.run(ctx, "clip")


def vit(recipe: str, store: str, run_id: str, overrides: str) -> dict | None:
    """The vision-tower pretraining step, unless the recipe loads its tower (vit.steps 0: nothing to do)."""
    ctx = context(recipe, store, run_id, overrides)
    if not ctx.recipe.vit.steps:
        return None
    from ovpipe.train.vit import run

    return run(ctx)


def train(stage: str, recipe: str, store: str, run_id: str, overrides: str) -> dict:
    """A training stage: locally (in-process or torchrun), or on a cluster as a TrainJob/PyTorchJob that
    this task creates, watches and fails with. Returns the stage's manifest."""
    from ovpipe import storage
    from ovpipe.train import launch

    ctx = context(recipe, store, run_id, overrides)
    if on_kubernetes():
        from ovpipe.train.tracking import preflight

        preflight(ctx.store)  # this task gets the same MLflow Secret as the job's pods: fail before the GPUs start
        # every node reads the same resolved recipe (overrides applied), content-addressed in the store
        uri = write_resolved_recipe(ctx)
        job = launch.build_job(ctx.recipe, stage, run_id=ctx.run_id, store=ctx.store, recipe_uri=uri)
        storage.write_text(ctx.uri(stage, "job.yaml"), launch.to_yaml(job))
        c = ctx.recipe.train.cluster
        launch.submit_and_wait(job, timeout_s=c.timeout_s, poll_s=c.poll_s)
    else:
        from ovpipe.train.loop import train_locally

        train_locally(ctx, stage, recipe, json.loads(overrides or "{}"))
    return storage.read_json(ctx.uri(stage, "manifest.json"))


def stage_local_files(ctx: Context) -> Context:
    """The same run with every local file the recipe names (vocabularies, tokenizer and weight folders)
    uploaded to `{store}/{run}/_inputs/<content digest>/<name>` and referred to there: for tasks that do
    not share this machine's filesystem (containers, pods)."""
    import dataclasses
    import hashlib

    from ovpipe import storage

    def digest(path: str) -> str:
        if os.path.isfile(path):
            return storage.sha256_uri(path)
        h = hashlib.sha256()
        for base, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                full = os.path.join(base, name)
                h.update(f"{os.path.relpath(full, path)}\0{storage.sha256_uri(full)}\n".encode())
        return h.hexdigest()

    def upload(path: str) -> str:
        key = digest(path)[:16]
        dest = storage.join(ctx.store, ctx.run_id, "_inputs", key, os.path.basename(path.rstrip("/")))
        done = storage.join(ctx.store, ctx.run_id, "_inputs", f"{key}.done")
        if not storage.exists(done):  # written after the upload: a partial one is redone
            (storage.put_file if os.path.isfile(path) else storage.put_tree)(path, dest)
            storage.write_text(done, dest)
        return dest

    def walk(obj):
        changes = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                changes[f.name] = walk(value)
            elif f.metadata.get("file") and value and not storage.is_remote(value):
                changes[f.name] = upload(value)
        return dataclasses.replace(obj, **changes)

    return Context(walk(ctx.recipe), ctx.store, ctx.run_id)


def write_resolved_recipe(ctx: Context) -> str:
    import yaml

    from ovpipe import storage

    resolved = yaml.safe_dump({k: v for k, v in ctx.recipe.to_dict().items() if k != "source"}, sort_keys=True)
    uri = storage.join(ctx.store, ctx.run_id, "_recipes", f"{storage.sha256_bytes(resolved.encode())[:16]}.yaml")
    storage.write_text(uri, resolved)
    return uri


def evaluate(recipe: str, store: str, run_id: str, overrides: str, checkpoint: str = "") -> dict | None:
    """The eval step on an export (default: this run's most advanced stage); returns its manifest."""
    from ovpipe.evaluate.step import run

    return run(context(recipe, store, run_id, overrides), checkpoint or None)


def eval_wanted(recipe: str, store: str, run_id: str, overrides: str, checkpoint: str) -> bool:
    """Does the recipe evaluate this export? (the pipeline schedules no GPU task for one it skips)"""
    from ovpipe.evaluate.step import wanted

    return wanted(context(recipe, store, run_id, overrides).recipe, checkpoint)


def publish_scores(body: dict, metrics, markdown_path: str) -> None:
    """Eval scores as KFP Metrics (task, task.before, task.blind, task.chance) and the Markdown report."""
    from ovpipe import storage

    os.makedirs(os.path.dirname(markdown_path), exist_ok=True)
    if body is None:
        with open(markdown_path, "w") as f:
            f.write("Skipped: the recipe evaluates only the final stage (eval.after_each_stage: false).\n")
        return
    for task, s in body["metrics"].items():
        for key in ("score", "before", "blind", "chance"):
            if isinstance(s.get(key), (int, float)):
                metrics.log_metric(task if key == "score" else f"{task}.{key}", float(s[key]))
    with open(markdown_path, "w") as f:
        f.write(storage.read_text(body["reports"][0]))
