from kfp import dsl

from components.platform import image


@dsl.component(base_image=image("gpu"), install_kfp_package=False)
def concepts_index(recipe: str, store: str, run_id: str, overrides: str) -> str:
    """Embed the concept vocabulary with the text tower and store its faiss index."""
    from ovpipe import tasks

    return tasks.concepts_index(recipe, store, run_id, overrides)


@dsl.component(base_image=image("concepts"), install_kfp_package=False)
def concepts(recipe: str, store: str, run_id: str, overrides: str, shards: str) -> str:
    """Top-K concepts of every image embedding in a shard range."""
    from ovpipe import tasks

    return tasks.process("concepts", recipe, store, run_id, overrides, shards)
