from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components.platform import image


@dsl.component(base_image=image("clip"), install_kfp_package=False)
def clip(recipe: str, store: str, run_id: str, overrides: str, model: Output[Model], metrics: Output[Metrics]):
    """Train the embed model contrastively on synthetic scenes (tiny recipes); nothing when clip.steps is 0."""
    from ovpipe import tasks

    body = tasks.clip(recipe, store, run_id, overrides)
    if body is not None:
        model.uri = body["outputs"][0]["uri"]  # the open_clip state dict embed loads
    tasks.publish(body, None, model.metadata, metrics)
