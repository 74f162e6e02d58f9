"""Checkpoints: megatron dist_checkpointing, written locally, uploaded, then published atomically.

Layout under a stage's folder:

    checkpoints/step-00000100/...     dist_checkpointing files (+ train_state.json)
    checkpoints/latest.json           {"step", "uri"}: written last, by rank 0, after every rank uploaded

A checkpoint without `latest.json` pointing at it does not exist for a reader, so a crash during an
upload never leaves a half checkpoint to resume from. Every rank writes its own files into a local
temporary folder (nodes need not share a filesystem) and uploads them; loading downloads the whole
folder once per node, into a folder the node's ranks share (train/node_scratch.py).
`train_state.json` holds the step, the scheduler, the data position and the MLflow run id. A stage keeps
its newest `train.keep_checkpoints` step folders; older ones are deleted once latest.json has moved on.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch
import torch.distributed as dist

from ovpipe import storage
from ovpipe.models import cpu_compat
from ovpipe.train import node_scratch

LATEST = "latest.json"


def step_dir(root: str, step: int) -> str:
    return storage.join(root, f"step-{step:08d}")


def latest(root: str) -> dict | None:
    uri = storage.join(root, LATEST)
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


# The distributed optimizer's state format: megatron-core 0.16's default (fully_sharded_model_space) fails to
# save ("ShardedTensor.flattened_range is not supported"); dp_reshardable saves each rank's buffers in parallel
# (a resume may change the data-parallel size, not TP/PP; the model's own state reshards freely).
OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "dp_reshardable"}


def _sharded_state(model, optimizer, *, loading: bool, with_optimizer: bool = True) -> dict:
    model_sd = model.sharded_state_dict()
    state = {"model": model_sd}
    if with_optimizer and optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=loading, metadata=OPTIMIZER_FORMAT)
    return state


def prune(root: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` step folders under root (0 keeps all); returns the deleted ones.
    Runs after latest.json names the newest, so a reader never follows a pointer into a deleted folder."""
    prefix = root.rstrip("/") + "/"
    folders = {u[len(prefix):].split("/", 1)[0] for u in storage.list_uris(root) if "/" in u[len(prefix):]}
    old = sorted(f for f in folders if f.startswith("step-"))[:-keep] if keep else []
    for folder in old:
        storage.delete_tree(storage.join(root, folder))
    return [storage.join(root, f) for f in old]


def save(root: str, step: int, model, optimizer, train_state: dict, keep: int = 0) -> str:
    from megatron.core import dist_checkpointing

    uri = step_dir(root, step)
    rank = dist.get_rank() if dist.is_initialized() else 0
    tmp = tempfile.mkdtemp(prefix="ovpipe-ckpt-")
    try:
        local = os.path.join(tmp, "ckpt")
        os.makedirs(local)
        dist_checkpointing.save(_sharded_state(model, optimizer, loading=False), local)
        if rank == 0:
            with open(os.path.join(local, "train_state.json"), "w") as f:
                json.dump({**train_state, "step": step}, f, indent=2, sort_keys=True)
        storage.put_tree(local, uri, fault="mid_checkpoint")  # each rank its own files (rank 0 also the metadata)
        if dist.is_initialized():
            dist.barrier()
        if rank == 0:
            storage.write_text(storage.join(root, LATEST), json.dumps({"step": step, "uri": uri}))
            prune(root, keep)
        if dist.is_initialized():
            dist.barrier()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return uri


def _init_optimizer_state(optimizer) -> None:
    """A distributed optimizer describes its state for loading from the state it holds, and a fresh one
    holds none (megatron: `assert len(steps) == 1` on CPU): one zero-gradient step creates it, in the
    shapes the checkpoint then overwrites (params and moments alike)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(sub, DistributedOptimizer) and not sub.optimizer.state:
            sub._init_optimizer_states_with_dummy_values()


def load(uri: str, model, optimizer=None) -> dict:
    """Load a checkpoint folder into model (and optimizer when given); returns its train_state."""
    from megatron.core import dist_checkpointing

    if optimizer is not None:
        _init_optimizer_state(optimizer)
    with node_scratch.shared_copy(lambda folder: storage.download_tree(uri, folder), prefix="ovpipe-ckpt-") as tmp:
        state = dist_checkpointing.load(_sharded_state(model, optimizer, loading=True,
                                                       with_optimizer=optimizer is not None), tmp)
        model.load_state_dict(state["model"], strict=True)
        if optimizer is not None:
            with torch.no_grad():  # fp32 training: the distributed optimizer's main params are views of the model's
                optimizer.load_state_dict(state["optimizer"])
            cpu_compat.unshare_optimizer_steps(optimizer)
        with open(os.path.join(tmp, "train_state.json")) as f:
            return json.load(f)
