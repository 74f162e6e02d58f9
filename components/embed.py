from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def embed(recipe: str, store: str, run_id: str, overrides: str, shards: str) -> str:
    """MetaCLIP/open_clip image embeddings for a shard range (GPU when present)."""
    from ovpipe import tasks

    return tasks.process("embed", recipe, store, run_id, overrides, shards)
