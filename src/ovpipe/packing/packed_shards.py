"""Packed-sequence shards: one webdataset tar sample per packed sequence, and the megatron-energon
(7.4.1) metadata for a folder of them, so the trainer's energon opens the folder directly.

A sequence with key f"{bin:09d}" holds `{key}.json` (bin, length, subsamples, cu_seqlens) and one
member per image, `{key}.{i}.{ext}`, i running over the sequence, bytes as stored (never re-encoded).

`energon prepare` would read every tar back to index it; here the index is computed from the byte
layout TarWriter recorded while writing, so it costs nothing extra and works on s3:// the same way
(all writes go through ovpipe.storage). energon itself (and torch) is imported only by the loader.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import sqlite3
import struct
import tarfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Iterable, Iterator

import yaml

from ovpipe import storage
from ovpipe.data.tarwriter import TarWriter

FORMAT = "ovpipe-packed-v1"
# Set on every sample through dataset.yaml: the cooker matches on it, so a metadataset may mix these
# with other crude datasets.
SUBFLAVORS = {"ovpipe_format": FORMAT}
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp"})
META = ".nv-meta"
IDX_SUFFIX = ".tar.idx"  # energon looks for it beside the tar (tar path with its suffix replaced)


@dataclass
class SubSample:
    id: str
    length: int
    turns: list[dict]
    images: list[bytes] = field(default_factory=list)
    image_exts: list[str] = field(default_factory=list)
    image_tokens: list[int] = field(default_factory=list)
    truncated: bool = False  # packed cut to `length` (too_long: truncate); the loader cuts only these


def sample_key(bin_id: int) -> str:
    return f"{bin_id:09d}"


def _members(bin_id: int, subs: list[SubSample]) -> tuple[str, dict[str, bytes]]:
    """One sequence as tar members: json first (a streaming reader learns the layout before the
    images), then the images in running order."""
    if isinstance(bin_id, bool) or not isinstance(bin_id, int) or bin_id < 0:
        raise ValueError(f"bin id must be a non-negative int, got {bin_id!r}")
    if not subs:
        raise ValueError(f"bin {bin_id}: no sub-samples")
    key, members, entries, cu = sample_key(bin_id), {"json": b""}, [], [0]
    for s in subs:
        if not (len(s.images) == len(s.image_exts) == len(s.image_tokens)):
            raise ValueError(f"bin {bin_id}, sample {s.id}: images, image_exts and image_tokens differ "
                             f"in length ({len(s.images)}, {len(s.image_exts)}, {len(s.image_tokens)})")
        if int(s.length) < 0:
            raise ValueError(f"bin {bin_id}, sample {s.id}: negative length {s.length}")
        names = []
        for data, ext in zip(s.images, s.image_exts):
            ext = ext.lower().lstrip(".")
            if ext not in IMAGE_EXTS:
                raise ValueError(f"bin {bin_id}, sample {s.id}: image format {ext!r} not in {sorted(IMAGE_EXTS)}")
            name = f"{len(members) - 1}.{ext}"
            members[name] = data if isinstance(data, (bytes, memoryview)) else bytes(data)  # no copy
            names.append(name)
        entry = {"id": str(s.id), "length": int(s.length), "turns": s.turns, "images": names,
                 "image_tokens": [int(t) for t in s.image_tokens]}
        entries.append({**entry, "truncated": True} if s.truncated else entry)
        cu.append(cu[-1] + int(s.length))
    meta = {"bin": bin_id, "length": cu[-1], "subsamples": entries, "cu_seqlens": cu}
    # Sorted keys and fixed separators: the same sequence always gives the same bytes.
    members["json"] = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return key, members


def write_packed_shard(uri: str, sequences: Iterable[tuple[int, list[SubSample]]]) -> dict:
    """Write one tar of packed sequences (in the order given; any iterable, so they may still be
    arriving while the first are written), committed atomically.

    Returns a JSON-safe dict that write_energon_metadata needs later (it may travel through a
    manifest): uri, sha256, samples, keys, offsets (each sample's first header, then the end of the
    last member: exactly energon's .tar.idx) and parts ([[name, data offset, size], ...] per sample).
    """
    if not uri.endswith(".tar"):
        raise ValueError(f"{uri}: packed shards must end in .tar (energon indexes *.tar)")
    writer, seen = TarWriter(uri), set()
    try:
        for bin_id, subs in sequences:
            key, members = _members(bin_id, subs)
            if key in seen:
                raise ValueError(f"{uri}: bin {bin_id} given twice")
            seen.add(key)
            writer.write(key, members)
        if not seen:
            raise ValueError(f"{uri}: no sequences (energon rejects a shard without samples)")
    except BaseException:
        writer.abort()
        raise
    digest = writer.close()
    return {"uri": uri, "sha256": digest, "samples": writer.count,
            "keys": [k for k, _, _ in writer.layout],
            "offsets": [start for _, start, _ in writer.layout] + [writer.end_offset],
            "parts": [[[name, off, size] for name, off, size in parts] for _, _, parts in writer.layout]}


# ---------------------------------------------------------------- energon metadata

def _relative(prefix: str, uri: str) -> str:
    root = prefix.rstrip("/") + "/"
    if not uri.startswith(root):
        raise ValueError(f"shard {uri} is not under the dataset prefix {prefix}")
    name = uri[len(root):]
    if "{" in name or "}" in name:  # energon brace-expands split entries
        raise ValueError(f"shard name {name!r}: braces are not allowed")
    return name


_LAST_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")


def _collapse(names: list[str]) -> list[str]:
    """Runs of consecutive, equally padded numbers as one brace range (shard-{000000..000041}.tar),
    order kept: the short split.yaml `energon prepare` writes. Anything else stays as it is."""
    out, i = [], 0
    while i < len(names):
        m, j = _LAST_NUMBER.match(names[i]), i + 1
        if m:
            head, num, tail = m.groups()
            while j < len(names):
                n = _LAST_NUMBER.match(names[j])
                if not n or n.group(1, 3) != (head, tail) or len(n.group(2)) != len(num) \
                        or int(n.group(2)) != int(num) + j - i:
                    break
                j += 1
        if j - i > 1:
            out.append(f"{head}{{{num}..{_LAST_NUMBER.match(names[j - 1]).group(2)}}}{tail}")
        else:
            out.append(names[i])
        i = j
    return out


def _yaml(obj) -> bytes:
    return yaml.safe_dump(obj, sort_keys=False).encode()


_SCHEMA = (
    # Same tables, columns and index names as energon 7.4.1's index.sqlite (its reader queries them
    # by name; matching index names also lets a later `energon prepare` replace them cleanly).
    "CREATE TABLE samples (tar_file_id INTEGER NOT NULL, sample_key TEXT NOT NULL UNIQUE,"
    " sample_index INTEGER NOT NULL, byte_offset INTEGER, byte_size INTEGER)",
    "CREATE TABLE sample_parts (tar_file_id INTEGER, sample_index INTEGER, part_name TEXT,"
    " content_byte_offset INTEGER, content_byte_size INTEGER)",
)
_INDEXES = (
    "CREATE INDEX idx_samples_by_tar_and_idx ON samples(tar_file_id, sample_index)",
    "CREATE INDEX idx_sample_parts_seq ON sample_parts(tar_file_id, sample_index, content_byte_offset)",
    "CREATE INDEX idx_sample_parts_full ON sample_parts(tar_file_id, sample_index, part_name,"
    " content_byte_offset, content_byte_size)",
)


def _write_sqlite(uri: str, shards: list[dict]) -> None:
    """Built in a local temporary file (sqlite needs one), then committed like any object. One
    transaction, indexes created after the rows: the same inputs give the same bytes."""
    with storage.atomic_output(uri, ".sqlite") as path:
        db = sqlite3.connect(path)
        try:
            for stmt in _SCHEMA:
                db.execute(stmt)
            for tar_id, s in enumerate(shards):
                offs = s["offsets"]
                db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?)",
                               ((tar_id, k, i, offs[i], offs[i + 1] - offs[i]) for i, k in enumerate(s["keys"])))
                db.executemany("INSERT INTO sample_parts VALUES (?, ?, ?, ?, ?)",
                               ((tar_id, i, name, off, size) for i, parts in enumerate(s["parts"])
                                for name, off, size in parts))
            for stmt in _INDEXES:
                db.execute(stmt)
            db.commit()
        finally:
            db.close()


def _energon_version() -> str:
    try:
        return importlib.metadata.version("megatron-energon")  # what energon itself reports
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def write_energon_metadata(prefix: str, shards: list[dict], split: dict | None = None) -> list[str]:
    """Write what `energon prepare` would for these tars, from write_packed_shard's dicts alone.

    Per tar `{name}.tar.idx` (beside it); in `{prefix}/.nv-meta/`: index.sqlite, index.uuid
    (derived from the shard digests, not random), split.yaml, dataset.yaml (CrudeWebdataset with
    SUBFLAVORS), and .info.json last: energon treats a folder as prepared once that exists.
    `split`: {part: [shard names relative to prefix, or URIs]}; default all in train (plus empty
    val/test, as `energon prepare --split-ratio 1,0,0`). Returns the URIs written.
    """
    prefix = prefix.rstrip("/")
    if not shards:
        raise ValueError(f"{prefix}: no shards")
    named = sorted(((_relative(prefix, s["uri"]), s) for s in shards), key=lambda t: PurePosixPath(t[0]))
    names = [n for n, _ in named]  # energon prepare's order (sorted paths): defines tar_file_id
    if len(set(names)) != len(names):
        raise ValueError(f"{prefix}: a shard is listed twice")
    seen: dict[str, str] = {}
    for name, s in named:
        if not (len(s["keys"]) == len(s["parts"]) == s["samples"] == len(s["offsets"]) - 1 > 0):
            raise ValueError(f"{name}: inconsistent shard record (keys/parts/offsets/samples)")
        for k in s["keys"]:  # index.sqlite has sample_key UNIQUE: energon would fail on a repeat
            if k in seen:
                raise ValueError(f"sample key {k} in both {seen[k]} and {name}: bin ids must be unique")
            seen[k] = name

    if split is None:
        split = {"train": names, "val": [], "test": []}
    parts = {}
    for part, members in split.items():
        rel = [_relative(prefix, m) if m.startswith(prefix + "/") else m for m in members]
        unknown = sorted(set(rel) - set(names))
        if unknown:
            raise ValueError(f"split {part!r} names shards not written: {unknown[:5]}")
        parts[part] = _collapse(rel)

    meta = storage.join(prefix, META)
    written = []

    def put(uri: str, data: bytes) -> str:
        storage.write_bytes(uri, data)
        return uri

    # Native uint64 in energon; written little-endian explicitly (what every x86/ARM host reads).
    idx = [(storage.join(prefix, n[:-len(".tar")] + IDX_SUFFIX), struct.pack(f"<{len(s['offsets'])}Q", *s["offsets"]))
           for n, s in named]
    with ThreadPoolExecutor(min(16, len(idx))) as pool:  # one small object per shard: S3 latency bound
        written += list(pool.map(lambda a: put(*a), idx))
    sqlite_uri = storage.join(meta, "index.sqlite")
    _write_sqlite(sqlite_uri, [s for _, s in named])
    written.append(sqlite_uri)
    digest = hashlib.sha256("".join(f"{n}\t{s['sha256']}\n" for n, s in named).encode()).hexdigest()
    written.append(put(storage.join(meta, "index.uuid"),
                       str(uuid.uuid5(uuid.NAMESPACE_URL, f"ovpipe-packed:{digest}")).encode()))
    written.append(put(storage.join(meta, "split.yaml"), _yaml({"split_parts": parts, "exclude": []})))
    written.append(put(storage.join(meta, "dataset.yaml"), _yaml(
        {"__module__": "megatron.energon", "__class__": "CrudeWebdataset", "subflavors": dict(SUBFLAVORS)})))
    info = {"energon_version": _energon_version(), "shard_counts": {n: s["samples"] for n, s in named}}
    written.append(put(storage.join(meta, ".info.json"), json.dumps(info, indent=2).encode()))
    return written


# ---------------------------------------------------------------- readers

def read_packed(uri: str) -> Iterator[dict]:
    """Our own streaming reader (tests, debugging): {"key", "json", "images": [bytes]} per sequence,
    images in running order. Raises ValueError when members and json disagree."""

    def finish(key, members):
        if "json" not in members:
            raise ValueError(f"{uri}: sequence {key} has no json member")
        meta = json.loads(members.pop("json"))
        names = [n for s in meta["subsamples"] for n in s["images"]]
        if sorted(names) != sorted(members):
            raise ValueError(f"{uri}: sequence {key}: json names images {names}, tar holds {sorted(members)}")
        return {"key": key, "json": meta, "images": [members[n] for n in names]}

    key, members = None, {}
    with storage.open_read(uri) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            k, _, part = info.name.partition(".")
            if k != key and key is not None:
                yield finish(key, members)
                members = {}
            key = k
            members[part] = tar.extractfile(info).read()
    if key is not None:
        yield finish(key, members)


def cook_packed(sample: dict) -> dict:
    """energon crude sample (raw bytes per part) → {"key", "json", "images"} plus energon's own
    __key__/__restore_key__/__subflavors__/__sources__ (kept so restoring from a checkpoint works)."""
    meta = json.loads(sample["json"])
    names = [n for s in meta["subsamples"] for n in s["images"]]
    base = {k: sample[k] for k in ("__key__", "__restore_key__", "__subflavors__", "__sources__") if k in sample}
    return {**base, "key": sample["__key__"], "json": meta, "images": [sample[n] for n in names]}


_ENERGON: dict = {}


def _energon_side() -> dict:
    """Classes that subclass energon's, made on first use so writing shards never imports energon
    (and torch). Registered as module attributes under their own names so pickle finds them."""
    if not _ENERGON:
        from megatron.energon import Cooker, DefaultTaskEncoder, stateless

        class PackedTaskEncoder(DefaultTaskEncoder):
            """Cooks our packed samples; batches are lists of sample dicts (subclass it to build
            tensors: override `batch`/`encode_batch`)."""

            # No decoding in energon: images reach the trainer as stored, json is parsed by the cooker.
            decoder = None
            cookers = [Cooker(stateless(cook_packed), has_subflavors=dict(SUBFLAVORS))]

            @stateless
            def batch(self, samples: list[dict]) -> list[dict]:
                return list(samples)

        PackedTaskEncoder.__module__, PackedTaskEncoder.__qualname__ = __name__, "PackedTaskEncoder"
        _ENERGON["PackedTaskEncoder"] = PackedTaskEncoder
    return _ENERGON


def __getattr__(name: str):
    if name == "PackedTaskEncoder":
        return _energon_side()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def energon_loader(prefix: str, batch_size: int | None = 1, num_workers: int = 0, split: str = "train", *,
                   training: bool = True, repeat: bool = True, shuffle_buffer_size: int | None = 64,
                   max_samples_per_sequence: int | None = 64, task_encoder=None, worker_config=None,
                   savable: bool = False):
    """An energon loader over a packed folder (local, or a path energon's EPath resolves).

    training: get_train_dataset (shuffled; loops unless repeat=False); else get_val_dataset (one
    ordered pass). Yields lists of sample dicts (batch_size None: single dicts). The rank and world
    size come from torch.distributed when it is initialised (energon's default worker config).
    savable: get_savable_loader (checkpointable) instead of get_loader.
    """
    from megatron.energon import (
        WorkerConfig,
        get_loader,
        get_savable_loader,
        get_train_dataset,
        get_val_dataset,
    )

    wc = worker_config or WorkerConfig.default_worker_config(num_workers)
    te = task_encoder if task_encoder is not None else _energon_side()["PackedTaskEncoder"]()
    if training:
        ds = get_train_dataset(prefix, split_part=split, worker_config=wc, batch_size=batch_size,
                               shuffle_buffer_size=shuffle_buffer_size,
                               max_samples_per_sequence=max_samples_per_sequence, task_encoder=te, repeat=repeat)
    else:
        ds = get_val_dataset(prefix, split_part=split, worker_config=wc, batch_size=batch_size, task_encoder=te)
    return (get_savable_loader if savable else get_loader)(ds)
