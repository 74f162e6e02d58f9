"""Caption deduplication: per-sample keys/signatures computed per shard, one global clustering pass.

Exact duplicates share `exact_key` (blake2b of the normalized caption). Near duplicates are found
with MinHash over character shingles + LSH banding, verified by estimated Jaccard. Every cluster
keeps its smallest id, so results do not depend on shard or input order.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from ovpipe.curation.caption_rules import normalize

_U64 = np.uint64
_MAX = np.iinfo(np.uint64).max
_C1, _C2, _GOLD = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB), _U64(0x9E3779B97F4A7C15)
_CHUNK = 1 << 22  # elements per (num_perm x shingles) block: bounds memory at ~32 MB per array


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a bijection on uint64 whose output bits depend on all input bits."""
    z = z ^ (z >> _U64(30))
    z = z * _C1
    z = z ^ (z >> _U64(27))
    z = z * _C2
    return z ^ (z >> _U64(31))


def _perm_seeds(num_perm: int, seed: int) -> np.ndarray:
    # Each permutation is x -> mix(x ^ s_k); the s_k are a splitmix sequence from `seed`.
    with np.errstate(over="ignore"):
        return _mix(_U64(seed & 0xFFFFFFFFFFFFFFFF) + _GOLD * np.arange(1, num_perm + 1, dtype=_U64))


def exact_key(text: str) -> int:
    """Signed 64-bit blake2b of normalize(text) (signed so it stores as int64 in parquet)."""
    digest = hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def minhash(text: str, num_perm: int = 64, shingle: int = 5, seed: int = 0) -> np.ndarray:
    """uint64 (num_perm,) MinHash of the character `shingle`-grams of normalize(text)."""
    return minhash_many([text], num_perm=num_perm, shingle=shingle, seed=seed)[0]


def minhash_many(texts: Sequence[str], num_perm: int = 64, shingle: int = 5,
                 seed: int = 0) -> np.ndarray:
    """uint64 (len(texts), num_perm); row i equals minhash(texts[i]). Use this per shard: one
    vectorized pass over all captions instead of numpy calls per caption.

    A text shorter than `shingle` is one shingle; an empty (after normalize) text gets all-max slots.
    """
    if num_perm < 1 or shingle < 1:
        raise ValueError("num_perm and shingle must be >= 1")
    norm = [normalize(t) for t in texts]
    lens = np.fromiter((len(t) for t in norm), dtype=np.int64, count=len(norm))
    out = np.full((len(norm), num_perm), _MAX, dtype=_U64)
    if not len(norm) or not lens.any():
        return out
    starts = np.zeros(len(norm), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    total = int(lens.sum())
    # Code points of all texts back to back, zero-padded so every position has a full window.
    codes = np.zeros(total + shingle, dtype=_U64)
    codes[:total] = np.frombuffer("".join(norm).encode("utf-32-le"), dtype=np.uint32)
    # Hash every window of length 1..shingle starting at each position, extending by one char per
    # step; texts shorter than `shingle` take their whole-text hash at step == their length.
    h = np.zeros(total, dtype=_U64)
    short = np.flatnonzero((lens > 0) & (lens < shingle))
    short_hash = np.zeros(len(short), dtype=_U64)
    with np.errstate(over="ignore"):
        for j in range(shingle):
            h = _mix((h ^ codes[j:j + total]) + _GOLD)
            done = lens[short] == j + 1
            short_hash[done] = h[starts[short[done]]]
    # One hash per shingle, grouped by text: windows that stay inside their own text.
    full = np.flatnonzero(lens >= shingle)
    counts = lens[full] - shingle + 1
    group_start = np.zeros(len(full), dtype=np.int64)
    np.cumsum(counts[:-1], out=group_start[1:])
    pos = np.repeat(starts[full] - group_start, counts) + np.arange(int(counts.sum()), dtype=np.int64)
    rows = np.concatenate([full, short])
    shingle_hash = np.concatenate([h[pos], short_hash])
    bounds = np.concatenate([group_start, counts.sum() + np.arange(len(short))]).astype(np.int64)
    sig = _minhash_groups(shingle_hash, bounds, _perm_seeds(num_perm, seed))
    out[rows] = sig
    return out


def _minhash_groups(hashes: np.ndarray, bounds: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Per group (hashes[bounds[g]:bounds[g+1]]) the min of mix(x ^ seed) for each seed."""
    out = np.empty((len(bounds), len(seeds)), dtype=_U64)
    ends = np.append(bounds[1:], len(hashes))
    step = max(1, _CHUNK // len(seeds))
    g0 = 0
    with np.errstate(over="ignore"):
        while g0 < len(bounds):
            # Whole groups up to ~step hashes (at least one group, however large).
            lo = bounds[g0]
            g1 = max(g0 + 1, int(np.searchsorted(ends, lo + step, side="right")))
            block = _mix(hashes[None, lo:ends[g1 - 1]] ^ seeds[:, None])  # (num_perm, hashes)
            out[g0:g1] = np.minimum.reduceat(block, bounds[g0:g1] - lo, axis=1).T
            g0 = g1
    return out


def lsh_params(num_perm: int, threshold: float, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm: the most rows per band (fewest false candidates)
    such that a pair at exactly `threshold` Jaccard shares a band with probability >= `recall`."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= recall:
            best = (bands, rows)
    return best


def _band_keys(sig: np.ndarray, band: int, rows: int) -> np.ndarray:
    """One uint64 bucket key per row for the `band`-th group of `rows` signature slots."""
    with np.errstate(over="ignore"):
        key = np.full(len(sig), _U64(band + 1) * _GOLD, dtype=_U64)
        for c in range(band * rows, (band + 1) * rows):
            key = _mix(key ^ sig[:, c])
    return key


def _band_pairs(key: np.ndarray, tiebreak: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs sharing a bucket key. Within a bucket rows are ordered by `tiebreak` (content-derived,
    so pairs do not depend on input order) and each is paired with the next `window` members: all
    pairs in buckets up to window + 1 rows, a bounded chain in larger ones."""
    order = np.lexsort((tiebreak, key))
    sk = key[order]
    same_next = np.flatnonzero(sk[1:] == sk[:-1])  # positions whose bucket continues
    a, b = [], []
    for d in range(1, window + 1):
        i = same_next[same_next + d < len(sk)]
        i = i[sk[i + d] == sk[i]]
        if not len(i):  # no bucket has d + 1 members, so none has more
            break
        a.append(order[i])
        b.append(order[i + d])
    if not a:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(a), np.concatenate(b)


def _similarity(sig: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard (share of equal slots) of rows a[k] and b[k], in memory-bounded chunks."""
    out = np.empty(len(a), dtype=np.float64)
    step = max(1, _CHUNK // max(1, sig.shape[1]))
    for s in range(0, len(a), step):
        out[s:s + step] = (sig[a[s:s + step]] == sig[b[s:s + step]]).mean(axis=1)
    return out


def _union(parent: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorized union-find: merge the edges (u, v) into `parent` (every node pointing at its root,
    the smallest node of its component) and return it in the same fully compressed form."""
    while len(u):
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        if not differ.any():
            break
        u, v, pu, pv = u[differ], v[differ], pu[differ], pv[differ]
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))  # hook larger root under smaller
        while True:  # pointer jumping until every node points at its root
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    return parent


def duplicates(ids: Sequence[str], exact: np.ndarray, signatures: np.ndarray | None,
               threshold: float = 0.9, bands: int | None = None,
               window: int = 32) -> dict[str, tuple[str, str]]:
    """{duplicate_id: (kept_id, detail)}; each cluster keeps its smallest id (ids must be unique).

    exact: int64 (N,) from exact_key; signatures: uint64 (N, num_perm) from minhash, or None for
    exact-only. Near duplicates: pairs sharing an LSH band bucket with estimated Jaccard >= threshold,
    merged transitively (so two members of one cluster may be less similar than `threshold`).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    n = len(ids)
    exact = np.asarray(exact, dtype=np.int64)
    if exact.shape != (n,):
        raise ValueError(f"exact: expected shape ({n},), got {exact.shape}")
    sig = None
    if signatures is not None:
        sig = np.asarray(signatures)
        if sig.ndim != 2 or sig.shape[0] != n:
            raise ValueError(f"signatures: expected shape ({n}, num_perm), got {sig.shape}")
        if sig.shape[1] == 0:
            sig = None
    if n < 2:
        return {}
    if len(set(ids)) != n:  # the result is keyed by id, so repeats would silently merge
        raise ValueError("duplicates(): ids must be unique")
    # Exact groups: every member linked to the group's first row (in key order).
    by_key = np.argsort(exact, kind="stable")
    first = np.ones(n, dtype=bool)
    first[1:] = exact[by_key[1:]] != exact[by_key[:-1]]
    head = by_key[np.maximum.accumulate(np.where(first, np.arange(n), 0))]
    parent = _union(np.arange(n, dtype=np.int64), head[~first], by_key[~first])
    if sig is not None:
        # One row per exact key is enough: equal normalized texts have equal signatures. Exact keys
        # are unique among these rows, which makes them a content-derived bucket tiebreak.
        reps = by_key[first]
        if bands is None:
            bands, rows = lsh_params(sig.shape[1], threshold)
        elif 1 <= bands <= sig.shape[1]:
            rows = sig.shape[1] // bands
        else:
            raise ValueError(f"bands must be in 1..{sig.shape[1]}, got {bands}")
        rep_sig, rep_key = sig[reps], exact[reps]
        for band in range(bands):
            a, b = _band_pairs(_band_keys(rep_sig, band, rows), rep_key, window)
            a, b = reps[a], reps[b]
            todo = parent[a] != parent[b]  # pairs already clustered need no check
            a, b = a[todo], b[todo]
            ok = _similarity(sig, a, b) >= threshold
            parent = _union(parent, a[ok], b[ok])
    return _report(ids, exact, sig, parent, threshold)


def _report(ids: Sequence[str], exact: np.ndarray, sig: np.ndarray | None, parent: np.ndarray,
            threshold: float) -> dict[str, tuple[str, str]]:
    """Pick each cluster's smallest id (only clustered ids are compared) and describe the others."""
    clustered = parent != np.arange(len(parent))
    clustered[parent[clustered]] = True  # roots too
    members = np.flatnonzero(clustered)
    if not len(members):
        return {}
    names = np.asarray([ids[i] for i in members.tolist()], dtype=str)
    # Sort by (cluster, id); the first of each cluster is kept.
    order = np.argsort(names, kind="stable")
    order = order[np.argsort(parent[members][order], kind="stable")]
    members, names, comp = members[order], names[order], parent[members[order]]
    start = np.ones(len(members), dtype=bool)
    start[1:] = comp[1:] != comp[:-1]
    kept_pos = np.maximum.accumulate(np.where(start, np.arange(len(members)), 0))
    dup_pos = np.flatnonzero(~start)
    dup, kept = members[dup_pos], members[kept_pos[dup_pos]]
    is_exact = (exact[dup] == exact[kept]).tolist()
    sim = _similarity(sig, dup, kept).tolist() if sig is not None else [1.0] * len(dup)
    result: dict[str, tuple[str, str]] = {}
    for d_id, k_id, ex, j in zip(names[dup_pos].tolist(), names[kept_pos[dup_pos]].tolist(), is_exact, sim):
        if ex:
            detail = f"exact duplicate of {k_id}"
        elif j >= threshold:
            detail = f"near duplicate of {k_id} (jaccard≈{j:.2f})"
        else:
            detail = f"near duplicate of {k_id} (jaccard≈{j:.2f}, linked via other near duplicates)"
        result[d_id] = (k_id, detail)
    return result
