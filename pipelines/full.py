"""The whole DAG: curation → packing of the curated corpus; stage-1 and stage-2 data packed beside it."""
from kfp import dsl

from components.evaluate import eval_wanted
from components.platform import STEPS, on_cluster
from pipelines.curation import curation_dag
from pipelines.evaluation import eval_task
from pipelines.packing import packing_dag
from pipelines.training import STAGES, training_dag

CURATION = STEPS.CURATION


def full_dag(recipe: str, store: str, run_id: str, overrides: str, steps=STEPS.NAMES, caption_gpus=1) -> None:
    a = dict(recipe=recipe, store=store, run_id=run_id, overrides=overrides)
    curated = None
    if set(steps) & set(CURATION):
        curated = curation_dag(steps=tuple(s for s in steps if s in CURATION), caption_gpus=caption_gpus, **a)
    packing = tuple(s for s in steps if s in ("synth", "lengths", "pack"))
    packed = {}
    if set(packing) - {"synth"}:
        packed["mid"] = packing_dag(dataset="mid", after=curated, steps=packing, **a)
    for dataset in ("stage1", "sft"):
        packed[dataset] = packing_dag(dataset=dataset, steps=packing, **a)
    stages = tuple(s for s in steps if s in STAGES)
    trained = {}
    if stages or "vit" in steps:
        trained = training_dag(stages=stages, after=packed if packing else None, pretrain="vit" in steps, **a)
    if "eval" in steps:
        # after sft; after stage1 and mid too when the recipe sets eval.after_each_stage: a CPU task reads
        # the recipe, and an eval it skips is never scheduled (no GPU held for nothing)
        for stage in STAGES if stages else ("sft",):
            if stage == "sft":
                task = eval_task(checkpoint=f"stage:{stage}", name=f"eval-{stage}", **a)
            else:
                wanted = on_cluster(eval_wanted(checkpoint=f"stage:{stage}", **a), memory="1G")
                wanted.set_display_name(f"eval-{stage}-wanted")
                with dsl.If(wanted.output == True, name=f"eval-{stage}"):  # noqa: E712 (a KFP condition)
                    task = eval_task(checkpoint=f"stage:{stage}", name=f"eval-{stage}", **a)
            if stage in trained:
                task.after(trained[stage])


@dsl.pipeline(name="ovpipe-full", description="Curation, packing, the three training stages and evaluation")
def full(recipe: str = "configs/recipes/ov15-8b.yaml", store: str = "s3://ovpipe/runs", run_id: str = "ov15-8b",
         overrides: str = "{}", caption_gpus: int = 4):
    full_dag(recipe, store, run_id, overrides, caption_gpus=caption_gpus)
