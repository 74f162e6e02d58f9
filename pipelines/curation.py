"""Curation DAG: (synth | input), (clip: the embed model's pretraining, tiny recipes) → embed → concepts →
balance → caption → filter.

Per-shard steps fan out with ParallelFor over shard ranges from `plan`; a `collect` task after each
loop checks every shard is committed and writes the step manifest. Tasks pass only small strings;
the data moves through the store under {store}/{run_id}/{step}/.
"""
from kfp import dsl

from components.balance import balance
from components.caption import caption
from components.clip import clip
from components.collect import collect
from components.concepts import concepts, concepts_index
from components.embed import embed
from components.filter import filter_dedup, filter_rules, filter_write
from components.plan import plan
from components.platform import STEPS, on_cluster
from components.synth import synth

PARALLELISM = 16  # concurrent shard-range tasks per loop on the cluster


def curation_dag(recipe: str, store: str, run_id: str, overrides: str, steps=STEPS.CURATION,
                 caption_gpus=1) -> dsl.PipelineTask:
    """Add the curation tasks for `steps` (a contiguous subset of the curation steps); returns the last task.

    caption_gpus: GPUs per caption task (the recipe's caption.tensor_parallel for vLLM)."""
    a = dict(recipe=recipe, store=store, run_id=run_id, overrides=overrides)
    last = None
    if "synth" in steps:
        last = on_cluster(synth(**a).set_display_name("synth"))
    groups = on_cluster(plan(**a))
    if last is not None:
        groups.after(last)
    last = groups
    model = on_cluster(clip(**a).set_display_name("clip"), cpu="4", memory="8G") if "clip" in steps else None
    if model is not None:
        last = model
    if "embed" in steps or "concepts" in steps:
        index = on_cluster(concepts_index(**a), gpu=1, memory="16G") if "concepts" in steps else None
        if index is not None and model is not None:
            index.after(model)  # the vocabulary is embedded with the trained text tower
        with dsl.ParallelFor(groups.output, parallelism=PARALLELISM) as shards:
            e = on_cluster(embed(**a, shards=shards), gpu=1, cpu="8", memory="32G") if "embed" in steps else None
            if e is not None and model is not None:
                e.after(model)
            if index is not None:
                c = on_cluster(concepts(**a, shards=shards).after(index), memory="8G")
                if e is not None:
                    c.after(e)
        if e is not None:
            last = on_cluster(collect(step="embed", done=dsl.Collected(e.output), **a)
                              .set_display_name("embed-collect"))
        if index is not None:
            done = on_cluster(collect(step="concepts", done=dsl.Collected(c.output), **a))
            last = done.set_display_name("concepts-collect").after(last)
    if "balance" in steps:
        last = on_cluster(balance(**a), memory="32G").after(last)
    if "caption" in steps or "filter" in steps:
        with dsl.ParallelFor(groups.output, parallelism=PARALLELISM) as shards:
            cap = on_cluster(caption(**a, shards=shards), gpu=caption_gpus, cpu="8", memory="64G").after(last) \
                if "caption" in steps else None
            if "filter" in steps:
                rules = on_cluster(filter_rules(**a, shards=shards), memory="8G").after(last)
                if cap is not None:
                    rules.after(cap)
        if cap is not None:
            last = on_cluster(collect(step="caption", done=dsl.Collected(cap.output), **a)
                              .set_display_name("caption-collect"))
        if "filter" in steps:
            dedup = on_cluster(filter_dedup(rules_done=dsl.Collected(rules.output), **a), memory="32G").after(last)
            with dsl.ParallelFor(groups.output, parallelism=PARALLELISM) as shards:
                write = on_cluster(filter_write(**a, shards=shards, dedup=dedup.output), memory="8G")
            last = on_cluster(collect(step="filter", done=dsl.Collected(write.output), **a)
                              .set_display_name("filter-collect"))
    return last


@dsl.pipeline(name="ovpipe-curation", description="MetaCLIP embedding → concepts → balance → caption → filter")
def curation(recipe: str = "configs/recipes/ov15-8b.yaml", store: str = "s3://ovpipe/runs",
             run_id: str = "ov15-8b", overrides: str = "{}", caption_gpus: int = 4):
    curation_dag(recipe, store, run_id, overrides, caption_gpus=caption_gpus)
