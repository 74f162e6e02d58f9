"""Run the DAG on this machine through kfp.local: SubprocessRunner (the installed package) or DockerRunner
(each task in its component's image, on the host's network so the local S3 server is reachable)."""
from typing import Optional, Sequence

from kfp import dsl, local

from components.platform import STEPS
from pipelines.full import full_dag


def select_steps(first: Optional[str] = None, last: Optional[str] = None) -> Sequence[str]:
    names = STEPS.NAMES
    lo = names.index(first) if first else 0
    hi = names.index(last) if last else len(names) - 1
    if lo > hi:
        raise ValueError(f"--from {first} comes after --until {last}")
    return names[lo:hi + 1]


def run(recipe: str, store: str, run_id: str, overrides: str, steps: Sequence[str], pipeline_root: str,
        cache: bool = True, runner: str = "subprocess", environment: Optional[dict] = None) -> None:
    """Run `steps` of the DAG; raises when a task fails. `overrides` is a JSON object string; `environment`:
    the task containers' variables (docker)."""

    @dsl.pipeline(name="ovpipe-local")
    def pipeline(recipe: str, store: str, run_id: str, overrides: str):
        full_dag(recipe, store, run_id, overrides, tuple(steps))

    if runner == "docker":
        chosen = local.DockerRunner(network_mode="host", environment=environment or {})
    else:
        chosen = local.SubprocessRunner(use_venv=False)
    local.init(runner=chosen, pipeline_root=pipeline_root, enable_caching=cache)
    pipeline(recipe=recipe, store=store, run_id=run_id, overrides=overrides)
