from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components.platform import image


@dsl.component(base_image=image("vit"), install_kfp_package=False)
def vit(recipe: str, store: str, run_id: str, overrides: str, model: Output[Model], metrics: Output[Metrics]):
    """Pretrain the vision tower on labelled synthetic scenes (tiny recipes); nothing when vit.steps is 0."""
    from ovpipe import tasks

    body = tasks.vit(recipe, store, run_id, overrides)
    if body is not None:
        model.uri = body["outputs"][0]["uri"]  # the MLCDVisionModel folder stage 1 loads
    tasks.publish(body, None, model.metadata, metrics)
