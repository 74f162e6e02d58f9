from kfp import dsl
from kfp.dsl import Markdown, Metrics, Output

from components.platform import image


@dsl.component(base_image=image("eval"), install_kfp_package=False)
def evaluate(recipe: str, store: str, run_id: str, overrides: str, checkpoint: str, metrics: Output[Metrics],
             report: Output[Markdown]):
    """lmms-eval on an export ('' = this run's latest stage, 'latest', or a URI); scores to KFP and MLflow."""
    from ovpipe import tasks

    body = tasks.evaluate(recipe, store, run_id, overrides, checkpoint)
    tasks.publish_scores(body, metrics, report.path)


@dsl.component(base_image=image("data"), install_kfp_package=False)
def eval_wanted(recipe: str, store: str, run_id: str, overrides: str, checkpoint: str) -> bool:
    """Whether the recipe evaluates this export (eval.after_each_stage), so a skipped eval takes no GPU."""
    from ovpipe import tasks

    return tasks.eval_wanted(recipe, store, run_id, overrides, checkpoint)
