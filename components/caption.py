from kfp import dsl

from components.platform import image


@dsl.component(base_image=image("caption"), install_kfp_package=False)
def caption(recipe: str, store: str, run_id: str, overrides: str, shards: str) -> str:
    """EN/ZH captions (vllm | hf | passthrough) for the selected images of a shard range."""
    from ovpipe import tasks

    return tasks.process("caption", recipe, store, run_id, overrides, shards)
