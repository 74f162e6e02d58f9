"""Packing DAG for one dataset: (synth) → lengths (ParallelFor) → global bin plan → packed shards
(ParallelFor) → energon metadata + manifest. Also a standalone pipeline for the stage-1 and stage-2
data, whose inputs do not depend on curation."""
from kfp import dsl

from components.collect import collect
from components.lengths import lengths
from components.pack import pack_write
from components.plan import plan
from components.platform import on_cluster
from components.synth import synth

PARALLELISM = 16


def packing_dag(recipe: str, store: str, run_id: str, overrides: str, dataset: str, after=None,
                steps=("synth", "lengths", "pack")) -> dsl.PipelineTask:
    """Add one dataset's packing tasks after `after`; returns the last task."""
    a = dict(recipe=recipe, store=store, run_id=run_id, overrides=overrides)
    last = after
    if dataset != "mid" and "synth" in steps:
        last = on_cluster(synth(dataset=dataset, **a).set_display_name(f"synth-{dataset}"))
    if "lengths" in steps:
        groups = on_cluster(plan(step="lengths", dataset=dataset, **a).set_display_name(f"plan-lengths-{dataset}"))
        if last is not None:
            groups.after(last)
        with dsl.ParallelFor(groups.output, parallelism=PARALLELISM) as shards:
            task = on_cluster(lengths(shards=shards, dataset=dataset, **a), cpu="2", memory="8G")
        last = on_cluster(collect(step="lengths", dataset=dataset, done=dsl.Collected(task.output), **a)
                          .set_display_name(f"lengths-collect-{dataset}"))
    if "pack" in steps:
        bins = on_cluster(plan(step="pack", dataset=dataset, **a), memory="32G")
        bins.set_display_name(f"pack-plan-{dataset}")
        if last is not None:
            bins.after(last)
        with dsl.ParallelFor(bins.output, parallelism=PARALLELISM) as shards:
            task = on_cluster(pack_write(shards=shards, dataset=dataset, **a), memory="8G")
        last = on_cluster(collect(step="pack", dataset=dataset, done=dsl.Collected(task.output), **a)
                          .set_display_name(f"pack-collect-{dataset}"))
    return last


@dsl.pipeline(name="ovpipe-packing", description="Stage-1 and stage-2 data: lengths → global packing → shards")
def packing(recipe: str = "configs/recipes/ov15-8b.yaml", store: str = "s3://ovpipe/runs",
            run_id: str = "ov15-8b", overrides: str = "{}"):
    for dataset in ("stage1", "sft"):
        packing_dag(recipe, store, run_id, overrides, dataset)
