"""Concept balancing: from per-image top-K concepts to a flatter subset.

Each image carries the ids of its K nearest concepts (``topk``, -1 = none). MetaCLIP balances by
``entry_prob = t / max(entry_count, t)`` per concept and keeps an image if any of its concepts passes
its own draw. LLaVA-OneVision-1.5 instead weights every image by the inverse frequencies of its
concepts and samples a fixed budget proportionally to those weights (Efraimidis–Spirakis, without
replacement).

Why ``"sum"`` is the default aggregate: concept c spreads a total mass of 1 over its
``entry_count[c]`` images (1/count each). With sum, the images of c together weigh ~1 for every c,
so proportional sampling gives each concept an equal expected share of the budget (a flat
distribution), and an image holding several rare concepts counts once for each of them. ``"max"``
ignores all but the image's rarest concept; ``"mean"`` dilutes a rare concept with the common ones
it co-occurs with. (mean = sum / K_i, so with the same number of concepts in every image it ranks
exactly like sum: scaling every w by one factor leaves the order of the keys log(u)/w unchanged.)

All randomness is counter-based: a draw is a pure function of (uid, seed, stream), so a sample gets
the same draw whatever shard, worker or position it comes in, and results are independent of input
order. Everything here is pure numpy, no I/O; the ``reference_*`` functions are slow plain-Python
versions kept as the test oracle of the vectorized ones.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Sequence

import numpy as np

AGGREGATES = ("sum", "mean", "max")

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64 increment (2^64 / golden ratio)
_M1 = 0xBF58476D1CE4E5B9  # splitmix64 finalizer multipliers
_M2 = 0x94D049BB133111EB
_CHUNK = 1 << 16  # elements per block: keeps the temporaries of the mixing in cache


# ----------------------------------------------------------------------------- ids and draws
def uid64(ids: Sequence[str]) -> np.ndarray:
    """uint64 per sample id: first 8 bytes (little endian) of blake2b over the utf-8 id."""
    raw = b"".join(hashlib.blake2b(s.encode("utf-8")).digest()[:8] for s in ids)
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


def _mix64(z: int) -> int:
    """splitmix64 finalizer on a Python int: a bijection of 64-bit words with full avalanche."""
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _mix64_np(z: np.ndarray, tmp: np.ndarray) -> None:
    """Same as _mix64, in place on a uint64 array (multiplication wraps mod 2^64)."""
    for shift, mult in ((30, _M1), (27, _M2)):
        np.right_shift(z, np.uint64(shift), out=tmp)
        z ^= tmp
        z *= np.uint64(mult)
    np.right_shift(z, np.uint64(31), out=tmp)
    z ^= tmp


def _seed_key(seed: int) -> int:
    return _mix64((seed + _GOLDEN) & _MASK64)


def _stream_key(seed_key: int, stream: int) -> int:
    return _mix64((seed_key + (stream + 1) * _GOLDEN) & _MASK64)


def reference_uniform01(uid: int, seed: int, stream: int = 0) -> float:
    """Plain-Python oracle of uniform01 for one sample."""
    z = _mix64(_mix64((int(uid) ^ _stream_key(_seed_key(seed), stream)) & _MASK64))
    return ((z >> 11) + 0.5) * 2.0**-53


def uniform01(uid: np.ndarray, seed: int, stream=0) -> np.ndarray:
    """float64 in the open interval (0, 1) as a pure function of (uid, seed, stream).

    uid is xor-ed with a key derived from (seed, stream), then goes through two rounds of the
    splitmix64 finalizer; the top 53 bits + 1/2 ulp give an exact float strictly inside (0, 1),
    so log(u) is always finite. ``stream`` may be an int or an array broadcastable to uid (one
    independent draw per (sample, stream), e.g. per (sample, concept)).
    """
    uid = np.ascontiguousarray(uid, dtype=np.uint64)
    flat = uid.reshape(-1)
    out = np.empty(flat.shape, dtype=np.float64)
    skey = _seed_key(seed)
    scalar = np.ndim(stream) == 0
    if scalar:
        key = np.uint64(_stream_key(skey, int(stream)))
    else:
        streams = np.broadcast_to(np.asarray(stream, dtype=np.int64), uid.shape).reshape(-1)
    z = np.empty(min(flat.size, _CHUNK), dtype=np.uint64)
    tmp = np.empty_like(z)
    for lo in range(0, flat.size, _CHUNK):
        hi = min(lo + _CHUNK, flat.size)
        zc, tc = z[: hi - lo], tmp[: hi - lo]
        if not scalar:  # the same formula as _stream_key, one key per element
            zc[:] = streams[lo:hi].astype(np.uint64)
            zc += np.uint64(1)
            zc *= np.uint64(_GOLDEN)
            zc += np.uint64(skey)
            _mix64_np(zc, tc)
            zc ^= flat[lo:hi]
        else:
            np.bitwise_xor(flat[lo:hi], key, out=zc)
        _mix64_np(zc, tc)
        _mix64_np(zc, tc)
        zc >>= np.uint64(11)
        oc = out[lo:hi]
        oc[:] = zc
        oc += 0.5
        oc *= 2.0**-53
    return out.reshape(uid.shape)


# ----------------------------------------------------------------------------- counts and weights
def _check_topk(topk: np.ndarray, n_concepts: int) -> np.ndarray:
    topk = np.asarray(topk)
    if topk.ndim != 2 or not np.issubdtype(topk.dtype, np.integer):
        raise ValueError(f"topk must be an integer (N, K) array, got {topk.dtype} {topk.shape}")
    if topk.size and (topk.min() < -1 or topk.max() >= n_concepts):
        raise ValueError(f"concept ids must lie in [-1, {n_concepts}); -1 means none")
    return topk


def concept_counts(topk: np.ndarray, n_concepts: int) -> np.ndarray:
    """entry_count: int64 number of (image, concept) entries per concept; -1 entries are skipped."""
    topk = _check_topk(topk, n_concepts)
    return np.bincount(topk[topk >= 0].astype(np.int64), minlength=n_concepts).astype(np.int64)


def _rows(n: int, step: int = 1 << 20):
    # Row blocks bound the (block, K) temporaries on 85M-image corpora.
    for lo in range(0, n, step):
        yield slice(lo, min(lo + step, n))


def inverse_frequency_weights(topk: np.ndarray, counts: np.ndarray, agg: str = "sum") -> np.ndarray:
    """float64 (N,) weight per image: sum/mean/max of 1/entry_count over its K concepts.

    An image without any concept gets weight 0 (never sampled). A concept with count 0 that an
    image nevertheless references is treated as count 1 (the image itself is an occurrence).
    """
    if agg not in AGGREGATES:
        raise ValueError(f"agg must be one of {AGGREGATES}, got {agg!r}")
    counts = np.asarray(counts)
    topk = _check_topk(topk, counts.size)
    # Appended 0 so that topk == -1 indexes it directly: no remapping of -1 needed.
    inv = np.append(1.0 / np.maximum(counts, 1).astype(np.float64), 0.0)
    w = np.zeros(topk.shape[0], dtype=np.float64)
    for rows in _rows(topk.shape[0]):
        vals = inv[topk[rows]]
        if agg == "max":
            w[rows] = vals.max(axis=1, initial=0.0)
        else:
            w[rows] = vals.sum(axis=1)
            if agg == "mean":
                k = (topk[rows] >= 0).sum(axis=1)
                w[rows] /= np.maximum(k, 1)
    return w


# ----------------------------------------------------------------------------- sampling
def weighted_sample(uid: np.ndarray, weights: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Efraimidis–Spirakis sampling of n items without replacement, as a bool mask (N,).

    key = log(u) / w (a monotone transform of u^(1/w)); the n largest keys win, ties broken by
    smaller uid (then position, for duplicated uids). w <= 0 (or NaN) is never chosen; if n is at
    least the number of positive weights, all of them are. Memory: one float64 key array plus one
    partitioned copy, beyond the inputs.
    """
    uid = np.ascontiguousarray(uid, dtype=np.uint64).reshape(-1)
    w = np.ascontiguousarray(weights, dtype=np.float64).reshape(-1)
    if uid.shape != w.shape:
        raise ValueError(f"uid and weights differ in length: {uid.size} vs {w.size}")
    pos = w > 0
    n_pos = int(np.count_nonzero(pos))
    if n >= n_pos:
        return pos
    if n <= 0:
        return np.zeros(w.size, dtype=bool)
    del pos  # re-derived below only if the boundary lies at -inf
    key = np.empty(w.size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for lo in range(0, w.size, 1 << 20):
            s = slice(lo, min(lo + (1 << 20), w.size))
            kc = np.log(uniform01(uid[s], seed), out=key[s])
            kc /= w[s]
            kc[~(w[s] > 0)] = -np.inf
    kth = w.size - n
    thr = np.partition(key, kth)[kth]  # the n-th largest key: the boundary
    mask = key > thr
    tie = key == thr
    del key
    if thr == -np.inf:  # tiny weights can underflow to -inf and tie with excluded ones
        tie &= w > 0
    cand = np.flatnonzero(tie)
    need = n - int(np.count_nonzero(mask))
    order = np.lexsort((cand, uid[cand]))  # only the boundary candidates get sorted
    mask[cand[order[:need]]] = True
    return mask


def random_sample(uid: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Uniform baseline: the same sampler with every weight 1 (the n largest u's)."""
    uid = np.asarray(uid, dtype=np.uint64).reshape(-1)
    return weighted_sample(uid, np.ones(uid.size), n, seed)


def reference_weighted_sample(uid, weights, n: int, seed: int) -> np.ndarray:
    """Plain-Python oracle of weighted_sample: heapq over (key, -uid, -position)."""
    items = [
        (math.log(reference_uniform01(int(u), seed)) / float(w), -int(u), -i)
        for i, (u, w) in enumerate(zip(uid, weights))
        if w > 0
    ]
    mask = np.zeros(len(weights), dtype=bool)
    for _, _, neg_i in heapq.nlargest(max(n, 0), items):
        mask[-neg_i] = True
    return mask


# ----------------------------------------------------------------------------- MetaCLIP
def metaclip_probs(counts: np.ndarray, t: float) -> np.ndarray:
    """entry_prob = t / max(entry_count, t): concepts rarer than t are always kept."""
    counts = np.asarray(counts, dtype=np.float64)
    if t <= 0:
        return np.zeros(counts.shape)
    return t / np.maximum(counts, t)


def metaclip_select(topk, counts, uid, t: float, seed: int) -> np.ndarray:
    """Keep an image if ANY of its concepts c passes its own draw u(uid, seed, stream=c+1) < p_c."""
    counts = np.asarray(counts)
    topk = _check_topk(topk, counts.size)
    uid = np.asarray(uid, dtype=np.uint64).reshape(-1)
    p = np.append(metaclip_probs(counts, t), 0.0)  # index -1 -> 0: "none" never passes
    keep = np.zeros(topk.shape[0], dtype=bool)
    for rows in _rows(topk.shape[0]):
        tk = topk[rows]
        u = uniform01(np.broadcast_to(uid[rows, None], tk.shape), seed, stream=tk + 1)
        keep[rows] = (u < p[tk]).any(axis=1)
    return keep


def reference_metaclip_select(topk, counts, uid, t: float, seed: int) -> np.ndarray:
    """Plain-Python oracle of metaclip_select."""
    keep = np.zeros(len(topk), dtype=bool)
    for i, row in enumerate(topk):
        for c in row:
            c = int(c)
            if (
                c >= 0
                and t > 0
                and reference_uniform01(int(uid[i]), seed, c + 1) < t / max(float(counts[c]), t)
            ):
                keep[i] = True
                break
    return keep


def _expected_kept(topk: np.ndarray, counts: np.ndarray, t: float) -> float:
    # E = Σ_i 1 - Π_c (1 - p_c): images draw independently per concept.
    p = np.append(metaclip_probs(counts, t), 0.0)
    total = 0.0
    for rows in _rows(topk.shape[0]):
        q = np.prod(1.0 - p[topk[rows]], axis=1)
        total += float(q.size - q.sum())
    return total


def metaclip_t_for_budget(topk, counts, n: int, rtol: float = 1e-3) -> float:
    """t such that the expected kept count of metaclip_select is ≈ n.

    E(t) increases continuously from 0 (t -> 0) to the number of images with a concept
    (t >= max count), so bisection on log t finds it; it stops at relative error rtol on E.
    """
    counts = np.asarray(counts)
    topk = _check_topk(topk, counts.size)
    t_max = float(max(counts.max(initial=0), 1))
    if n <= 0:
        return 0.0
    if n >= int(np.count_nonzero((topk >= 0).any(axis=1))):
        return t_max
    lo, hi = math.log(t_max) - 40.0, math.log(t_max)
    t = t_max
    for _ in range(100):
        t = math.exp(0.5 * (lo + hi))
        e = _expected_kept(topk, counts, t)
        if abs(e - n) <= rtol * n:
            break
        lo, hi = (math.log(t), hi) if e < n else (lo, math.log(t))
    return t


# ----------------------------------------------------------------------------- diagnostics
def zipf_topk(
    n_images: int,
    n_concepts: int,
    k: int,
    seed: int,
    a: float = 1.0,
    topic_size: int = 50,
    drop: float = 0.0,
) -> np.ndarray:
    """Synthetic (n_images, k) top-K concepts with Zipf(a) popularity, for tests and benchmarks.

    Concepts are grouped in topics of ``topic_size`` consecutive ids (popularity ranks are shuffled
    over ids). An image draws its first concept from the global Zipf law and the other k-1 from
    the same topic, proportionally to popularity, so entry counts stay Zipf(a) in expectation while
    co-occurrence is local, as with nearest concepts in an embedding space (topic_size >=
    n_concepts: independent slots). Each slot but the first becomes -1 with probability ``drop``
    (a similarity threshold). Repeats within a row are redrawn a few times, then set to -1.
    """
    rng = np.random.default_rng(seed)
    pop = (rng.permutation(n_concepts) + 1.0) ** -a
    cum = np.cumsum(pop)
    start = np.concatenate([[0.0], cum])  # start[c] = mass before concept c

    def draw(lo, hi):  # the concept whose mass interval holds a uniform point of [lo, hi)
        x = lo + rng.random(np.shape(lo)) * (hi - lo)
        return np.minimum(np.searchsorted(cum, x, side="right"), n_concepts - 1)

    first = draw(np.zeros(n_images), np.full(n_images, cum[-1]))
    t0 = (first // topic_size) * topic_size
    lo = np.repeat(start[t0][:, None], k, axis=1)
    hi = np.repeat(start[np.minimum(t0 + topic_size, n_concepts)][:, None], k, axis=1)
    topk = draw(lo, hi)
    topk[:, 0] = first
    for attempt in range(11):
        topk.sort(axis=1)
        dup = np.zeros(topk.shape, dtype=bool)
        dup[:, 1:] = topk[:, 1:] == topk[:, :-1]
        if not dup.any():
            break
        topk[dup] = draw(lo[dup], hi[dup]) if attempt < 10 else -1
    topk[:, 1:][rng.random((n_images, k - 1)) < drop] = -1
    return topk.astype(np.int64)


def flatness(counts: np.ndarray) -> dict:
    """How flat a concept distribution is, over the concepts it covers (count > 0)."""
    counts = np.asarray(counts, dtype=np.int64)
    cov = np.sort(counts[counts > 0])
    out = {"concepts": int(counts.size), "covered": int(cov.size), "max": int(cov.max(initial=0))}
    if cov.size == 0:
        return {
            **out,
            "median": 0.0,
            "max_over_median": float("nan"),
            "normalized_entropy": float("nan"),
            "gini": float("nan"),
        }
    med = float(np.median(cov))
    p = cov / cov.sum()
    h = float(-(p * np.log(p)).sum())
    # Gini of the sorted counts: Σ (2i - m - 1) x_i / (m Σ x), i = 1..m; 0 = perfectly flat.
    m = cov.size
    gini = float(((2 * np.arange(1, m + 1) - m - 1) * cov).sum() / (m * cov.sum()))
    return {
        **out,
        "median": med,
        "max_over_median": float(cov[-1] / med),
        "normalized_entropy": h / math.log(m) if m > 1 else 1.0,
        "gini": gini,
    }
