from kfp import dsl
from kfp.dsl import Markdown, Metrics, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def evaluate(recipe: str, store: str, run_id: str, overrides: str, checkpoint: str, metrics: Output[Metrics],
             report: Output[Markdown]):
    """lmms-eval on an export ('' = this run's latest stage, 'latest', or a URI); scores to KFP and MLflow."""
    from ovpipe import tasks

    body = tasks.evaluate(recipe, store, run_id, overrides, checkpoint)
    tasks.publish_scores(body, metrics, report.path)
