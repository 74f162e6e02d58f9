"""The multi-dimensional lower bound on bins (tokens, images, image tokens, samples): valid against the
brute-force optimum of tiny instances, mostly tight there, and reported by pack_stats."""

from __future__ import annotations

import numpy as np

from ovpipe.packing import multidim_lower_bound, pack_lengths
from tests.helpers import multimodal_sizes


def _optimum(items, caps):
    """Fewest bins by exhaustive search (a sample goes to an open bin or the next new one)."""
    best = [len(items)]

    def go(k, bins):
        if len(bins) >= best[0]:
            return
        if k == len(items):
            best[0] = len(bins)
            return
        for b in bins:
            if all(b[d] + items[k][d] <= caps[d] for d in range(len(caps))):
                for d in range(len(caps)):
                    b[d] += items[k][d]
                go(k + 1, bins)
                for d in range(len(caps)):
                    b[d] -= items[k][d]
        go(k + 1, bins + [list(items[k])])

    go(0, [])
    return best[0] if items else 0


def test_lower_bound_is_valid_and_tight_on_tiny_instances():
    rng = np.random.default_rng(5)
    tight = 0
    for _ in range(300):
        n = int(rng.integers(0, 9))
        cap, max_img, max_tok, max_s = (int(rng.integers(4, 20)), int(rng.integers(1, 5)), int(rng.integers(2, 15)),
                                        int(rng.integers(1, 5)))
        lengths = rng.integers(1, cap + 1, n)
        images = rng.integers(0, max_img + 1, n)
        tokens = np.minimum(rng.integers(0, max_tok + 1, n), lengths)
        lb = multidim_lower_bound(lengths, cap, max_samples=max_s, max_images=max_img, images=images,
                                  max_image_tokens=max_tok, image_tokens=tokens)
        items = [(int(a), int(b), int(c), 1) for a, b, c in zip(lengths, images, tokens)]
        opt = _optimum(sorted(items, reverse=True), (cap, max_img, max_tok, max_s))
        assert lb["bound"] <= opt, (lengths, images, tokens, lb, opt)
        bins = pack_lengths(lengths, cap, max_samples=max_s, max_images=max_img, images=images,
                            max_image_tokens=max_tok, image_tokens=tokens)
        assert (bins.max() + 1 if n else 0) >= opt
        tight += lb["bound"] == opt
    assert tight > 200  # mostly tight on tiny instances


def test_l2_beats_volume_bound_on_large_items():
    # three samples over half the capacity cannot share: L2 says 3, the volume bound 2
    lb = multidim_lower_bound([6, 6, 6], 10)
    assert (lb["tokens"], lb["tokens_l2"], lb["bound"]) == (2, 3, 3)


def test_pack_stats_reports_the_multidim_bound():
    from ovpipe.packing import pack_stats

    lengths, images, tokens = multimodal_sizes(2000, 8)
    kw = dict(max_samples=64, max_images=16, images=images, max_image_tokens=6144, image_tokens=tokens)
    bins = pack_lengths(lengths, 8192, **kw)
    stats = pack_stats(lengths, bins, 8192, **kw)
    assert stats["multidim_bound"] == multidim_lower_bound(lengths, 8192, **kw)["bound"] >= stats["lower_bound"]
    assert stats["over_multidim_bound"] == (bins.max() + 1) / stats["multidim_bound"] - 1
    assert "multidim_bound" not in pack_stats(lengths, bins, 8192)
