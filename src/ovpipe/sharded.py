"""Shard-granular steps: skip committed shards, commit each shard's marker last, collect a manifest.

A per-shard function returns a ShardResult after committing its outputs; this module writes the
shard's rejects part and then its marker `{step}/_parts/{phase}-shard-NNNNN.json` (the commit marker).
A rerun skips every shard whose marker exists. `finalize` checks that every shard is committed, merges
the rejects parts into `{step}/rejects.parquet`, sums the counts and writes `manifest.json` last.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from ovpipe import faults, locks, manifest, storage
from ovpipe.config import Recipe, load_recipe
from ovpipe.data import tables

log = logging.getLogger("ovpipe")

REJECTS_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                            ("shard", pa.int32())])


@dataclass
class Context:
    recipe: Recipe
    store: str
    run_id: str

    def uri(self, step: str, *parts: str) -> str:
        return storage.join(self.store, self.run_id, step, *parts)


def make_context(recipe: str, store: str, run_id: str | None, overrides: list[str] | None = None,
                 input_uri: str | None = None) -> Context:
    """The recipe read and checked (overrides and an input URI applied), in a run of a store."""
    extra = list(overrides or [])
    if input_uri:
        extra.append(f"data.input={input_uri}")
    r = load_recipe(recipe, extra)
    return Context(r, store, run_id or r.name)


@dataclass
class ShardResult:
    n_in: int
    n_out: int
    outputs: list[dict] = field(default_factory=list)  # [{uri, sha256, samples}]
    rejects: list[tuple[str, str, str]] = field(default_factory=list)  # (id, reason, detail)
    stats: dict = field(default_factory=dict)  # e.g. {"shard_errors": [...]}


def stable_detail(detail: str) -> str:
    """Library messages name objects by address ("<_io.BytesIO object at 0x7f…>"): drop it, so
    rejects are byte-identical across runs."""
    return _ADDRESS.sub("", str(detail))


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def rejects_table(rows: list[tuple[str, str, str]], shard: int) -> pa.Table:
    """(id, reason, detail) rows → the rejects schema, sorted, details made run-independent."""
    rows = sorted((key, reason, stable_detail(detail)) for key, reason, detail in rows)
    return pa.table({"id": [r[0] for r in rows], "reason": [r[1] for r in rows],
                     "detail": [r[2] for r in rows], "shard": [shard] * len(rows)}, schema=REJECTS_SCHEMA)


def first_copies(keys: list[str]) -> list[int | None]:
    """For each key, the position of its first occurrence when it is a repeat, else None: a key in two
    input shards is one sample twice, and the first copy is the one that goes on."""
    first: dict[str, int] = {}
    out: list[int | None] = []
    for i, k in enumerate(keys):
        out.append(first.get(k))
        first.setdefault(k, i)
    return out


def count_reasons(rows: list[tuple[str, str, str]], into: dict[str, int] | None = None) -> dict[str, int]:
    counts = {} if into is None else into
    for _, reason, _ in rows:
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def parse_shards(spec: str, total: int) -> list[int]:
    """'all', '3', '0-3' (inclusive) or '0,2,5' → shard indices, checked against `total`."""
    spec = str(spec).strip()
    if spec in ("", "all"):
        return list(range(total))
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError as exc:
            raise ValueError(f"shards {spec!r}: expected 'all', 'N', 'A-B' or 'A,B,…'") from exc
    bad = [i for i in out if not 0 <= i < total]
    if bad:
        raise ValueError(f"shards {spec!r}: indices {bad} outside 0..{total - 1}")
    return sorted(set(out))


def group_specs(total: int, group_size: int) -> list[str]:
    """Shard ranges for ParallelFor: one 'A-B' string per task."""
    return [f"{lo}-{min(lo + group_size, total) - 1}" for lo in range(0, total, group_size)]


def _marker(ctx: Context, step: str, phase: str, index: int) -> str:
    return ctx.uri(step, "_parts", f"{phase}-{shard_name(index)}.json")


def _already_committed(ctx: Context, step: str, marker: str) -> bool:
    """True when `marker` exists and was made with this recipe's settings for `step`; raises when
    it was made with other settings (mixing them in one run would corrupt it)."""
    if not storage.exists(marker):
        return False
    if storage.read_json(marker).get("config_digest") != ctx.recipe.digest(step):
        raise RuntimeError(f"{marker} was committed with other {step} settings than this recipe's; "
                           f"use a new --run-id (or delete {ctx.uri(step)}) to recompute")
    return True


def once(ctx: Context, step: str, name: str, build: Callable[[], object]) -> None:
    """Run a global piece of a step (an index, a dedup table) unless already committed. Several tasks
    may reach it at once (the three lengths tasks and the tokenizer): one builds under a lock in the
    store, the others wait for it and find the marker."""
    marker = ctx.uri(step, "_parts", f"{name}.json")
    if _already_committed(ctx, step, marker):
        return
    with locks.held(ctx.uri(step, "_parts", f"{name}.lock")):
        if _already_committed(ctx, step, marker):  # built while this task waited
            return
        build()
        faults.point("before_marker", step)
        storage.write_json(marker, {"config_digest": ctx.recipe.digest(step), "code_version": manifest.code_version()})


def _run_one(args) -> None:
    ctx, step, phase, index, fn = args
    marker = _marker(ctx, step, phase, index)
    if _already_committed(ctx, step, marker):
        log.info("%s/%s %s: already committed, skipped", step, phase, shard_name(index))
        return
    t0 = time.perf_counter()
    res: ShardResult = fn(ctx, index)
    counts = manifest.counts(res.n_in, res.n_out, count_reasons(res.rejects))
    if res.rejects:
        tables.write_parquet(marker.replace(".json", ".rejects.parquet"), rejects_table(res.rejects, index))
    faults.point("before_marker", step)
    storage.write_json(marker, {"shard": index, "config_digest": ctx.recipe.digest(step), "counts": counts,
                                "code_version": manifest.code_version(), "outputs": res.outputs, "stats": res.stats,
                                "seconds": round(time.perf_counter() - t0, 3)})
    log.info("%s/%s %s: in=%d out=%d rejected=%s", step, phase, shard_name(index), res.n_in, res.n_out,
             counts["rejected"])


def run_shards(ctx: Context, step: str, phase: str, indices: list[int],
               fn: Callable[[Context, int], ShardResult], workers: int = 1) -> None:
    """Run `fn` on every uncommitted shard; `workers` > 1 uses a process pool (outputs do not change)."""
    jobs = [(ctx, step, phase, i, fn) for i in indices]
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _run_one(job)
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        for _ in pool.imap_unordered(_run_one, jobs):
            pass


def committed(ctx: Context, step: str, phase: str, n_shards: int) -> list[dict]:
    """Markers of every shard; raises naming the shards that are not committed yet."""
    markers = [_marker(ctx, step, phase, i) for i in range(n_shards)]
    missing = [i for i, m in enumerate(markers) if not storage.exists(m)]
    if missing:
        raise RuntimeError(f"{step}/{phase}: shards {missing} of {n_shards} are not committed; "
                           f"run them first (ovpipe {step} --shards …)")
    return [storage.read_json(m) for m in markers]


def made_by(markers: list[dict]) -> str:
    """The code version(s) that made a step's shards (a resumed run may mix them: then all are named,
    with the shards each made, rather than today's version stamped over the others)."""
    by: dict[str, list[int]] = {}
    for m in markers:
        by.setdefault(m.get("code_version", "unknown (marker predates code versions)"), []).append(m["shard"])
    if len(by) <= 1:
        return next(iter(by), manifest.code_version())
    log.warning("shards made by %d code versions: %s", len(by), sorted(by))
    return "; ".join(f"{v} (shards {sorted(set(s))})" for v, s in sorted(by.items()))


def finalize(ctx: Context, step: str, phases: list[str], n_shards: int, inputs: list[dict],
             t_start: float, metrics: dict | None = None, extra_outputs: list[dict] | None = None,
             extra_rejects: list[tuple[str, str, str]] | None = None, **extra) -> dict:
    """Check every shard is committed, merge rejects, write the step manifest last."""
    per_phase = {p: committed(ctx, step, p, n_shards) for p in phases}
    first, last = per_phase[phases[0]], per_phase[phases[-1]]
    rejected: dict[str, int] = {}
    parts = []
    for phase, markers in per_phase.items():
        for m in markers:
            for reason, n in m["counts"]["rejected"].items():
                rejected[reason] = rejected.get(reason, 0) + n
            part = _marker(ctx, step, phase, m["shard"]).replace(".json", ".rejects.parquet")
            if m["counts"]["rejected"]:
                parts.append(tables.read_parquet(part))
    if extra_rejects:
        count_reasons(extra_rejects, rejected)
        parts.append(rejects_table(extra_rejects, -1))
    rejects = pa.concat_tables(parts) if parts else REJECTS_SCHEMA.empty_table()
    rejects = rejects.sort_by([("id", "ascending"), ("reason", "ascending")])
    tables.write_parquet(ctx.uri(step, "rejects.parquet"), rejects)
    # extra rejects were decided by a global phase before the shards: they came in, never went out
    n_in = sum(m["counts"]["in"] for m in first) + len(extra_rejects or [])
    counts = manifest.counts(n_in, sum(m["counts"]["out"] for m in last), rejected)
    outputs = [o for m in last for o in m["outputs"]] + list(extra_outputs or [])
    shard_errors = [e for ms in per_phase.values() for m in ms for e in m["stats"].get("shard_errors", [])]
    compute = sum(m["seconds"] for ms in per_phase.values() for m in ms)
    body = manifest.build(step, ctx.run_id, ctx.recipe.to_dict(), inputs, outputs, counts,
                          wall_seconds=compute + (time.perf_counter() - t_start), metrics=metrics,
                          shard_errors=shard_errors, **extra)
    body["code_version"] = made_by([m for ms in per_phase.values() for m in ms])
    manifest.write(ctx.uri(step, "manifest.json"), body)
    return body
