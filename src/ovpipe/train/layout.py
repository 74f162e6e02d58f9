"""The parallel layout a recipe's train section asks for, checked against the processes that will run it.

Light on purpose (no torch): the cluster launcher checks `nodes × gpus_per_node` before it submits a
job, the local launcher before torchrun starts, each worker again at start-up.
"""
from __future__ import annotations


def check_batch(global_batch: int, micro_batch: int, dp_size: int) -> None:
    if global_batch % (micro_batch * dp_size):
        raise ValueError(f"train.global_batch ({global_batch}) must be a multiple of micro_batch × data-parallel "
                         f"size ({micro_batch} × {dp_size})")


def check_layout(t, world: int) -> None:
    """The parallel layout and batch sizes of train section `t` fit `world` processes."""
    if world % (t.tensor_parallel * t.pipeline_parallel):
        raise ValueError(f"{world} processes cannot hold tensor_parallel={t.tensor_parallel} × "
                         f"pipeline_parallel={t.pipeline_parallel}")
    if t.pipeline_parallel != 1:
        raise ValueError("train.pipeline_parallel > 1 is not supported yet (the vision tower sits on the "
                         "first stage only; see the training README)")
    check_batch(t.global_batch, t.micro_batch, world // (t.tensor_parallel * t.pipeline_parallel))
