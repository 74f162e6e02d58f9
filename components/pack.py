from kfp import dsl

from components.platform import image


@dsl.component(base_image=image("pack"), install_kfp_package=False)
def pack_write(recipe: str, store: str, run_id: str, overrides: str, shards: str, dataset: str) -> str:
    """Packed webdataset shards for a range of output shards (bins planned globally by `plan`)."""
    from ovpipe import tasks

    return tasks.process("pack", recipe, store, run_id, overrides, shards, dataset=dataset, phase="write")
