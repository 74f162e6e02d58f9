"""Named fault points: `OVPIPE_FAULT=step:point[:n][,…]` kills this process (SIGKILL, as the OOM killer or
a lost node would) the n-th time (default 1) `step` reaches `point`. With `OVPIPE_FAULT_ONCE=<folder>`
each fault fires once per folder (a marker file records it), so a retried task runs through.

Points (where they sit):
  mid_write        a local output file is written but not committed (storage.atomic_output)
  mid_shard        a tar shard is half written (TarWriter.write, after each sample)
  before_marker    a shard's (or a global piece's) outputs are committed, its marker is not (sharded)
  before_manifest  every output is committed, the step's manifest is not (manifest.write)
  mid_checkpoint   a checkpoint's files are half uploaded (train/checkpoint.py)
  mid_export       a stage's Hugging Face export is half uploaded (train/loop.py)
  mid_eval         one lmms-eval variant is done and stored, the others are not (evaluate/step.py)

The step reaching a point is the one `active(step)` names (a task runs one step); points name it
themselves where they know it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

POINTS = ("mid_write", "mid_shard", "before_marker", "before_manifest", "mid_checkpoint", "mid_export", "mid_eval")
_reached: dict[tuple[str, str], int] = {}
_active: list[str] = []


def _wanted() -> dict[tuple[str, str], int]:
    spec = os.environ.get("OVPIPE_FAULT", "").strip()
    out = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3) or parts[1] not in POINTS:
            raise ValueError(f"OVPIPE_FAULT item {item!r}: expected step:point[:n] with point one of {POINTS}")
        out[(parts[0], parts[1])] = int(parts[2]) if len(parts) == 3 else 1
    return out


@contextlib.contextmanager
def active(step: str):
    """The step this process is running, for points that do not know it."""
    _active.append(step)
    try:
        yield
    finally:
        _active.pop()


def point(name: str, step: str | None = None) -> None:
    """Kill the process here if OVPIPE_FAULT asks for it (a no-op otherwise)."""
    if not os.environ.get("OVPIPE_FAULT"):
        return
    step = step or (_active[-1] if _active else "")
    key = (step, name)
    want = _wanted().get(key)
    if want is None:
        return
    _reached[key] = _reached.get(key, 0) + 1
    if _reached[key] != want:
        return
    once = os.environ.get("OVPIPE_FAULT_ONCE")
    if once:
        marker = os.path.join(once, f"{step}.{name}.{want}")
        os.makedirs(once, exist_ok=True)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # fired before, in an earlier attempt
    print(f"ovpipe fault: killing pid {os.getpid()} at {step}:{name} (reached {want}x)", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
