from kfp import dsl

from components.platform import image


@dsl.component(base_image=image("embed"), install_kfp_package=False)
def embed(recipe: str, store: str, run_id: str, overrides: str, shards: str) -> str:
    """MetaCLIP/open_clip image embeddings for a shard range (GPU when present)."""
    from ovpipe import tasks

    return tasks.process("embed", recipe, store, run_id, overrides, shards)
