"""Packed-shard writing throughput: the pack step's per-shard work against a plain copy of as many bytes.

"Ours" is `ovpipe.packing.pack.write_shard` itself, run on a real Context: it reads its plan part,
fetches its sub-samples from the input shards by byte range, reads image headers and writes one packed
tar (committed atomically, sha256 taken). The inputs are webdataset tars as the filter step leaves them
(`jpg`, `txt`, `json` per sample); images are JPEG-like bytes (a real SOI/SOF0 header, then random
bytes: throughput does not depend on the pixels), 50 KB - 1 MB, lognormal around ~250 KB. The plan is
shuffled, so every output shard pulls scattered samples from every input shard, as a global BFD does.

"Copy" moves as many bytes as each packed shard holds, on the same store, in the same run, with the
guarantee ours gives (a committed shard survives a power cut):
  folder     a 1 MiB read/write loop from an input shard into a temporary, fsync'ed, renamed into
             place, the folder fsync'ed; also reported without the fsyncs ("page_cache_copy": memory
             speed, which no writer that must hash every byte can reach: see sha256_mb_s) and with
             sha256 taken of every buffer in line ("hashing_copy": the floor of a writer owing a digest)
  seaweedfs  download_fileobj of an input shard, then upload_fileobj of an object of the packed
             shard's size (boto3's default transfer settings), through storage's own S3 client.
Rounds alternate the order (ours/copy, copy/ours); the best round of each is reported, all are kept.
This box is shared: CPU seconds of this process are recorded beside wall times.

    python bench/shard_write_bench.py                      # both stores, ~200 MB of shards each
    python bench/shard_write_bench.py --stores folder --total-mb 64 --rounds 1

Writes bench/results/shard_write.json and bench/results/shard_write.png.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import platform
import shutil
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import pyarrow as pa  # noqa: E402

from ovpipe import storage  # noqa: E402
from ovpipe.config import load_recipe  # noqa: E402
from ovpipe.data import tables  # noqa: E402
from ovpipe.data.tarwriter import TarWriter  # noqa: E402
from ovpipe.packing import pack  # noqa: E402
from ovpipe.packing.datasets import step_name  # noqa: E402
from ovpipe.sharded import Context, shard_name  # noqa: E402

MB = 1e6
RECIPE = ROOT / "configs" / "recipes" / "ov15-8b.yaml"


def jpeg_like(rng: np.random.Generator, size: int) -> bytes:
    """SOI + SOF0 (so image_size reads a real frame header) + random bytes + EOI."""
    w, h = int(rng.integers(320, 2049)), int(rng.integers(240, 2049))
    head = b"\xff\xd8" + b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h, w, 3) + bytes(9)
    return head + rng.bytes(max(0, size - len(head) - 2)) + b"\xff\xd9"


def image_sizes(rng: np.random.Generator, total: int) -> list[int]:
    sizes, acc = [], 0
    while acc < total:
        s = int(np.clip(rng.lognormal(np.log(250e3), 0.7), 50e3, 1e6))
        sizes.append(s)
        acc += s
    return sizes


def make_inputs(ctx: Context, n_shards: int, total_bytes: int, seed: int) -> list[dict]:
    """Input shards (filter's layout) and the filter manifest pack reads; returns one row per sample."""
    rng = np.random.default_rng(seed)
    sizes = image_sizes(rng, total_bytes)
    per = -(-len(sizes) // n_shards)
    rows, uris = [], []
    for j in range(n_shards):
        uri = ctx.uri("filter", f"{shard_name(j)}.tar")
        w = TarWriter(uri)
        ids = []
        for i in range(j * per, min(len(sizes), (j + 1) * per)):
            key = f"{i:09d}"
            caption = f"a photo of thing number {i} on a plain ground, seen from the left".encode()
            meta = json.dumps({"id": key, "lang": "en", "clip_score": 0.3, "source": {}}, sort_keys=True).encode()
            w.write(key, {"jpg": jpeg_like(rng, sizes[i]), "txt": caption, "json": meta})
            ids.append(key)
        w.close()
        starts = [start for _, start, _ in w.layout] + [w.end_offset]
        rows += [{"id": k, "shard": j, "offset": starts[n], "size": starts[n + 1] - starts[n], "n_images": 1}
                 for n, k in enumerate(ids)]
        uris.append(uri)
    storage.write_json(ctx.uri("filter", "manifest.json"), {"outputs": [{"uri": u} for u in uris]})
    return rows


def make_plan(ctx: Context, rows: list[dict], n_out: int, seed: int) -> None:
    """Shuffled samples, 3-8 per packed sequence, one plan part per output shard (as pack._plan writes)."""
    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(len(rows))
    step, bin_id = step_name("pack", "mid"), 0
    for j, part in enumerate(np.array_split(order, n_out)):
        out, i = [], 0
        while i < len(part):
            k = int(rng.integers(3, 9))
            out += [{**rows[r], "bin": bin_id, "length": 1000, "truncated": False} for r in part[i:i + k]]
            i, bin_id = i + k, bin_id + 1
        table = pa.table({c: [r[c] for r in out] for c in ("id", "shard", "offset", "size", "n_images")}) \
            .append_column("bin", pa.array([r["bin"] for r in out], pa.int64())) \
            .append_column("length", pa.array([r["length"] for r in out], pa.int32())) \
            .append_column("truncated", pa.array([r["truncated"] for r in out]))
        tables.write_parquet(ctx.uri(step, "plan", f"{shard_name(j)}.parquet"), table)


def timed(fn) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _clear(uris: list[str]) -> None:
    """Outputs of an earlier round removed untimed: neither side pays for replacing old files."""
    for u in uris:
        storage.delete(u)


def run_ours(ctx: Context, n_out: int) -> dict:
    _clear([ctx.uri(step_name("pack", "mid"), f"{shard_name(j)}.tar") for j in range(n_out)])
    infos = []
    wall, cpu = timed(lambda: infos.extend(pack.write_shard(ctx, j, "mid").outputs[0] for j in range(n_out)))
    sizes = [_size(o["uri"]) for o in infos]
    return {"wall_s": wall, "cpu_s": cpu, "bytes": sum(sizes), "sizes": sizes,
            "sha256": [o["sha256"] for o in infos]}


def _size(uri: str) -> int:
    if storage.is_remote(uri):
        bucket, key = storage.split_s3(uri)
        return storage.s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]
    return os.path.getsize(uri)


def _copy_local(src: str, dst: str, size: int, durable: bool = True, sha256: bool = False) -> None:
    """A plain buffered copy (1 MiB reads and writes) into a temporary, renamed into place; durable:
    fsync'ed before the rename and the folder after it, as ours commits; sha256: every buffer hashed
    too, in line, while it is in cache (the least a writer that owes a digest does)."""
    tmp, buf = f"{dst}.tmp-{uuid.uuid4().hex[:12]}", memoryview(bytearray(1 << 20))
    digest = hashlib.sha256()
    with open(tmp, "wb", buffering=0) as out:
        left = size
        while left:  # the input again from its start when the packed shard is the larger
            with open(src, "rb", buffering=0) as f:
                while left and (n := f.readinto(buf[:min(left, len(buf))])):
                    if sha256:
                        digest.update(buf[:n])
                    out.write(buf[:n])
                    left -= n
        if durable:
            os.fsync(out.fileno())
    os.replace(tmp, dst)
    if durable:
        fd = os.open(os.path.dirname(dst), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def _copy_s3(src: str, dst: str, size: int) -> None:
    client = storage.s3_client()
    sb, sk = storage.split_s3(src)
    db, dk = storage.split_s3(dst)
    buf = io.BytesIO()
    client.download_fileobj(sb, sk, buf)
    data = buf.getbuffer()
    body = bytes(data[:size]) if len(data) >= size else (bytes(data) * (size // len(data) + 1))[:size]
    client.upload_fileobj(io.BytesIO(body), db, dk)


def run_copy(ctx: Context, sizes: list[int], durable: bool = True, sha256: bool = False) -> dict:
    inputs = [ctx.uri("filter", f"{shard_name(j)}.tar") for j in range(len(sizes))]
    outs = [ctx.uri("copy", f"{shard_name(j)}.bin") for j in range(len(sizes))]
    if not storage.is_remote(ctx.store):
        os.makedirs(storage.parent(outs[0]), exist_ok=True)
    _clear(outs)
    copy = _copy_s3 if storage.is_remote(ctx.store) else \
        functools.partial(_copy_local, durable=durable, sha256=sha256)
    wall, cpu = timed(lambda: [copy(i, o, s) for i, o, s in zip(inputs, outs, sizes)])
    return {"wall_s": wall, "cpu_s": cpu, "bytes": sum(_size(o) for o in outs)}


def bench_store(name: str, store: str, args) -> dict:
    recipe = load_recipe(str(RECIPE))
    ctx = Context(recipe, store, f"bench-{uuid.uuid4().hex[:8]}")
    t0 = time.perf_counter()
    rows = make_inputs(ctx, args.shards, int(args.total_mb * MB), args.seed)
    make_plan(ctx, rows, args.shards, args.seed)
    setup = time.perf_counter() - t0
    rounds = []
    for r in range(args.rounds):
        res = {}
        for which in (("ours", "copy") if r % 2 == 0 else ("copy", "ours")):
            if which == "ours":
                res["ours"] = run_ours(ctx, args.shards)
            else:
                # sizes are known before the first "ours" only from a dry estimate: the round's own if any
                sizes = res["ours"]["sizes"] if "ours" in res else rounds[-1]["ours"]["sizes"] if rounds \
                    else _estimate(ctx, args.shards)
                res["copy"] = run_copy(ctx, sizes)
                if not storage.is_remote(store):
                    res["page_cache_copy"] = run_copy(ctx, sizes, durable=False)
                    res["hashing_copy"] = run_copy(ctx, sizes, sha256=True)
        rounds.append(res)
        print(f"  {name} round {r}: " + "  ".join(f"{k} {_mbs(v):7.1f} MB/s" for k, v in res.items()), flush=True)
    digests = {tuple(r["ours"]["sha256"]) for r in rounds}
    best = {k: min((r[k] for r in rounds), key=lambda x: x["wall_s"]) for k in rounds[0]}
    out = {"store": name, "setup_s": setup, "samples": len(rows), "input_bytes": sum(r["size"] for r in rows),
           "output_bytes": best["ours"]["bytes"], "shards": args.shards,
           "ours_mb_s": _mbs(best["ours"]), "copy_mb_s": _mbs(best["copy"]),
           "ratio": _mbs(best["ours"]) / _mbs(best["copy"]),
           **({"page_cache_copy_mb_s": _mbs(best["page_cache_copy"]),
               "ratio_vs_page_cache_copy": _mbs(best["ours"]) / _mbs(best["page_cache_copy"]),
               "hashing_copy_mb_s": _mbs(best["hashing_copy"]),
               "ratio_vs_hashing_copy": _mbs(best["ours"]) / _mbs(best["hashing_copy"]),
               "hashing_copy_vs_copy": _mbs(best["hashing_copy"]) / _mbs(best["copy"])}
              if "page_cache_copy" in best else {}),
           "deterministic": len(digests) == 1, "sha256": rounds[0]["ours"]["sha256"],
           "rounds": [{k: {f: v[f] for f in ("wall_s", "cpu_s", "bytes")} for k, v in r.items()} for r in rounds]}
    storage.delete_tree(storage.join(store, ctx.run_id))
    return out


def _estimate(ctx: Context, n_out: int) -> list[int]:
    """Packed shard sizes before any was written: ours once, untimed (a warm-up as well)."""
    return run_ours(ctx, n_out)["sizes"]


def _mbs(r: dict) -> float:
    return r["bytes"] / MB / r["wall_s"]


def sha256_mb_s(total: int = 256 << 20) -> float:
    """hashlib's sha256 here, now: ours must hash every shard byte (the digest is a contract), so on a
    store faster than this the copy cannot be matched."""
    chunk, h = os.urandom(1 << 20), hashlib.sha256()
    t0 = time.perf_counter()
    for _ in range(total >> 20):
        h.update(chunk)
    return total / MB / (time.perf_counter() - t0)


def plot(results: list[dict], path: Path) -> None:
    from ovpipe.plots import figure

    with figure(str(path), (7, 4)) as (_, ax):
        x = np.arange(len(results))
        ours = [r["ours_mb_s"] for r in results]
        copy = [r["copy_mb_s"] for r in results]
        ax.bar(x - 0.2, copy, 0.4, label="plain copy, same store")
        ax.bar(x + 0.2, ours, 0.4, label="ovpipe pack write_shard")
        for i, r in enumerate(results):
            ax.text(i + 0.2, ours[i], f"{r['ratio']:.0%}", ha="center", va="bottom")
        ax.set_xticks(x, [f"{r['store']}\n{r['output_bytes'] / MB:.0f} MB in {r['shards']} shards" for r in results])
        ax.set(ylabel="MB/s of packed-shard bytes", title="Packed-shard writing vs a plain copy (best round)")
        ax.legend(loc="lower right")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stores", default="folder,seaweedfs")
    ap.add_argument("--total-mb", type=float, default=200, help="image bytes per store (about the shard bytes)")
    ap.add_argument("--shards", type=int, default=4, help="input shards = output shards")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "shard_write.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shard-write-bench-"))
    results = []
    try:
        for name in args.stores.split(","):
            if name == "folder":
                results.append(bench_store(name, str(work / "store"), args))
            elif name == "seaweedfs":
                from ovpipe.s3server import SeaweedS3

                with SeaweedS3(work / "seaweed") as s3:
                    os.environ.update(s3.env())
                    storage._client_for.cache_clear()
                    s3.create_bucket("bench")
                    results.append(bench_store(name, "s3://bench/store", args))
            else:
                raise SystemExit(f"unknown store {name!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in results:
        print(f"{r['store']:10s} ours {r['ours_mb_s']:7.1f} MB/s  copy {r['copy_mb_s']:7.1f} MB/s  "
              f"ratio {r['ratio']:.2f}  ({r['output_bytes'] / MB:.0f} MB, {r['samples']} samples, "
              f"deterministic={r['deterministic']})"
              + (f"; page-cache copy {r['page_cache_copy_mb_s']:.0f} MB/s, ratio {r['ratio_vs_page_cache_copy']:.2f}"
                 + f"; durable copy + sha256 {r['hashing_copy_mb_s']:.0f} MB/s ({r['hashing_copy_vs_copy']:.2f} of the "
                   f"copy), ours {r['ratio_vs_hashing_copy']:.2f} of it"
                 if "page_cache_copy_mb_s" in r else ""))
    if len({tuple(r["sha256"]) for r in results}) > 1:
        print("WARNING: packed shards differ between stores")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sha = sha256_mb_s()
    print(f"sha256 alone: {sha:.0f} MB/s on this machine")
    body = {"benchmark": "shard_write", "args": vars(args), "python": platform.python_version(),
            "cpus": os.cpu_count(), "sha256_mb_s": sha, "results": results,
            "digest_of_digests": hashlib.sha256(json.dumps([r["sha256"] for r in results]).encode()).hexdigest()}
    out.write_text(json.dumps(body, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
