from typing import List

from kfp import dsl

from components.platform import image


@dsl.component(base_image=image("data"), install_kfp_package=False)
def plan(recipe: str, store: str, run_id: str, overrides: str, step: str = "embed",
         dataset: str = "mid") -> List[str]:
    """Shard ranges ('A-B') of a step's shards, one per ParallelFor task (pack: plans the bins first)."""
    from ovpipe import tasks

    return tasks.plan(recipe, store, run_id, overrides, step, dataset)
