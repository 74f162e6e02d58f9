from kfp import dsl

from components.platform import image


@dsl.component(base_image=image("filter"), install_kfp_package=False)
def filter_rules(recipe: str, store: str, run_id: str, overrides: str, shards: str) -> str:
    """Caption rules and image-text similarity for a shard range; survivors get dedup signatures."""
    from ovpipe import tasks

    return tasks.process("filter", recipe, store, run_id, overrides, shards, phase="rules")


@dsl.component(base_image=image("filter"), install_kfp_package=False)
def filter_dedup(recipe: str, store: str, run_id: str, overrides: str, rules_done: list) -> str:
    """Global exact and near-duplicate clusters over every shard's signatures."""
    from ovpipe import tasks

    return tasks.filter_dedup(recipe, store, run_id, overrides)


@dsl.component(base_image=image("filter"), install_kfp_package=False)
def filter_write(recipe: str, store: str, run_id: str, overrides: str, shards: str, dedup: str) -> str:
    """Curated webdataset shards: original image bytes, chosen caption, metadata."""
    from ovpipe import tasks

    return tasks.process("filter", recipe, store, run_id, overrides, shards, phase="write")
