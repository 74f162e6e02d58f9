from kfp import dsl
from kfp.dsl import Dataset, Output

from components.platform import image


@dsl.component(base_image=image("synth"), install_kfp_package=False)
def synth(recipe: str, store: str, run_id: str, overrides: str, corpus: Output[Dataset], dataset: str = "mid"):
    """Write a synthetic corpus: raw scenes (mid), alignment pairs (stage1) or conversations (sft);
    a no-op when the recipe names that dataset's input."""
    from ovpipe import tasks

    tasks.publish(tasks.synth(recipe, store, run_id, overrides, dataset), corpus.path, corpus.metadata)
