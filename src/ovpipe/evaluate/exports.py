"""Which Hugging Face export to evaluate: a URI, or `latest` resolved through a pointer in the store.

Every finished training stage publishes its export to `{store}/exports/latest.json` (written
atomically, last), so a nightly evaluation of `latest` never needs to list a large bucket.
`latest:<run_id>` picks the most advanced stage of one run that has an export (sft > mid > stage1);
`stage:<stage>` is that stage's export in the run being evaluated.
"""
from __future__ import annotations

import json
import time

from ovpipe import storage

POINTER = "exports/latest.json"
STAGE_ORDER = ("sft", "mid", "stage1")


def publish(store: str, run_id: str, stage: str, uri: str) -> None:
    record = {"uri": uri, "run_id": run_id, "stage": stage, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    storage.write_text(storage.join(store, POINTER), json.dumps(record, indent=2))


def resolve(checkpoint: str, store: str, run_id: str | None = None) -> dict:
    """{"uri", "run_id", "stage"} of the export to evaluate; a clear error when there is none."""
    if checkpoint.startswith("stage:"):
        stage = checkpoint.split(":", 1)[1]
        uri = storage.join(store, run_id or "", stage, "hf")
        if stage not in STAGE_ORDER or not storage.exists(storage.join(uri, "ovpipe.json")):
            raise FileNotFoundError(f"{checkpoint}: no export at {uri}")
        return {"uri": uri, "run_id": run_id, "stage": stage}
    if checkpoint == "latest":
        pointer = storage.join(store, POINTER)
        if not storage.exists(pointer):
            raise FileNotFoundError(f"no export published in {store} yet ({pointer} is missing): "
                                    "train a stage first, or pass an export URI")
        return json.loads(storage.read_text(pointer))
    if checkpoint.startswith("latest:"):
        run_id = checkpoint.split(":", 1)[1]
        for stage in STAGE_ORDER:
            uri = storage.join(store, run_id, stage, "hf")
            if storage.exists(storage.join(uri, "ovpipe.json")):
                return {"uri": uri, "run_id": run_id, "stage": stage}
        raise FileNotFoundError(f"run {run_id!r} in {store} has no exported stage ({', '.join(STAGE_ORDER)})")
    if not storage.exists(storage.join(checkpoint, "ovpipe.json")):
        raise FileNotFoundError(f"{checkpoint}: not an ovpipe export (no ovpipe.json); pass an `hf` folder "
                                "written by a training stage, `latest` or `latest:<run id>`")
    parts = checkpoint.rstrip("/").split("/")
    stage = parts[-2] if len(parts) >= 2 and parts[-2] in STAGE_ORDER else "unknown"
    run_id = parts[-3] if len(parts) >= 3 else "unknown"
    return {"uri": checkpoint, "run_id": run_id, "stage": stage}
