"""Training DAG: (vit: the tower's pretraining, tiny recipes) → stage 1 (projector) → stage 1.5 (mid) →
stage 2 (sft), each after its packed data."""
from kfp import dsl

from components.platform import STEPS, on_cluster
from components.train import train
from components.vit import vit

STAGES = STEPS.STAGES


def training_dag(recipe: str, store: str, run_id: str, overrides: str, stages=STAGES, after=None, pretrain=True):
    """Chain the selected stages, after the vit task when `pretrain`; `after` maps a stage to the task its
    data comes from. Returns the tasks."""
    a = dict(recipe=recipe, store=store, run_id=run_id, overrides=overrides)
    tasks, last = {}, None
    if pretrain:
        last = on_cluster(vit(**a).set_display_name("vit"), cpu="4", memory="8G")
    for stage in stages:
        # the task only submits and watches the TrainJob on a cluster: no GPU, little memory
        task = on_cluster(train(stage=stage, **a).set_display_name(f"train-{stage}"), cpu="1", memory="2G",
                          retries=1, profile_env=True)
        task.set_caching_options(False)  # a stage resumes from its own checkpoints instead
        for dep in (last, (after or {}).get(stage)):
            if dep is not None:
                task.after(dep)
        tasks[stage], last = task, task
    return tasks


@dsl.pipeline(name="ovpipe-training",
              description="The vit step (tiny recipes) and the three training stages on an earlier run's packed data")
def training(recipe: str = "configs/recipes/ov15-8b.yaml", store: str = "s3://ovpipe/runs", run_id: str = "ov15-8b",
             overrides: str = "{}"):
    training_dag(recipe, store, run_id, overrides)


@dsl.pipeline(name="ovpipe-stage", description="One training stage (stage1 | mid | sft) on an earlier run's data "
              "and checkpoints: `ovpipe kfp run-stage`")
def stage(stage: str = "mid", recipe: str = "configs/recipes/ov15-8b.yaml", store: str = "s3://ovpipe/runs",
          run_id: str = "ov15-8b", overrides: str = "{}"):
    task = on_cluster(train(stage=stage, recipe=recipe, store=store, run_id=run_id, overrides=overrides),
                      cpu="1", memory="2G", retries=1, profile_env=True)
    task.set_display_name("train").set_caching_options(False)
