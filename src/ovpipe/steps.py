"""The table of steps: what the CLI, `ovpipe.tasks`, the recipe's dependency graph (config.step_settings),
the pipelines and the rehearsal report read. A step is named here once.

kind: `sharded` (one task per shard range, then a manifest), `global` (one task over compact columns),
`stage` (a training stage: a TrainJob on a cluster), `eval`. datasets: the corpora a dataset step runs
once each for (mid: the curated corpus; stage1: alignment pairs; sft: conversations). samples: whether its counts
follow the dataset's samples (the accounting chain), not those of scenes a model trained on. image: the image
family its task runs in (cluster profile `images.<family>`; the concepts index, a helper task of
`concepts`, builds on a GPU image).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ovpipe import faults

DATASETS = ("mid", "stage1", "sft")


@dataclass(frozen=True)
class Step:
    name: str
    module: str
    kind: str  # sharded | global | stage | eval
    family: str  # curation | packing | training | eval
    image: str  # data | gpu
    datasets: tuple[str, ...] = ("mid",)
    samples: bool = True  # its counts are of the dataset's samples (clip, vit: of scenes a model trained on)

    @property
    def per_dataset(self) -> bool:
        return len(self.datasets) > 1


TABLE = (
    Step("synth", "ovpipe.data.corpus", "global", "curation", "data", DATASETS),
    Step("clip", "ovpipe.curation.clip_pretrain", "global", "curation", "gpu", samples=False),
    Step("embed", "ovpipe.curation.embed", "sharded", "curation", "gpu"),
    Step("concepts", "ovpipe.curation.concepts", "sharded", "curation", "data"),
    Step("balance", "ovpipe.curation.balance", "global", "curation", "data"),
    Step("caption", "ovpipe.curation.caption", "sharded", "curation", "caption"),
    Step("filter", "ovpipe.curation.filter", "sharded", "curation", "data"),
    Step("lengths", "ovpipe.packing.lengths", "sharded", "packing", "data", DATASETS),
    Step("pack", "ovpipe.packing.pack", "sharded", "packing", "data", DATASETS),
    Step("vit", "ovpipe.train.vit", "global", "training", "data", samples=False),
    Step("stage1", "ovpipe.train.loop", "stage", "training", "data"),
    Step("mid", "ovpipe.train.loop", "stage", "training", "data"),
    Step("sft", "ovpipe.train.loop", "stage", "training", "data"),
    Step("eval", "ovpipe.evaluate.step", "eval", "eval", "gpu"),
)
BY_NAME = {s.name: s for s in TABLE}
NAMES = tuple(s.name for s in TABLE)  # the DAG's order: what `ovpipe run --from/--until` can name
CURATION = tuple(s.name for s in TABLE if s.family == "curation")
STAGES = tuple(s.name for s in TABLE if s.kind == "stage")
DATA_STEPS = tuple(s.name for s in TABLE if s.family in ("curation", "packing"))  # each an `ovpipe <step>`
DATASET_STEPS = tuple(s.name for s in TABLE if s.per_dataset)


def get(name: str) -> Step:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"step {name!r} is not one of {list(NAMES)}") from None


def folder(name: str, dataset: str = "mid") -> str:
    """A step's run folder for one dataset: `pack` for mid, `pack-stage1`, `lengths-sft`, …"""
    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r}: expected one of {DATASETS}")
    return name if dataset == "mid" else f"{name}-{dataset}"


def folders(names) -> list[str]:
    """The run folders of `names`, dataset by dataset (mid first: pack, then pack-stage1 …)."""
    chosen = [get(n) for n in names]
    return [folder(s.name, d) for d in DATASETS for s in chosen if d in s.datasets]


def module(name: str):
    """The module that does a step's work (imported on demand: a step's dependencies are heavy)."""
    return importlib.import_module(get(name).module)


def run(ctx, name: str, shards: str = "all", workers: int = 1, dataset: str = "mid") -> dict:
    """Run every phase of a data step over `shards` and write its manifest (what `ovpipe <step>` does)."""
    mod = module(name)
    kw = {"dataset": dataset} if name in DATASET_STEPS else {}
    with faults.active(folder(name, dataset)):
        if hasattr(mod, "process"):
            mod.process(ctx, shards, workers, **kw)
            return mod.finalize(ctx, **kw)
        return mod.run(ctx)
