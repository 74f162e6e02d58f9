"""Offline best-fit-decreasing (BFD) bin packing of sample lengths into fixed-length sequences.

Rules (shared by the numba kernel and `reference_bfd`, its plain-Python oracle):

* Samples are placed one at a time in decreasing length; equal lengths go in sample-index order
  (the caller orders samples by id, so the result does not depend on sharding).
* A sample goes to the open bin with the smallest residual >= its length. Among open bins with that
  same residual, the one that reached it most recently wins (LIFO: O(1) with a linked list per
  residual, and just as deterministic as lowest-id).
* Per-bin limits: `max_samples` closes a bin when it is reached, so it never needs a search.
  `max_images` / `max_image_tokens` can reject the best-fit bin; then further candidates are tried in
  the same order a scan would meet them (rest of that residual's list, then the next larger
  residuals), at most `max_scan` candidates in all, and a new bin is opened if none fits. Bounding
  the scan keeps the kernel O(1) per sample; it can cost a bin only when many bins are near a limit.
* A bin is closed (no longer searched) when its residual is 0 or it holds `max_samples` samples.
* -1 marks a sample that cannot be placed: length <= 0 or > capacity, or, with image limits, a
  sample whose own images / image tokens exceed the per-bin limit.
* Bins are numbered 0..B-1 in order of creation.

Data structures: a counting sort by length (values <= capacity, stable by index), `head[r]` /
`nxt[b]` / `prv[b]` doubly linked lists of open bins per residual r, and a two-level bitset over
residuals 0..capacity so "first non-empty residual >= L" costs a few 64-bit word operations.
Memory beyond the input: the int64 output, an int32 sort order and ~20 bytes per bin; O(capacity)
tables. The kernel is compiled by numba on first call and cached on disk (`cache=True`).
"""

from __future__ import annotations

import bisect
import itertools
import math
import warnings
from typing import NamedTuple

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; keep `import ovpipe.packing` working
    numba = None

MAX_SCAN = 64  # candidates tried per sample when image limits reject the best fit
MAX_CAPACITY = 1 << 26  # tables are O(capacity); sequences longer than 64M tokens are out of scope
_NO_LIMIT = -1


def _jit(fn=None, **kw):
    if fn is None:
        return lambda f: _jit(f, **kw)
    if numba is None:
        return fn
    try:
        return numba.njit(cache=True, **kw)(fn)
    except RuntimeError:  # no writable cache location (read-only image): compile in each process
        return numba.njit(**kw)(fn)


# ---------------------------------------------------------------- input checking (shared)

class _Inputs(NamedTuple):
    lengths: np.ndarray
    capacity: int
    max_samples: int
    images: np.ndarray
    max_images: int
    tokens: np.ndarray
    max_tokens: int
    max_scan: int


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _int_array(name: str, a, n: int | None = None) -> np.ndarray:
    """1-D integer array as int32/int64 without copying those two (numba compiles one kernel each)."""
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries but lengths has {n}")
    if a.size == 0:
        return np.zeros(0, np.int32)  # np.asarray([]) is float64: an empty list is fine
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.dtype in (np.int32, np.int64):
        return np.ascontiguousarray(a)
    if a.dtype.itemsize <= 2:
        return a.astype(np.int32)
    if a.dtype == np.uint64 and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has values beyond int64")
    return a.astype(np.int64)


def _prepare(lengths, capacity, max_samples, max_images, images, max_image_tokens, image_tokens,
             max_scan) -> _Inputs:
    lengths = _int_array("lengths", lengths)
    capacity = _int("capacity", capacity, 1)
    if capacity > MAX_CAPACITY:
        raise ValueError(f"capacity {capacity} exceeds the supported maximum {MAX_CAPACITY}")
    n = lengths.size
    max_samples = n + 1 if max_samples is None else _int("max_samples", max_samples, 1)
    max_scan = _int("max_scan", max_scan, 1)
    limits = []
    for lim_name, lim, arr_name, arr in (("max_images", max_images, "images", images),
                                         ("max_image_tokens", max_image_tokens, "image_tokens", image_tokens)):
        if lim is None:
            limits += [np.zeros(0, np.int32), _NO_LIMIT]
            continue
        lim = _int(lim_name, lim, 0)
        if arr is None:
            raise ValueError(f"{lim_name} is set: pass {arr_name}, one integer per sample")
        arr = _int_array(arr_name, arr, n)
        if arr.size and arr.min() < 0:
            raise ValueError(f"{arr_name} must be >= 0")
        limits += [arr, lim]
    return _Inputs(lengths, capacity, max_samples, limits[0], limits[1], limits[2], limits[3], max_scan)


# ---------------------------------------------------------------- numba kernel

def _debruijn_table() -> np.ndarray:
    t = np.zeros(64, np.int64)
    for i in range(64):
        t[(((1 << i) * _DEBRUIJN) % (1 << 64)) >> 58] = i
    return t


_DEBRUIJN = 0x03F79D71B4CB0A89
_CTZ = _debruijn_table()
_ROOM, _NXT, _CNT = range(3)  # bin state: one row per bin, so an update touches one cache line
_ANY, _TEXT = 0, 1  # open-bin sets: bins that may still take a visual sample / that only text fits


@_jit(inline="always")
def _ctz(x):
    """Index of the lowest set bit of a non-zero int64 (de Bruijn multiply; int64 wraps like uint64)."""
    return _CTZ[(((x & -x) * _DEBRUIJN) >> 58) & 63]


@_jit(inline="always")
def _find(l0, l1, s, length):
    """Smallest residual r >= length with an open bin in set s, or -1. l0[s] bit r: list r non-empty;
    l1[s] bit w: l0[s] word w non-zero. The l1 loop runs over capacity/4096 words at most."""
    length = np.int64(length)
    w = length >> 6
    if w >= l0.shape[1]:
        return -1
    x = l0[s, w] & (np.int64(-1) << (length & 63))
    if x != 0:
        return (w << 6) + _ctz(x)
    w += 1
    if w >= l0.shape[1]:
        return -1
    w1 = w >> 6
    x = l1[s, w1] & (np.int64(-1) << (w & 63))
    while x == 0:
        w1 += 1
        if w1 >= l1.shape[1]:
            return -1
        x = l1[s, w1]
    w = (w1 << 6) + _ctz(x)
    return (w << 6) + _ctz(l0[s, w])


@_jit(inline="always")
def _link(head, l0, l1, st, s, b):
    """Push bin b on the front of its residual's list in set s."""
    r = st[b, _ROOM]
    q = head[s, r]
    st[b, _NXT] = q
    if q < 0:
        l0[s, r >> 6] |= np.int64(1) << (r & 63)
        l1[s, r >> 12] |= np.int64(1) << ((r >> 6) & 63)
    head[s, r] = b


@_jit(inline="always")
def _unlink(head, l0, l1, st, s, r, b, pred):
    """Remove bin b (after `pred`, or the head if pred < 0) from list r of set s. Singly linked:
    the search always knows the predecessor, so a bin update touches only its own row."""
    q = st[b, _NXT]
    if pred >= 0:
        st[pred, _NXT] = q
        return
    head[s, r] = q
    if q < 0:
        w = r >> 6
        l0[s, w] &= ~(np.int64(1) << (r & 63))
        if l0[s, w] == 0:
            l1[s, w >> 6] &= ~(np.int64(1) << (w & 63))


@_jit
def _bfd_kernel(lengths, capacity, max_samples, images, max_images, tokens, max_tokens, max_scan,
                order, out):
    n = lengths.size
    use_img, use_tok = max_images >= 0, max_tokens >= 0
    limited = use_img or use_tok
    # Pass 1: mark what cannot be placed; histogram of key capacity - length (longest first).
    # Floors: fewest images / image tokens of any visual sample; a bin with less room than that left
    # can never take a visual sample again and moves to the text-only set.
    start = np.zeros(capacity + 1, np.int64)
    total = 0
    img_floor, tok_floor = max_images + 1, max_tokens + 1
    for i in range(n):
        ln = lengths[i]
        if ln <= 0 or ln > capacity or (use_img and images[i] > max_images) or (
                use_tok and tokens[i] > max_tokens):
            out[i] = -1
            continue
        out[i] = 0
        start[capacity - ln + 1] += 1
        total += ln
        if (use_img and images[i] > 0) or (use_tok and tokens[i] > 0):
            img_floor = min(img_floor, images[i]) if use_img else img_floor
            tok_floor = min(tok_floor, tokens[i]) if use_tok else tok_floor
    m = 0
    for k in range(capacity + 1):
        m += start[k]
        start[k] = m
    for i in range(n):  # forward scatter: stable, so equal lengths stay in index order
        if out[i] == 0:
            k = capacity - lengths[i]
            order[start[k]] = i
            start[k] += 1  # ends as the end of group k

    head = np.full((2, capacity + 1), -1, order.dtype)
    l0 = np.zeros((2, (capacity >> 6) + 1), np.int64)
    l1 = np.zeros((2, (l0.shape[1] >> 6) + 1), np.int64)
    # Sized for the worst case (a bin per sample); untouched rows cost no RSS, and never regrowing
    # lets numba keep the arrays in registers (regrowth in the loop made it 3x slower).
    st = np.empty((max(m, 1), 3), order.dtype)
    img = np.empty(m if use_img else 0, np.int64)
    tok = np.empty(m if use_tok else 0, np.int64)
    nb = 0
    j = 0
    for ln in range(capacity, 0, -1):
        end = start[capacity - ln]
        while j < end:
            i = order[j]
            b, s, pred = -1, _ANY, -1
            r = _find(l0, l1, _ANY, ln)
            if not ((use_img and images[i] > 0) or (use_tok and tokens[i] > 0)):
                # text only: exact best fit over both sets; a text-only bin wins ties
                b = head[_ANY, r] if r >= 0 else -1
                if limited:
                    rt = _find(l0, l1, _TEXT, ln)
                    if rt >= 0 and (r < 0 or rt <= r):
                        b, s, r = head[_TEXT, rt], _TEXT, rt
            else:
                # visual: walk set ANY in best-fit order, at most max_scan candidates
                seen = 0
                while b < 0 and r >= 0 and seen < max_scan:
                    c, pred = head[_ANY, r], -1
                    while c >= 0:
                        if (not use_img or img[c] + images[i] <= max_images) and (
                                not use_tok or tok[c] + tokens[i] <= max_tokens):
                            b = c
                            break
                        seen += 1
                        if seen >= max_scan:
                            break
                        pred, c = c, st[c, _NXT]
                    if b < 0:
                        r = _find(l0, l1, _ANY, r + 1)
            if b >= 0:
                _unlink(head, l0, l1, st, s, r, b, pred)
            else:
                b = nb
                nb += 1
                st[b, _ROOM] = capacity
                st[b, _CNT] = 0
                if use_img:
                    img[b] = 0
                if use_tok:
                    tok[b] = 0
            st[b, _ROOM] -= ln
            st[b, _CNT] += 1
            if use_img:
                img[b] += images[i]
            if use_tok:
                tok[b] += tokens[i]
            if st[b, _ROOM] > 0 and st[b, _CNT] < max_samples:
                full = (use_img and img[b] + img_floor > max_images) or (use_tok and tok[b] + tok_floor > max_tokens)
                _link(head, l0, l1, st, _TEXT if full else _ANY, b)
            order[j] = b  # sorted position j now holds its bin
            j += 1
    # Replay the counting sort to send each bin id back to its sample: reads walk the length groups
    # sequentially (~capacity streams), which is far more cache-friendly than a random scatter.
    for k in range(capacity, 0, -1):
        start[k] = start[k - 1]
    start[0] = 0
    for i in range(n):
        if out[i] == 0:
            k = capacity - lengths[i]
            out[i] = order[start[k]]
            start[k] += 1
    return nb


@_jit
def _next_fit_kernel(lengths, capacity, out):
    b = -1
    room = 0
    for i in range(lengths.size):
        ln = lengths[i]
        if ln <= 0 or ln > capacity:
            out[i] = -1
            continue
        if ln > room:
            b += 1
            room = capacity
        room -= ln
        out[i] = b


# ---------------------------------------------------------------- public API

def pack_lengths(lengths, capacity: int, *, max_samples: int | None = None, max_images: int | None = None,
                 images=None, max_image_tokens: int | None = None, image_tokens=None,
                 max_scan: int = MAX_SCAN) -> np.ndarray:
    """Bin id (int64) per sample by best-fit-decreasing; -1 = cannot be placed (see module doc).

    `images` / `image_tokens`: per-sample counts, required when `max_images` / `max_image_tokens`
    is set. `max_scan`: candidates tried when an image limit rejects the best fit.
    """
    p = _prepare(lengths, capacity, max_samples, max_images, images, max_image_tokens, image_tokens, max_scan)
    out = np.empty(p.lengths.size, np.int64)
    if out.size == 0:
        return out
    if numba is None:  # pragma: no cover
        warnings.warn("numba is not installed: packing with the slow plain-Python reference", stacklevel=2)
        return reference_bfd(lengths, capacity, max_samples=max_samples, max_images=max_images, images=images,
                             max_image_tokens=max_image_tokens, image_tokens=image_tokens, max_scan=max_scan)
    order = np.empty(out.size, np.int32 if out.size < 2**31 - 1 else np.int64)
    _bfd_kernel(p.lengths, p.capacity, p.max_samples, p.images, p.max_images, p.tokens, p.max_tokens,
                p.max_scan, order, out)
    return out


def next_fit(lengths, capacity: int) -> np.ndarray:
    """Baseline: samples in input order; open a new bin whenever the current one cannot take the next."""
    p = _prepare(lengths, capacity, None, None, None, None, None, MAX_SCAN)
    out = np.empty(p.lengths.size, np.int64)
    if out.size:
        _next_fit_kernel(p.lengths, p.capacity, out)
    return out


def reference_bfd(lengths, capacity: int, *, max_samples: int | None = None, max_images: int | None = None,
                  images=None, max_image_tokens: int | None = None, image_tokens=None,
                  max_scan: int = MAX_SCAN) -> np.ndarray:
    """Plain-Python BFD with the same rules as `pack_lengths` (bisect over sorted lists of residuals
    that have open bins): the test oracle, and the baseline a plain-Python packer reaches."""
    p = _prepare(lengths, capacity, max_samples, max_images, images, max_image_tokens, image_tokens, max_scan)
    cap, n = p.capacity, p.lengths.size
    lens = p.lengths.tolist()
    imgs = p.images.tolist() if p.max_images >= 0 else [0] * n
    toks = p.tokens.tolist() if p.max_tokens >= 0 else [0] * n
    max_img = p.max_images if p.max_images >= 0 else math.inf
    max_tok = p.max_tokens if p.max_tokens >= 0 else math.inf
    valid = [i for i in range(n) if 0 < lens[i] <= cap and imgs[i] <= max_img and toks[i] <= max_tok]
    visual = [imgs[i] > 0 or toks[i] > 0 for i in range(n)]
    img_floor = min((imgs[i] for i in valid if visual[i]), default=max_img + 1)
    tok_floor = min((toks[i] for i in valid if visual[i]), default=max_tok + 1)

    residuals: tuple[list[int], list[int]] = ([], [])  # per set (ANY, TEXT): sorted residuals with open bins
    bucket: tuple[dict, dict] = ({}, {})  # per set: residual -> open bins, most recent last
    room, count, img_sum, tok_sum, where = [], [], [], [], []

    def candidates(s: int, ln: int):
        """Open bins of set s with room >= ln, in best-fit order."""
        res = residuals[s]
        for k in range(bisect.bisect_left(res, ln), len(res)):
            yield from reversed(bucket[s][res[k]])

    out = [-1] * n
    for i in sorted(valid, key=lambda i: (-lens[i], i)):
        ln = lens[i]
        if not visual[i]:
            b = next(candidates(_ANY, ln), None)
            t = next(candidates(_TEXT, ln), None)
            if t is not None and (b is None or room[t] <= room[b]):
                b = t
        else:
            b = next((c for c in itertools.islice(candidates(_ANY, ln), p.max_scan)
                      if img_sum[c] + imgs[i] <= max_img and tok_sum[c] + toks[i] <= max_tok), None)
        if b is None:
            b = len(room)
            room.append(cap)
            where.append(None)
            for col in (count, img_sum, tok_sum):
                col.append(0)
        else:
            s, lst = where[b], bucket[where[b]][room[b]]
            if lst[-1] == b:  # the usual case (LIFO): O(1)
                lst.pop()
            else:
                lst.remove(b)
            if not lst:
                del bucket[s][room[b]]
                del residuals[s][bisect.bisect_left(residuals[s], room[b])]
        room[b] -= ln
        count[b] += 1
        img_sum[b] += imgs[i]
        tok_sum[b] += toks[i]
        if room[b] > 0 and count[b] < p.max_samples:
            s = _TEXT if img_sum[b] + img_floor > max_img or tok_sum[b] + tok_floor > max_tok else _ANY
            where[b] = s
            if room[b] not in bucket[s]:
                bucket[s][room[b]] = []
                bisect.insort(residuals[s], room[b])
            bucket[s][room[b]].append(b)
        out[i] = b
    return np.array(out, dtype=np.int64)


def pack_stats(lengths, bins, capacity: int) -> dict:
    """Quality of a packing: bins vs the lower bound ceil(tokens / capacity), fill, samples per bin."""
    lengths = _int_array("lengths", lengths)
    bins = _int_array("bins", bins, lengths.size)
    capacity = _int("capacity", capacity, 1)
    placed = bins >= 0
    if not placed.all():
        lengths, bins = lengths[placed], bins[placed]
    nb = int(bins.max()) + 1 if bins.size else 0
    tokens = int(lengths.sum(dtype=np.int64))
    per_bin = np.bincount(bins, minlength=nb)
    fill = np.bincount(bins, weights=lengths, minlength=nb) / capacity
    lower = -(-tokens // capacity)
    pct = (lambda q: float(np.percentile(per_bin, q))) if nb else (lambda q: 0.0)
    return {
        "samples": int(placed.size),
        "rejected": int(placed.size - bins.size),
        "bins": nb,
        "tokens": tokens,
        "lower_bound": lower,
        "efficiency": tokens / (nb * capacity) if nb else 0.0,
        "over_lower_bound": nb / lower - 1 if lower else 0.0,
        "compression": bins.size / nb if nb else 0.0,
        "overfull_bins": int((fill > 1).sum()),
        "subsamples_per_bin": {"mean": float(per_bin.mean()) if nb else 0.0,
                               "max": int(per_bin.max()) if nb else 0, "p50": pct(50), "p99": pct(99)},
        # bucket k holds bins with fill in [k/20, (k+1)/20); full bins land in the last one
        "fill_histogram": np.bincount(np.minimum((fill * 20).astype(np.int64), 19), minlength=20).tolist(),
    }
