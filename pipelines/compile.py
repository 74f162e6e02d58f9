"""Compile every pipeline for a cluster profile: `OVPIPE_PROFILE=NAME python -m pipelines.compile [OUT]`
(`make compile PROFILE=NAME`). The default profile's YAMLs are checked in under pipelines/compiled/ (a test
fails when they are stale); another profile's go to build/compiled/NAME/."""
from __future__ import annotations

import os
import sys

from kfp import compiler

from components.platform import COMPILED
from pipelines.curation import curation
from pipelines.evaluation import evaluation
from pipelines.full import full
from pipelines.packing import packing
from pipelines.training import stage, training

PIPELINES = {"curation": curation, "packing": packing, "training": training, "stage": stage,
             "evaluation": evaluation, "full": full}
OUT = COMPILED


def compile_all(out_dir: str = OUT) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, func in PIPELINES.items():
        path = os.path.join(out_dir, f"{name}.yaml")
        compiler.Compiler().compile(func, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in compile_all(sys.argv[1] if len(sys.argv) > 1 else OUT):
        print(p)
