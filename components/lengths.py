from kfp import dsl

from components.platform import image


@dsl.component(base_image=image("lengths"), install_kfp_package=False)
def lengths(recipe: str, store: str, run_id: str, overrides: str, shards: str, dataset: str) -> str:
    """Exact token lengths (chat template + text + image tokens from headers) for a shard range."""
    from ovpipe import tasks

    return tasks.process("lengths", recipe, store, run_id, overrides, shards, dataset=dataset)
