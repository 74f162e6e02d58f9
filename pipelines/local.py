"""Run a pipeline on this machine through kfp.local (SubprocessRunner, the installed package)."""
from typing import List, Optional

import json
import os
import time

from kfp import dsl, local

from pipelines.curation import STEPS, curation_dag


def select_steps(first: Optional[str], last: Optional[str]) -> tuple[str, ...]:
    lo = STEPS.index(first) if first else 0
    hi = STEPS.index(last) if last else len(STEPS) - 1
    if lo > hi:
        raise ValueError(f"--from {first} comes after --until {last}")
    return STEPS[lo:hi + 1]


def run(recipe: str, store: str, run_id: str, overrides: Optional[List[str]] = None, input_uri: Optional[str] = None,
        first: Optional[str] = None, last: Optional[str] = None, cache: bool = True) -> None:
    from ovpipe import storage
    from ovpipe.config import parse_overrides

    extra = parse_overrides(overrides)
    if input_uri:
        extra["data.input"] = input_uri
    steps = select_steps(first, last)

    @dsl.pipeline(name="ovpipe-local")
    def pipeline(recipe: str, store: str, run_id: str, overrides: str):
        curation_dag(recipe, store, run_id, overrides, steps)

    storage.ensure_bucket(store)
    root = os.path.join(os.path.abspath(store) if not storage.is_remote(store) else os.path.abspath(".ovpipe"),
                        run_id, "_kfp")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root, enable_caching=cache)
    t0 = time.perf_counter()
    pipeline(recipe=os.path.abspath(recipe) if os.path.exists(recipe) else recipe, store=store, run_id=run_id,
             overrides=json.dumps(extra, sort_keys=True))
    print(f"\novpipe: {', '.join(steps)} finished in {time.perf_counter() - t0:.0f} s")
    for step in steps:
        uri = storage.join(store, run_id, step, "manifest.json")
        if storage.exists(uri):
            body = storage.read_json(uri)
            print(f"  {step:9s} in={body['counts']['in']:<7d} out={body['counts']['out']:<7d} "
                  f"rejected={body['counts']['rejected']}  {uri}")
            for plot in body.get("plots", []):
                print(f"  {'':9s} plot: {plot}")
    print(f"  outputs: {storage.join(store, run_id)}   (kfp task logs/artifacts: {root})")
