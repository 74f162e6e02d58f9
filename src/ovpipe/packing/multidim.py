"""Packing under per-sequence image limits (image tokens, images, samples), bin by bin.

Why not best-fit-decreasing on length (bfd.py): with an image-token budget below the capacity, image
tokens bind (their volume bound is the largest), a bin full of image tokens has only
capacity - budget tokens left for text while the average bin needs nearly all of that, and text per
sample is heavy-tailed; BFD also leaves the small-image samples to the last bins, which then hit the
image count. So bins are filled one at a time, each to its image budget, with the text kept on pace.

Rules, shared by the numba kernel (`pack_multidim`) and its plain-Python oracle (multidim_reference.py).
"Primary" is image tokens when that limit is set, else images; P its limit. Samples with any image
or image token are "visual", the others "text". Orders (ties by sample index):
  S: visual by primary size, descending;  T: text by length, descending;  D: the seeds, visual samples
  and, with an image-token budget B below the capacity C, text samples longer than C - B (the text
  room of a bin full of image tokens: no top-up room fits them late, and packed among text alone each
  of their tokens costs image room), by difficulty, descending: the largest of size_d / limit_d over
  length and the set limits, and with B < C text / (C - B) times DIFF_TEXT scaled by the pool's spare
  text room (1 - text * B / (image tokens * (C - B)), saturating at TEXT_SLACK): text-heavy samples
  open bins while the low-text companions they need are still there; where text is scarce anyway
  (the spare room is nil) it does not count.
* Paces, from the unused visual samples when a bin opens: length and images per primary unit; and the
  level = unused length (visual + text) * P / unused primary (the tokens per bin if all were equal).
* A bin opens with the first unused sample of D (a text seed only while visual samples are left).
* Fill: while the primary room is over CLOSE/8 of the unused visual samples' mean primary size, the
  walk starts at a position of S spread over the unused pool by the golden-ratio sequence (each bin
  gets a mix of sizes, not the largest first); below that at the first sample with size
  <= min(room, TARGET/8 * mean), so the last gap is closed by a near-mean sample. From the start,
  look at <= WALK unused samples; of the first `window` that fit every limit and leave a primary room
  of 0 or at least the smallest unused primary size (a room no sample fills is lost) take the one with the
  least |length - pace| / capacity + |images - pace| / max_images (the bin's totals with it; the
  second term only with both image limits); nothing: retry from the largest sample that fits the
  room; still nothing: both again without the room rule; still nothing: the fill ends.
* Top-up: while it fits and the bin stays <= level + SLACK, the first unused sample of T whose length
  fits (spreads the scarce text over all bins instead of the first ones).
* A bin stops at max_samples. When D is used up, the unused text samples go to bfd's `pack_lengths`
  (max_samples only); their bins follow.
* -1: as bfd (length <= 0 or > capacity, or over a per-bin image limit alone).
* Then the samples of the last 20% of the bins (TAILS) are packed again by these rules on their
  own, and kept where that takes fewer bins (`_with_tails_repacked`).

Kernel: "first unused at or after position k" of S and T by union-find with path halving (a used
position links to the next), so used samples cost nothing to skip; "first size <= x" by a table
(a binary search beyond TABLE_MAX). O(n * window) after the sorts.
"""

from __future__ import annotations

import numpy as np

from ovpipe.packing.bfd import _jit, _prepare, numba, reference_bfd
from ovpipe.packing.bfd import pack_lengths as _bfd

__all__ = ["pack_multidim"]

WINDOW = 32  # fitting candidates tried per step
WALK = 128  # samples looked at per step (those over a limit included)
TAILS = (0.2,)  # fractions of the last bins re-packed on their own, in turn (more: ~0.01% fewer bins for +55% time)
TABLE_MAX = 1 << 20  # sizes up to this are looked up in a table, larger ones binary-searched
CLOSE = 12  # while the room exceeds CLOSE/8 mean sizes, walks start spread over the pool
GOLDEN = 0.6180339887498949  # start positions spread over the pool by the golden-ratio sequence
TARGET = 8  # fill aims at TARGET/8 times the unused samples' mean primary size
DIFF_TEXT = 0.6  # weight of text / (C - B) in a seed's difficulty (bench/pack_limits_bench.py: 0.5-0.75 alike)
TEXT_SLACK = 0.1  # spare text room at which that weight is full (below it, in proportion)
SLACK = 0  # tokens a top-up may go over the level
W_LN, W_IM = 1.0, 1.0  # weights of the length and image-count deviations from pace


# ---------------------------------------------------------------- shared plan

def _plan(p):
    """Sizes (int64), limits (unset: a bound nothing reaches) and the orders S, D, T."""
    ln = p.lengths.astype(np.int64)
    n = ln.size
    use_img, use_tok = p.max_images >= 0, p.max_tokens >= 0
    im = p.images.astype(np.int64) if use_img else np.zeros(n, np.int64)
    it = p.tokens.astype(np.int64) if use_tok else np.zeros(n, np.int64)
    big = np.int64(1) << 40
    cap_im = p.max_images if use_img else big
    cap_it = p.max_tokens if use_tok else big
    ok = (ln > 0) & (ln <= p.capacity) & (im <= cap_im) & (it <= cap_it)
    prim, cap_p = (it, cap_it) if use_tok else (im, cap_im)
    vis = ok & ((prim > 0) | (im > 0) | (it > 0))  # text samples (T) must carry no image at all
    idx = np.arange(n)
    # difficulty as float64: IEEE division is exact-rounded, so numpy and Python agree
    diff = ln / p.capacity
    if use_tok and cap_it > 0:
        diff = np.maximum(diff, it / cap_it)
        text, room = np.maximum(ln - it, 0), p.capacity - cap_it
        if room > 0:
            spare = 1 - int(text[ok].sum()) * cap_it / (room * max(int(it[ok].sum()), 1))
            w = DIFF_TEXT * min(1.0, max(0.0, spare / TEXT_SLACK))
            if w > 0:
                diff = np.maximum(diff, w * text / room)
    if use_img and cap_im > 0:
        diff = np.maximum(diff, im / cap_im)
    v = idx[vis]
    S = v[np.lexsort((v, -prim[v]))]
    t = idx[ok & ~vis]
    d = idx[vis | (ok & ~vis & (ln > p.capacity - cap_it))] if use_tok else v
    D = d[np.lexsort((d, -diff[d]))]
    T = t[np.lexsort((t, -ln[t]))]
    caps = np.array([p.capacity, cap_p, cap_im, cap_it, p.max_samples], np.int64)
    return ln, im, it, prim, ok, S, D, T, caps


def _weights(p):
    """Score weights of the length and image-count deviations from pace (image count only when it is
    a limit of its own, beside image tokens)."""
    return W_LN / float(p.capacity), W_IM / float(p.max_images) if p.max_tokens >= 0 and p.max_images > 0 else 0.0


def _finish(p, out, ln, T, nb, used, reference):
    """Unused text samples: 1-D best fit after the bins so far."""
    rest = np.array([i for i in T.tolist() if not used[i]], np.int64) if reference else T[~used[T]]
    if rest.size:
        rest.sort()  # index order: bfd sorts by length itself, ties by position
        fn = reference_bfd if reference else _bfd
        b = fn(ln[rest], p.capacity, max_samples=p.max_samples)
        out[rest] = b + nb


# ---------------------------------------------------------------- numba kernel

@_jit(inline="always")
def _root(link, k):
    """First unused position >= k (link[k] == k: unused; the sentinel at the end is never used)."""
    while link[k] != k:
        link[k] = link[link[k]]
        k = link[k]
    return k


@_jit
def _le_table(keys):
    """table[v] = first position of the descending `keys` with keys[pos] <= v, for v below
    TABLE_MAX (or the largest key): a lookup in cache where a binary search over millions of
    keys misses it about log2(n) times."""
    top = min(keys[0] if keys.size else 0, TABLE_MAX)
    table = np.zeros(top + 1, np.int64)
    for k in range(keys.size):
        if keys[k] <= top:
            table[keys[k]] += 1
    below = 0  # keys <= v
    for v in range(top + 1):
        below += table[v]
        table[v] = keys.size - below
    return table


@_jit(inline="always")
def _first_le_in(table, keys, x):
    if x < 0:
        return keys.size
    if x < table.size:
        return table[x]
    return _first_le(keys, x)


@_jit
def _first_le(keys, x):
    """First position of a descending array with keys[pos] <= x (binary search)."""
    lo, hi = 0, keys.size
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] <= x:
            hi = mid
        else:
            lo = mid + 1
    return lo


@_jit
def _kernel(ln, im, it, prim, S, D, T, caps, window, walk, target, close, w_ln, w_im, slack, out, used,
            skey, sz, slink):
    """skey, sz, slink: empty arrays of S's size (slink one more), int32 where the sizes allow: the walks
    read them at random starts, so their width is most of the time at scale (cache misses)."""
    cap, cap_p, cap_im, cap_it, max_s = caps[0], caps[1], caps[2], caps[3], caps[4]
    ns, nt = S.size, T.size
    pos = np.empty(ln.size, np.int64)  # sample -> its position in S
    rem = np.zeros(5, np.int64)  # unused visual: primary, count, length, images; unused text: length
    for k in range(ns):  # sz: length, images, image tokens in S order (the walks read it in sequence)
        c = S[k]
        skey[k] = prim[c]
        sz[k, 0], sz[k, 1], sz[k, 2] = ln[c], im[c], it[c]
        slink[k] = k
        pos[c] = k
        rem[0] += prim[c]
        rem[2] += ln[c]
        rem[3] += im[c]
    rem[1] = ns
    tkey = np.empty(nt, np.int64)
    tpos = np.empty(ln.size, np.int64)  # text sample -> its position in T
    for k in range(nt):
        tkey[k] = ln[T[k]]
        tpos[T[k]] = k
        rem[4] += ln[T[k]]
    slink[ns] = ns
    tlink = np.arange(nt + 1)
    stab, ttab = _le_table(skey), _le_table(tkey)
    nb = 0
    dp = 0
    phase = 0.0
    last = ns - 1  # the last unused position of S: the smallest unused primary size
    while True:
        while dp < D.size and used[D[dp]]:
            dp += 1
        if dp == D.size:
            break
        i = D[dp]
        seed_text = prim[i] == 0 and im[i] == 0 and it[i] == 0
        if seed_text and rem[1] == 0:  # no visual sample left: the text goes to bfd
            break
        b = nb
        nb += 1
        # paces from the unused pool (self-correcting): length and images per primary unit, and the
        # token level a bin should reach if every remaining bin got the same
        vol = max(rem[0], 1)
        ratio_ln, ratio_im = rem[2] / vol, rem[3] / vol
        level = (rem[2] + rem[4]) * cap_p // vol
        if seed_text:
            used[i], out[i] = True, b
            tlink[tpos[i]] = tpos[i] + 1
            rem[4] -= ln[i]
        else:
            _take(i, b, pos[i], slink, used, out, rem, skey, sz)
        u_ln, u_p, u_im, u_it, cnt = ln[i], prim[i], im[i], it[i], 1
        while cnt < max_s:  # fill from S
            # a wide room: start anywhere in the fitting pool (golden-ratio sequence); a narrow one:
            # near the pool's mean size (times target/8), then the largest that fits
            room_p = cap_p - u_p
            while last >= 0 and used[S[last]]:
                last -= 1
            gap = skey[last] if last >= 0 else 0
            mean = max(1, rem[0] // max(rem[1], 1))
            lo = _first_le_in(stab, skey, room_p)
            if room_p > close * mean // 8:
                phase = (phase + GOLDEN) % 1.0
                k0 = lo + int(phase * (ns - lo))
            else:
                k0 = _first_le_in(stab, skey, min(room_p, max(1, target * mean // 8)))
            best = -1
            for g in (gap, 0):  # first leaving no room no sample could fill, then any
                best = _pick(skey, slink, sz, k0, cap, cap_im, cap_it, window, walk,
                             u_ln, u_p, u_im, u_it, ratio_ln, ratio_im, w_ln, w_im, room_p, g)
                if best < 0 and k0 > lo:  # nothing near the aim: the largest that fits
                    best = _pick(skey, slink, sz, lo, cap, cap_im, cap_it, window, walk,
                                 u_ln, u_p, u_im, u_it, ratio_ln, ratio_im, w_ln, w_im, room_p, g)
                if best >= 0 or g == 0:
                    break
            if best < 0:
                break
            _take(S[best], b, best, slink, used, out, rem, skey, sz)
            u_ln += sz[best, 0]  # sizes read in S order, where the walk just was (not by sample id)
            u_p += skey[best]
            u_im += sz[best, 1]
            u_it += sz[best, 2]
            cnt += 1
        while cnt < max_s:  # top up from T, to the level (+ slack): unused text is spread evenly
            room = min(cap - u_ln, level + slack - u_ln)
            if room <= 0:
                break
            k = _root(tlink, _first_le_in(ttab, tkey, room))
            if k >= nt:
                break
            c = T[k]
            used[c] = True
            tlink[k] = k + 1
            rem[4] -= tkey[k]
            out[c] = b
            u_ln += tkey[k]
            cnt += 1
    return nb


@_jit
def _pick(skey, slink, sz, aim, cap, cap_im, cap_it, window, walk, u_ln, u_p, u_im, u_it,
          ratio_ln, ratio_im, w_ln, w_im, room_p, gap):
    """Of the first `window` unused samples from size `aim` down that fit every limit (at most `walk`
    looked at), the position of the one closest to pace, or -1."""
    k = _root(slink, aim)
    best, best_score, seen, fits = -1, 0.0, 0, 0
    while k < skey.size and seen < walk and fits < window:
        seen += 1
        c_ln, c_im, c_it = sz[k, 0], sz[k, 1], sz[k, 2]
        rest = room_p - skey[k]
        if u_ln + c_ln <= cap and u_im + c_im <= cap_im and u_it + c_it <= cap_it and (rest == 0 or rest >= gap):
            fits += 1
            q = u_p + skey[k]
            score = abs(u_ln + c_ln - ratio_ln * q) * w_ln + abs(u_im + c_im - ratio_im * q) * w_im
            if best < 0 or score < best_score:
                best, best_score = k, score
        k = _root(slink, k + 1)
    return best


@_jit(inline="always")
def _take(c, b, k, slink, used, out, rem, skey, sz):
    """Sample c, at position k of S, into bin b."""
    used[c] = True
    out[c] = b
    slink[k] = k + 1
    rem[0] -= skey[k]
    rem[1] -= 1
    rem[2] -= sz[k, 0]
    rem[3] -= sz[k, 1]


# ---------------------------------------------------------------- public API

def _inputs(lengths, capacity, max_samples, max_images, images, max_image_tokens, image_tokens):
    return _prepare(lengths, capacity, max_samples, max_images, images, max_image_tokens, image_tokens, 1)


def pack_multidim(lengths, capacity: int, *, max_samples: int | None = None, max_images: int | None = None,
                  images=None, max_image_tokens: int | None = None, image_tokens=None,
                  window: int | None = None) -> np.ndarray:
    """Bin id (int64) per sample under every per-bin limit (see module doc); -1 as bfd."""
    p = _inputs(lengths, capacity, max_samples, max_images, images, max_image_tokens, image_tokens)
    if numba is None:  # pragma: no cover
        from ovpipe.packing.multidim_reference import reference_multidim

        return reference_multidim(lengths, capacity, max_samples=max_samples, max_images=max_images, images=images,
                                  max_image_tokens=max_image_tokens, image_tokens=image_tokens, window=window)
    return _with_tails_repacked(_pack_once, p, WINDOW if window is None else window)


def _pack_once(p, window: int) -> np.ndarray:
    ln, im, it, prim, ok, S, D, T, caps = _plan(p)
    out = np.full(ln.size, -1, np.int64)
    used = np.zeros(ln.size, np.bool_)
    narrow = max(int(caps[:4][caps[:4] < 1 << 40].max(initial=0)), ln.size + 1) < 1 << 31  # unset limits: 1 << 40
    dt = np.int32 if narrow else np.int64
    nb = _kernel(ln, im, it, prim, S, D, T, caps, window, WALK, TARGET, CLOSE, *_weights(p), SLACK, out, used,
                 np.empty(S.size, dt), np.empty((S.size, 3), dt), np.empty(S.size + 1, dt))
    _finish(p, out, ln, T, nb, used, False)
    return out


def _with_tails_repacked(once, p, window: int) -> np.ndarray:
    """`once`'s packing, then for each fraction f of TAILS the samples of the last f of the bins packed
    again on their own (kept when that takes fewer bins). The last bins get what the paces of the whole
    pool left over; packed alone, those samples get paces of their own (bench/pack_limits_bench.py:
    +0.77% over the bound -> +0.54%, for ~25% more time)."""
    out = once(p, window)
    for frac in TAILS:
        nb = int(out.max()) + 1 if out.size else 0
        cut = int(nb * (1 - frac))
        if nb - cut < 2:
            continue
        tail = np.flatnonzero(out >= cut)
        part = p._replace(lengths=p.lengths[tail], images=_part(p.images, tail, p.lengths.size),
                          tokens=_part(p.tokens, tail, p.lengths.size))
        again = once(part, window)
        if int(again.max()) + 1 < nb - cut and (again >= 0).all():
            out[tail] = again + cut
    return out


def _part(per_sample: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    return per_sample[rows] if per_sample.size == n else per_sample
