from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.platform import image


@dsl.component(base_image=image("balance"), install_kfp_package=False)
def balance(recipe: str, store: str, run_id: str, overrides: str, selected: Output[Dataset],
            metrics: Output[Metrics]):
    """Concept counts → inverse-frequency (or MetaCLIP) sampling → selected ids, plots, flatness."""
    from ovpipe import tasks

    tasks.publish(tasks.finalize("balance", recipe, store, run_id, overrides), selected.path,
                  selected.metadata, metrics)
