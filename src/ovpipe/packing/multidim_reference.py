"""`pack_multidim`'s rules (multidim.py's module doc) in plain Python, with sorted lists of unused
positions (bisect) where the kernel has union-find links: the test oracle, and the fallback without numba."""

from __future__ import annotations

import bisect

import numpy as np

from ovpipe.packing.multidim import (
    CLOSE,
    GOLDEN,
    SLACK,
    TARGET,
    WALK,
    WINDOW,
    _finish,
    _inputs,
    _plan,
    _weights,
    _with_tails_repacked,
)

__all__ = ["reference_multidim"]

def reference_multidim(lengths, capacity: int, *, max_samples: int | None = None, max_images: int | None = None,
                       images=None, max_image_tokens: int | None = None, image_tokens=None,
                       window: int | None = None) -> np.ndarray:
    """`pack_multidim`'s rules with sorted lists of unused positions (bisect): the test oracle."""
    p = _inputs(lengths, capacity, max_samples, max_images, images, max_image_tokens, image_tokens)
    return _with_tails_repacked(_reference_once, p, WINDOW if window is None else window)


def _reference_once(p, window: int) -> np.ndarray:
    ln_a, im_a, it_a, prim_a, ok, S_a, D_a, T_a, caps = _plan(p)
    ln, im, it, prim = (a.tolist() for a in (ln_a, im_a, it_a, prim_a))
    S, D, T = S_a.tolist(), D_a.tolist(), T_a.tolist()
    cap, cap_p, cap_im, cap_it, max_s = caps.tolist()
    w_ln, w_im = _weights(p)
    neg_s = [-prim[i] for i in S]  # ascending, for bisect: first position with size <= x
    neg_t = [-ln[i] for i in T]
    pos = {i: k for k, i in enumerate(S)}
    tpos = {i: k for k, i in enumerate(T)}
    free_s, free_t = list(range(len(S))), list(range(len(T)))  # unused positions, sorted
    used = [False] * len(ln)
    out = [-1] * len(ln)
    rem = {"vol": sum(prim[i] for i in S), "cnt": len(S), "ln": sum(ln[i] for i in S), "im": sum(im[i] for i in S),
           "text": sum(ln[i] for i in T)}

    def take(c, b):
        used[c], out[c] = True, b
        del free_s[bisect.bisect_left(free_s, pos[c])]
        rem["vol"] -= prim[c]
        rem["cnt"] -= 1
        rem["ln"] -= ln[c]
        rem["im"] -= im[c]

    def first_le(x):  # first position of S with size <= x
        return bisect.bisect_left(neg_s, -x)

    def pick(k0, u, gap):
        best, best_score, fits = None, 0.0, 0
        j = bisect.bisect_left(free_s, k0)
        for k in free_s[j:j + WALK]:
            c = S[k]
            rest = cap_p - u[1] - prim[c]
            if u[0] + ln[c] <= cap and u[2] + im[c] <= cap_im and u[3] + it[c] <= cap_it and (rest == 0 or rest >= gap):
                fits += 1
                q = u[1] + prim[c]
                score = abs(u[0] + ln[c] - ratio_ln * q) * w_ln + abs(u[2] + im[c] - ratio_im * q) * w_im
                if best is None or score < best_score:
                    best, best_score = c, score
                if fits >= window:
                    break
        return best

    nb, phase = 0, 0.0
    for i in D:
        if used[i]:
            continue
        seed_text = i not in pos
        if seed_text and not rem["cnt"]:
            break
        b, nb = nb, nb + 1
        vol = max(rem["vol"], 1)
        ratio_ln, ratio_im = rem["ln"] / vol, rem["im"] / vol
        level = (rem["ln"] + rem["text"]) * cap_p // vol
        if seed_text:
            used[i], out[i] = True, b
            del free_t[bisect.bisect_left(free_t, tpos[i])]
            rem["text"] -= ln[i]
        else:
            take(i, b)
        u = [ln[i], prim[i], im[i], it[i]]
        cnt = 1
        while cnt < max_s:
            room_p = cap_p - u[1]
            gap = prim[S[free_s[-1]]] if free_s else 0
            mean = max(1, rem["vol"] // max(rem["cnt"], 1))
            lo = first_le(room_p)
            if room_p > CLOSE * mean // 8:
                phase = (phase + GOLDEN) % 1.0
                k0 = lo + int(phase * (len(S) - lo))
            else:
                k0 = first_le(min(room_p, max(1, TARGET * mean // 8)))
            for g in (gap, 0):
                c = pick(k0, u, g)
                if c is None and k0 > lo:
                    c = pick(lo, u, g)
                if c is not None or g == 0:
                    break
            if c is None:
                break
            take(c, b)
            u = [u[0] + ln[c], u[1] + prim[c], u[2] + im[c], u[3] + it[c]]
            cnt += 1
        while cnt < max_s:
            room = min(cap - u[0], level + SLACK - u[0])
            if room <= 0:
                break
            j = bisect.bisect_left(free_t, bisect.bisect_left(neg_t, -room))
            if j == len(free_t):
                break
            k = free_t.pop(j)
            c = T[k]
            used[c], out[c] = True, b
            rem["text"] -= ln[c]
            u[0] += ln[c]
            cnt += 1
    out = np.array(out, np.int64)
    _finish(p, out, ln_a, T_a, nb, np.array(used, bool), True)
    return out
