from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.platform import image


@dsl.component(base_image=image("data"), install_kfp_package=False)
def collect(step: str, recipe: str, store: str, run_id: str, overrides: str, done: list,
            manifest: Output[Dataset], metrics: Output[Metrics], dataset: str = "mid"):
    """Check every shard of a step is committed, merge rejects, write the step's manifest."""
    from ovpipe import tasks

    tasks.publish(tasks.finalize(step, recipe, store, run_id, overrides, dataset), manifest.path,
                  manifest.metadata, metrics)
