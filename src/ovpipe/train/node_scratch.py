"""One scratch folder per node, shared by the node's ranks: a checkpoint is downloaded once per node, not
once per rank (8 ranks on a GPU node would otherwise move and store every byte 8 times)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from typing import Callable, Iterator

import torch.distributed as dist


def _gather(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def shared_copy(fill: Callable[[str], None], prefix: str = "ovpipe-") -> Iterator[str]:
    """Yield a local folder that `fill(folder)` has filled, run by one rank per node; the others wait for it.

    The node's filler is its first rank by LOCAL_RANK (torchrun's), falling back to the lowest global rank on
    the host; a failure to fill is raised on every rank of the node instead of leaving them waiting."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        tmp = tempfile.mkdtemp(prefix=prefix)
        try:
            fill(tmp)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    host, local = socket.gethostname(), int(os.environ.get("LOCAL_RANK", "0"))
    mine = tempfile.mkdtemp(prefix=prefix) if local == 0 else None
    path = next((p for h, _, p in _gather((host, local, mine)) if h == host and p is not None), None)
    if path is None:  # no rank here made one (LOCAL_RANK set without a 0 on this host): fill our own
        path = mine = tempfile.mkdtemp(prefix=prefix)
    if mine is not None and mine != path:  # another rank of this host fills: ours is not needed
        shutil.rmtree(mine, ignore_errors=True)
    filler = mine == path
    failure = None
    if filler:
        try:
            fill(path)
        except Exception as exc:  # told to the node's other ranks below, then raised here
            failure = exc
    told = f"{type(failure).__name__}: {failure}" if failure else None
    errors = [e for h, p, e in _gather((host, path, told)) if h == host and p == path and e]
    try:
        if failure:
            raise failure
        if errors:
            raise RuntimeError(f"the rank filling {path} on {host} failed: {errors[0]}")
        yield path
    finally:
        dist.barrier()  # every rank of the node is done with the folder
        if filler:
            shutil.rmtree(path, ignore_errors=True)
