"""Evaluation pipeline: lmms-eval on one export — a URI, `latest` (the store's newest export, what the
nightly recurring run evaluates) or `latest:<run id>`."""
from kfp import dsl

from components.evaluate import evaluate
from components.platform import on_cluster


def eval_task(recipe: str, store: str, run_id: str, overrides: str, checkpoint: str, name: str = "eval"):
    task = on_cluster(evaluate(recipe=recipe, store=store, run_id=run_id, overrides=overrides, checkpoint=checkpoint),
                      cpu="8", memory="64G", gpu=1)
    task.set_display_name(name).set_caching_options(False)  # the same URI can hold a newer export
    return task


@dsl.pipeline(name="ovpipe-evaluation", description="lmms-eval on a checkpoint's Hugging Face export")
def evaluation(checkpoint: str = "latest", recipe: str = "configs/recipes/ov15-8b.yaml",
               store: str = "s3://ovpipe/runs", run_id: str = "nightly-eval", overrides: str = "{}"):
    eval_task(recipe, store, run_id, overrides, checkpoint)
