from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def caption(recipe: str, store: str, run_id: str, overrides: str, shards: str) -> str:
    """EN/ZH captions (vllm | hf | passthrough) for the selected images of a shard range."""
    from ovpipe import tasks

    return tasks.process("caption", recipe, store, run_id, overrides, shards)
