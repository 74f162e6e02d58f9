"""Compile every pipeline into pipelines/compiled/ (checked in; a test fails when stale)."""
from __future__ import annotations

import os
import sys

from kfp import compiler

from pipelines.curation import curation
from pipelines.evaluation import evaluation
from pipelines.full import full
from pipelines.packing import packing
from pipelines.training import training

PIPELINES = {"curation": curation, "packing": packing, "training": training, "evaluation": evaluation,
             "full": full}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compiled")


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
