from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components.platform import image


@dsl.component(base_image=image("data"), install_kfp_package=False)
def train(stage: str, recipe: str, store: str, run_id: str, overrides: str, model: Output[Model],
          metrics: Output[Metrics]):
    """A training stage (stage1 | mid | sft): local torchrun, or a TrainJob this task creates and watches."""
    from ovpipe import tasks

    body = tasks.train(stage, recipe, store, run_id, overrides)
    model.uri = body["outputs"][1]["uri"]  # the Hugging Face export
    tasks.publish(body, None, model.metadata, metrics)
