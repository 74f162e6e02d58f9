"""Offline best-fit-decreasing (BFD) packing of sample lengths into fixed-length sequences.

Rules, shared by the numba kernel (`pack_lengths`) and its plain-Python oracle (`reference_bfd`):

* Samples are placed in decreasing length, equal lengths in sample-index order (the caller orders
  samples by id, so the result does not depend on sharding). Bins are numbered in creation order.
* A sample goes to the open bin with the smallest residual >= its length; among bins with the same
  residual, the one that reached it last (LIFO: O(1) with a list per residual). Else a new bin opens.
* A bin closes (is never searched again) when its residual is 0 or it holds `max_samples` samples.
* Image limits (`max_images`, `max_image_tokens`) bind on a second dimension, so open bins are kept
  in sets: 0 (TEXT) for bins that no sample with images can fit again (less room than the fewest
  images / image tokens of any such sample), 1..16 for classes of image room left (by image tokens
  if that limit is set, else by images; width ceil((limit + 1) / 16)). A text-only sample searches
  all sets; one with images the class of its own need (where a bin may lack room) and those above
  (where all have room). In each set it takes the first bin within the limits in best-fit order
  (rest of a residual's list, then larger residuals), trying at most `max_scan` candidates per set;
  the best (residual, set) wins, the lower set on a tie. O(1) per sample; the bound can cost a bin
  only when many bins of one class are just short of the sample's need.
* -1: a sample that cannot be placed: length <= 0 or > capacity, or whose own images / image tokens
  exceed a per-bin limit.

Kernel: a counting sort by length (stable by index); per set and residual r a singly linked list of
open bins (`head[set, r]`, `NXT`); per set a two-level bitset over residuals 0..capacity, so "first
non-empty residual >= L" is a few 64-bit word operations. Memory beyond the input and the int64
output: an int32 sort order, 12 bytes per bin in use (20 with image limits, plus sorted copies of
the image counts); O(capacity) tables. Numba compiles it on first call and caches it on disk.
"""

from __future__ import annotations

import bisect
import itertools
import math
import warnings
from collections import namedtuple

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; keep `import ovpipe.packing` working
    numba = None

MAX_SCAN = 16  # candidates tried per set when an image limit rejects them (64 packs no better here)
MAX_CAPACITY = 1 << 26  # tables are O(capacity); sequences longer than 64M tokens are out of scope


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

_Inputs = namedtuple("_Inputs", "lengths capacity max_samples images max_images tokens max_tokens max_scan")


def _int(name: str, value, minimum: int, maximum: int = 2**31 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
    return int(value)


def _int_array(name: str, a, n: int | None = None) -> np.ndarray:
    """1-D integer array as int32/int64, those two without a copy (numba compiles one kernel each)."""
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
    if a.dtype == np.uint64 and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has values beyond int64")
    return a.astype(np.int32 if a.dtype.itemsize <= 2 else np.int64)


def _prepare(lengths, capacity, max_samples, max_images, images, max_image_tokens, image_tokens,
             max_scan) -> _Inputs:
    lengths = _int_array("lengths", lengths)
    n = lengths.size
    capacity = _int("capacity", capacity, 1, MAX_CAPACITY)
    max_samples = n + 1 if max_samples is None else _int("max_samples", max_samples, 1, 2**62)
    limits = []
    for lim_name, lim, arr_name, arr in (("max_images", max_images, "images", images),
                                         ("max_image_tokens", max_image_tokens, "image_tokens", image_tokens)):
        if lim is None:
            limits += [np.zeros(0, np.int32), -1]  # -1: no limit
            continue
        lim = _int(lim_name, lim, 0)  # < 2**31: per-bin sums are int32
        if arr is None:
            raise ValueError(f"{lim_name} is set: pass {arr_name}, one integer per sample")
        arr = _int_array(arr_name, arr, n)
        if arr.size and arr.min() < 0:
            raise ValueError(f"{arr_name} must be >= 0")
        if arr.dtype != np.int32:  # one kernel signature; anything over the limit is rejected anyway
            arr = np.minimum(arr, lim + 1).astype(np.int32)
        limits += [arr, lim]
    return _Inputs(lengths, capacity, max_samples, *limits, _int("max_scan", max_scan, 1))


# ---------------------------------------------------------------- numba kernel

_DEBRUIJN = 0x03F79D71B4CB0A89  # (1 << i) * this has a distinct top-6-bit pattern for each i
_CTZ = np.zeros(64, np.int64)
_CTZ[[((_DEBRUIJN << i) % (1 << 64)) >> 58 for i in range(64)]] = np.arange(64)
_ROOM, _NXT, _CNT, _IMG, _TOK = range(5)  # bin state: a row per bin, so an update touches one cache line
_TEXT, _CLASSES = 0, 16  # open-bin sets: 0 = only text fits; 1..16 = classes of image room left


@_jit(inline="always")
def _ctz(x):
    """Index of the lowest set bit of a non-zero int64 (de Bruijn multiply; int64 wraps like uint64)."""
    return _CTZ[(((x & -x) * _DEBRUIJN) >> 58) & 63]


@_jit(inline="always")
def _find(l0, l1, s, length, limit):
    """Smallest residual r in [length, limit] with an open bin in set s, or -1. l0[s] bit r: list r
    non-empty; l1[s] bit w: l0[s] word w non-zero. The l1 loop runs over capacity/4096 words at most."""
    length = np.int64(length)
    if length > limit:
        return -1
    w = length >> 6
    x = l0[s, w] & (np.int64(-1) << (length & 63))
    if x != 0:
        r = (w << 6) + _ctz(x)
        return r if r <= limit else -1
    w += 1
    if (w << 6) > limit:  # the range ended in the first word: the common case once a bound is known
        return -1
    w1 = w >> 6
    x = l1[s, w1] & (np.int64(-1) << (w & 63))
    while x == 0:
        w1 += 1
        if w1 >= l1.shape[1]:
            return -1
        x = l1[s, w1]
    w = (w1 << 6) + _ctz(x)
    r = (w << 6) + _ctz(l0[s, w])
    return r if r <= limit else -1


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
def _bfd_kernel(lengths, capacity, max_samples, images, max_images, tokens, max_tokens, max_scan, order, out):
    n = lengths.size
    use_img, use_tok = max_images >= 0, max_tokens >= 0
    limited = use_img or use_tok
    # Pass 1: mark what cannot be placed; histogram of key capacity - length (longest first);
    # floors: fewest images / image tokens of any sample that has some.
    start = np.zeros(capacity + 1, np.int64)
    img_floor, tok_floor = max_images + 1, max_tokens + 1
    for i in range(n):
        ln = lengths[i]
        if ln <= 0 or ln > capacity or (use_img and images[i] > max_images) or (
                use_tok and tokens[i] > max_tokens):
            out[i] = -1
            continue
        out[i] = 0
        start[capacity - ln + 1] += 1
        if (use_img and images[i] > 0) or (use_tok and tokens[i] > 0):
            img_floor = min(img_floor, images[i]) if use_img else img_floor
            tok_floor = min(tok_floor, tokens[i]) if use_tok else tok_floor
    m = 0
    for k in range(capacity + 1):
        m += start[k]
        start[k] = m
    # Forward scatter: stable, so equal lengths stay in index order. Image counts are copied into
    # sorted order too, so the main loop reads them sequentially instead of at random.
    simg = np.empty(m if use_img else 0, images.dtype)
    stok = np.empty(m if use_tok else 0, tokens.dtype)
    for i in range(n):
        if out[i] == 0:
            k = capacity - lengths[i]
            order[start[k]] = i
            if use_img:
                simg[start[k]] = images[i]
            if use_tok:
                stok[start[k]] = tokens[i]
            start[k] += 1  # ends as the end of group k

    nsets = 1 + (_CLASSES if limited else 1)
    width = ((max_tokens if use_tok else max_images) + _CLASSES) // _CLASSES if limited else 1
    head = np.full((nsets, capacity + 1), -1, order.dtype)
    l0 = np.zeros((nsets, (capacity >> 6) + 1), np.int64)
    l1 = np.zeros((nsets, (l0.shape[1] >> 6) + 1), np.int64)
    # Sized for the worst case (a bin per sample): untouched rows cost no RSS, and an array that is
    # never regrown stays in registers (regrowing it in the loop made the kernel 3x slower).
    st = np.empty((max(m, 1), 5 if limited else 3), order.dtype)
    nb = j = 0
    for ln in range(capacity, 0, -1):
        while j < start[capacity - ln]:
            n_img = simg[j] if use_img else 0
            n_tok = stok[j] if use_tok else 0
            visual = n_img > 0 or n_tok > 0
            # sets to search: the class of the sample's own need (lo), then those above it
            lo = 1 + (n_tok if use_tok else n_img) // width if visual else (0 if limited else 1)
            b, s, r, pred = -1, -1, -1, -1
            # The classes above lo surely have image room: searched first, from the least room up,
            # they bound the walk in lo, which goes last and wins a tied residual as the lower set.
            for q in range(lo + 1, nsets + 1):
                t = q if q < nsets else lo
                limit = capacity if b < 0 else (r if t == lo else r - 1)
                rt = _find(l0, l1, t, ln, limit)
                seen = 0
                while rt >= 0 and seen < max_scan:  # walk set t in best-fit order
                    c, p = head[t, rt], -1
                    while c >= 0:
                        if not visual or ((not use_img or st[c, _IMG] + n_img <= max_images) and (
                                not use_tok or st[c, _TOK] + n_tok <= max_tokens)):
                            b, s, r, pred = c, t, rt, p
                            break
                        seen += 1
                        if seen >= max_scan:
                            break
                        p, c = c, st[c, _NXT]
                    if b >= 0 and s == t:
                        break
                    rt = _find(l0, l1, t, rt + 1, limit)
            if b >= 0:
                _unlink(head, l0, l1, st, s, r, b, pred)
            else:
                b, nb = nb, nb + 1
                st[b, _ROOM], st[b, _CNT] = capacity, 0
                if limited:
                    st[b, _IMG], st[b, _TOK] = 0, 0
            st[b, _ROOM] -= ln
            st[b, _CNT] += 1
            if limited:
                st[b, _IMG] += n_img
                st[b, _TOK] += n_tok
            if st[b, _ROOM] > 0 and st[b, _CNT] < max_samples:
                s = 1
                if limited:
                    img_left, tok_left = max_images - st[b, _IMG], max_tokens - st[b, _TOK]
                    s = 1 + min(_CLASSES - 1, (tok_left if use_tok else img_left) // width)
                    if (use_img and img_left < img_floor) or (use_tok and tok_left < tok_floor):
                        s = _TEXT
                _link(head, l0, l1, st, s, b)
            order[j] = b  # sorted position j now holds its bin
            j += 1
    # Replay the counting sort to send each bin id back to its sample: the reads walk the length
    # groups in order (~capacity streams), far more cache-friendly than a random scatter.
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
    b, room = -1, 0
    for i in range(lengths.size):
        ln = lengths[i]
        if ln <= 0 or ln > capacity:
            out[i] = -1
            continue
        if ln > room:
            b, room = b + 1, capacity
        room -= ln
        out[i] = b


# ---------------------------------------------------------------- public API

def pack_lengths(lengths, capacity: int, *, max_samples: int | None = None, max_images: int | None = None,
                 images=None, max_image_tokens: int | None = None, image_tokens=None,
                 max_scan: int = MAX_SCAN) -> np.ndarray:
    """Bin id (int64) per sample by best-fit-decreasing; -1 = cannot be placed (see module doc).

    `images` / `image_tokens`: per-sample counts, required when `max_images` / `max_image_tokens`
    is set. `max_scan`: candidates tried per set when image limits reject them.
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
    _bfd_kernel(*p[:7], p.max_scan, order, out)
    return out


def next_fit(lengths, capacity: int) -> np.ndarray:
    """Baseline: samples in input order; a new bin whenever the current one cannot take the next."""
    p = _prepare(lengths, capacity, None, None, None, None, None, MAX_SCAN)
    out = np.empty(p.lengths.size, np.int64)
    if out.size:
        _next_fit_kernel(p.lengths, p.capacity, out)
    return out


def reference_bfd(lengths, capacity: int, *, max_samples: int | None = None, max_images: int | None = None,
                  images=None, max_image_tokens: int | None = None, image_tokens=None,
                  max_scan: int = MAX_SCAN) -> np.ndarray:
    """Plain-Python BFD with the same rules as `pack_lengths` (bisect over sorted lists of residuals
    that have open bins): the test oracle, and the speed a plain-Python packer reaches."""
    p = _prepare(lengths, capacity, max_samples, max_images, images, max_image_tokens, image_tokens, max_scan)
    cap, n = p.capacity, p.lengths.size
    use_img, use_tok = p.max_images >= 0, p.max_tokens >= 0
    lens = p.lengths.tolist()
    imgs = p.images.tolist() if use_img else [0] * n
    toks = p.tokens.tolist() if use_tok else [0] * n
    max_img = p.max_images if use_img else math.inf
    max_tok = p.max_tokens if use_tok else math.inf
    valid = [i for i in range(n) if 0 < lens[i] <= cap and imgs[i] <= max_img and toks[i] <= max_tok]
    visual = [imgs[i] > 0 or toks[i] > 0 for i in range(n)]
    img_floor = min((imgs[i] for i in valid if visual[i]), default=max_img + 1)
    tok_floor = min((toks[i] for i in valid if visual[i]), default=max_tok + 1)
    limited = use_img or use_tok
    width = -(-((p.max_tokens if use_tok else p.max_images) + 1) // _CLASSES) if limited else 1
    sets = [([], {}) for _ in range(1 + (_CLASSES if limited else 1))]  # (sorted residuals, residual -> bins)
    room, count, img_sum, tok_sum, where = [], [], [], [], []

    def set_of(b):
        if img_sum[b] + img_floor > max_img or tok_sum[b] + tok_floor > max_tok:
            return _TEXT
        left = (max_tok - tok_sum[b]) if use_tok else (max_img - img_sum[b])
        return 1 + min(_CLASSES - 1, left // width) if limited else 1

    def candidates(s, ln):
        """Open bins of set s with room >= ln, in best-fit order (LIFO within a residual)."""
        res, bucket = sets[s]
        for k in range(bisect.bisect_left(res, ln), len(res)):
            yield from reversed(bucket[res[k]])

    out = [-1] * n
    for i in sorted(valid, key=lambda i: (-lens[i], i)):
        ln = lens[i]
        lo = 1 + (toks[i] if use_tok else imgs[i]) // width if visual[i] else (0 if limited else 1)
        best = None  # (residual, set, bin): the smallest residual, then the lower set
        for s in range(lo, len(sets)):
            c = next((c for c in itertools.islice(candidates(s, ln), p.max_scan)
                      if img_sum[c] + imgs[i] <= max_img and tok_sum[c] + toks[i] <= max_tok), None)
            if c is not None and (best is None or room[c] < best[0]):
                best = (room[c], s, c)
        if best is None:
            b = len(room)
            for col, v in ((room, cap), (count, 0), (img_sum, 0), (tok_sum, 0), (where, None)):
                col.append(v)
        else:
            b = best[2]
            res, bucket = sets[where[b]]
            lst = bucket[room[b]]
            lst.remove(b) if lst[-1] != b else lst.pop()  # usually the last one (LIFO): O(1)
            if not lst:
                del bucket[room[b]]
                del res[bisect.bisect_left(res, room[b])]
        room[b] -= ln
        count[b] += 1
        img_sum[b] += imgs[i]
        tok_sum[b] += toks[i]
        if room[b] > 0 and count[b] < p.max_samples:
            where[b] = set_of(b)
            res, bucket = sets[where[b]]
            if room[b] not in bucket:
                bucket[room[b]] = []
                bisect.insort(res, room[b])
            bucket[room[b]].append(b)
        out[i] = b
    return np.array(out, dtype=np.int64)
