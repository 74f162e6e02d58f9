"""Quality of a packing: bins against lower bounds, fill and samples per bin (the plan's stats)."""

from __future__ import annotations

import numpy as np

from ovpipe.packing.bfd import _int, _int_array
from ovpipe.packing.multidim_bound import multidim_lower_bound


def pack_stats(lengths, bins, capacity: int, **limits) -> dict:
    """Quality of a packing: bins vs the lower bound ceil(tokens / capacity), fill, samples per bin.
    With `limits` (pack_lengths' max_samples, max_images, images, ...) also "multidim_bound": the
    bound over every limited dimension (multidim_bound.py), and the bins' excess over it."""
    lengths = lengths_all = _int_array("lengths", lengths)
    bins = _int_array("bins", bins, lengths.size)
    capacity = _int("capacity", capacity, 1, 2**62)
    placed = bins >= 0
    if not placed.all():
        lengths, bins = lengths[placed], bins[placed]
    nb = int(bins.max()) + 1 if bins.size else 0
    tokens = int(lengths.sum(dtype=np.int64))
    per_bin = np.bincount(bins, minlength=nb)
    fill = np.bincount(bins, weights=lengths, minlength=nb) / capacity
    lower = -(-tokens // capacity)
    pct = (lambda q: float(np.percentile(per_bin, q))) if nb else (lambda q: 0.0)
    return {"samples": int(placed.size), "rejected": int(placed.size - bins.size), "bins": nb, "tokens": tokens,
            "lower_bound": lower, "efficiency": tokens / (nb * capacity) if nb else 0.0,
            "over_lower_bound": nb / lower - 1 if lower else 0.0, "compression": bins.size / nb if nb else 0.0,
            "overfull_bins": int((fill > 1).sum()),
            "subsamples_per_bin": {"mean": float(per_bin.mean()) if nb else 0.0,
                                   "max": int(per_bin.max()) if nb else 0, "p50": pct(50), "p99": pct(99)},
            # bucket k holds bins with fill in [k/20, (k+1)/20); full bins land in the last one
            "fill_histogram": np.bincount(np.minimum((fill * 20).astype(np.int64), 19), minlength=20).tolist(),
            **_multidim_stats(lengths_all, capacity, nb, limits)}


def _multidim_stats(lengths, capacity, nb, limits) -> dict:
    if not limits:
        return {}
    bound = multidim_lower_bound(lengths, capacity, **limits)["bound"]
    return {"multidim_bound": bound, "over_multidim_bound": nb / bound - 1 if bound else 0.0}
