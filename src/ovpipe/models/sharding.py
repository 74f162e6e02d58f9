"""Tensor-parallel sharding of the language model's state: full (unsharded) <-> one rank's slice.

How megatron-core splits a GPTModel over `tp` ranks (the names are the same in the local and the
Transformer Engine spec):

    column-parallel, rows split in `tp` contiguous blocks:
        embedding.word_embeddings.weight   vocab-parallel embedding (vocab rows)
        output_layer.weight                vocab-parallel output layer
        linear_qkv.weight                  rows are laid out per query group ([q of the group, k, v]), so a
                                           contiguous block is whole query groups (num_query_groups % tp == 0)
    column-parallel, gated: linear_fc1.weight is [gate; up] on every rank, so the full matrix's gate and up
        halves are each split in `tp` blocks and rank r holds [gate_r; up_r]
    row-parallel, columns split: linear_proj.weight, linear_fc2.weight
    replicated: every norm (input / pre-MLP / final / q and k layernorms, TE's layer_norm_weight)

`shard` and `unshard` are pure (tested against each other and against real TP=2 models); `gather` is
the collective the export runs on every rank of a tensor-parallel group.
"""
from __future__ import annotations

import torch

COLUMN = ("word_embeddings.weight", "output_layer.weight", "linear_qkv.weight", "linear_qkv.bias")
GATED = ("linear_fc1.weight", "linear_fc1.bias")
ROW = ("linear_proj.weight", "linear_fc2.weight")


def split_of(name: str) -> str | None:
    """'column' | 'gated' | 'row' | None (replicated) for a language-model state key."""
    if name.endswith(GATED):
        return "gated"
    if name.endswith(COLUMN):
        return "column"
    if name.endswith(ROW):
        return "row"
    return None


def _blocks(t: torch.Tensor, tp: int, dim: int, name: str) -> tuple[torch.Tensor, ...]:
    if t.shape[dim] % tp:
        raise ValueError(f"{name}: dimension {dim} of size {t.shape[dim]} does not split over tensor_parallel={tp}")
    return t.chunk(tp, dim=dim)


def shard_tensor(name: str, full: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    """This rank's slice of one full tensor (a view where possible; copy before training on it)."""
    kind = split_of(name)
    if tp == 1 or kind is None:
        return full
    if kind == "row":
        return _blocks(full, tp, 1, name)[rank]
    if kind == "column":
        return _blocks(full, tp, 0, name)[rank]
    gate, up = _blocks(full, 2, 0, name)
    return torch.cat([_blocks(gate, tp, 0, name)[rank], _blocks(up, tp, 0, name)[rank]])


def shard(full: dict, tp: int, rank: int) -> dict:
    return {k: shard_tensor(k, v, tp, rank) for k, v in full.items()}


def unshard_tensor(name: str, parts: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor from every rank's slice, in rank order."""
    kind = split_of(name)
    if len(parts) == 1 or kind is None:
        return parts[0]
    if kind == "row":
        return torch.cat(parts, dim=1)
    if kind == "column":
        return torch.cat(parts, dim=0)
    halves = [p.chunk(2, dim=0) for p in parts]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves])


def unshard(parts: list[dict]) -> dict:
    return {k: unshard_tensor(k, [p[k] for p in parts]) for k in parts[0]}


def gather(local: dict) -> dict | None:
    """Collective over this rank's tensor-parallel group: the full state on the group's first rank,
    None on the others. Tensors are gathered one at a time (the full model never sits on two ranks)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    first = parallel_state.get_tensor_model_parallel_rank() == 0
    if tp == 1:
        return {k: v.detach().cpu() for k, v in local.items()}
    group = parallel_state.get_tensor_model_parallel_group()
    out = {}
    for name in sorted(local):
        t = local[name].detach().contiguous()
        if split_of(name) is None:
            if first:
                out[name] = t.cpu()
            continue
        parts = [torch.empty_like(t) for _ in range(tp)]
        dist.all_gather(parts, t, group=group)
        if first:
            out[name] = unshard_tensor(name, [p.cpu() for p in parts])
    return out if first else None
