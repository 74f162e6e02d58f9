"""Lower bounds on the number of sequences of any packing within every per-sequence limit (tokens,
image tokens, images, samples): packing quality is reported against these, not against tokens alone.
Per dimension they hold because a packing within all limits is, seen along that dimension alone, a
1-D packing of its sizes; one more couples image tokens and text (`_text_over_budget`)."""

from __future__ import annotations

import math

import numpy as np

from ovpipe.packing.bfd import _prepare


def _l2(sizes: np.ndarray, cap: int) -> int:
    """Martello-Toth L2 for 1-D bins of size cap. For a threshold k <= cap/2: a size > cap - k can
    share a bin with no size >= k; sizes > cap/2 pairwise cannot share; so those need |J1| + |J2|
    bins, and sizes in [k, cap/2] that do not fit the J2 bins' leftover room need the volume bound
    on top. k = 0 gives at least ceil(sum / cap)."""
    sizes = sizes[sizes > 0]
    if sizes.size == 0:
        return 0
    hist = np.bincount(sizes, minlength=cap + 1).astype(np.int64)
    cnt_ge = np.cumsum(hist[::-1])[::-1]  # items with size >= s
    vol_ge = np.cumsum((hist * np.arange(cap + 1))[::-1])[::-1]
    half = cap // 2
    ks = np.arange(0, half + 1)
    def ge(a, s):  # a[s] for s <= cap, 0 beyond
        s = np.asarray(s)
        return np.where(s <= cap, a[np.minimum(s, cap)], 0)
    j1 = ge(cnt_ge, cap - ks + 1)  # size > cap - k
    j12 = ge(cnt_ge, half + 1)  # size > cap / 2
    j2, v2 = j12 - j1, ge(vol_ge, half + 1) - ge(vol_ge, cap - ks + 1)
    v3 = ge(vol_ge, np.maximum(ks, 1)) - ge(vol_ge, half + 1)
    extra = np.maximum(0, -(-(v3 - (j2 * cap - v2)) // cap))
    return int((j1 + j2 + extra).max())


def multidim_lower_bound(lengths, capacity: int, *, max_samples: int | None = None, max_images: int | None = None,
                         images=None, max_image_tokens: int | None = None, image_tokens=None) -> dict:
    """Lower bounds on the bins of any packing of the placeable samples that respects every limit.
    Each is valid because a packing within all limits is, seen along one dimension alone, a 1-D
    packing of that dimension's sizes: per dimension the volume bound ceil(sum / limit) and the
    stronger L2 bound (`_l2`); with an image-token budget below the capacity also
    "image_tokens_and_text" (`_text_over_budget`); `bound` is the largest."""
    p = _prepare(lengths, capacity, max_samples, max_images, images, max_image_tokens, image_tokens, 1)
    ln = p.lengths.astype(np.int64)
    ok = (ln > 0) & (ln <= p.capacity)
    dims = [("tokens", ln, p.capacity)]
    for name, arr, lim in (("images", p.images, p.max_images), ("image_tokens", p.tokens, p.max_tokens)):
        if lim >= 0:
            ok &= arr <= lim
            dims.append((name, arr.astype(np.int64), lim))
    out = {}
    for name, arr, lim in dims:
        vol = int(arr[ok].sum())
        out[name] = -(-vol // lim) if lim > 0 else (0 if vol == 0 else math.inf)
        out[name + "_l2"] = _l2(arr[ok], lim) if lim > 0 else out[name]
    if p.max_tokens >= 0 and p.max_tokens < p.capacity:
        out["image_tokens_and_text"] = _text_over_budget(ln[ok], p.tokens[ok].astype(np.int64), p.capacity,
                                                         p.max_tokens)
    n = int(ok.sum())
    out["samples"] = -(-n // p.max_samples)
    out["bound"] = max(out.values()) if n else 0
    return out


def _text_over_budget(lengths: np.ndarray, image_tokens: np.ndarray, capacity: int, budget: int) -> int:
    """Image tokens and text together. A bin holds at most `budget` image tokens and `capacity` tokens,
    so for any t in [0, capacity - budget]:
    image tokens + sum over samples of max(0, text - t) <= capacity - t per bin (a bin with text
    X <= t has image tokens <= budget <= capacity - t; one with X > t has image tokens + X - t <=
    capacity - t; and max(0, . - t) is superadditive, so per-sample excesses sum to at most the
    bin's). Hence bins >= (image tokens + sum max(0, text - t)) / (capacity - t) for every t; the
    ratio is monotone between the text sizes, so the best t is one of them or an end. t = 0 is the
    token bound; the gain comes from samples with much text, which no bin can fill with images."""
    if lengths.size == 0:
        return 0
    text = np.maximum(lengths - image_tokens, 0)
    top = capacity - budget
    ts = np.unique(np.concatenate([[0, top], text[text < top]]))
    xs = np.sort(text)
    suffix = np.concatenate([np.cumsum(xs[::-1])[::-1], [0]])  # sum of xs[k:]
    k = np.searchsorted(xs, ts, side="right")  # samples with text > t start at k
    excess = suffix[k] - ts * (xs.size - k)
    need = int(image_tokens.sum()) + excess
    return int((-(-need // (capacity - ts))).max())
