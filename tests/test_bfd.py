"""Best-fit-decreasing packer: the numba kernel against its plain-Python oracle, plus invariants,
tie rules, limits, degenerate inputs and input validation."""

from __future__ import annotations

import numpy as np
import pytest

from ovpipe.packing import bfd as bfd_mod
from ovpipe.packing import next_fit, pack_lengths, pack_stats, reference_bfd


def naive_bfd(lengths, capacity):
    """Independent O(n*B) statement of the no-limit rules: decreasing length, ties by index; the
    open bin with the smallest residual >= length, ties to the bin that reached it last."""
    room, touched, out, clock = [], [], [-1] * len(lengths), 0
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        ln = lengths[i]
        if not 0 < ln <= capacity:
            continue
        fits = [b for b in range(len(room)) if room[b] >= ln]
        if fits:
            b = min(fits, key=lambda b: (room[b], -touched[b]))
        else:
            b = len(room)
            room.append(capacity)
            touched.append(0)
        room[b] -= ln
        clock += 1
        touched[b] = clock
        out[i] = b
    return np.array(out, np.int64)


def random_case(rng, limits: bool):
    n = int(rng.integers(0, 90))
    cap = int(rng.integers(1, 120))
    lengths = rng.integers(-2, cap + 6, n)
    kw = {}
    if limits:
        images = rng.integers(0, 4, n) * (rng.random(n) < 0.6)
        tokens = rng.integers(0, 60, n) * (rng.random(n) < 0.7)
        which = int(rng.integers(0, 4))
        if which in (0, 1):
            kw.update(max_images=int(rng.integers(0, 8)), images=images)
        if which in (0, 2):
            kw.update(max_image_tokens=int(rng.integers(0, 150)), image_tokens=tokens)
        if which in (0, 3) or rng.random() < 0.3:
            kw["max_samples"] = int(rng.integers(1, 8))
        kw["max_scan"] = int(rng.integers(1, 10))
    return lengths, cap, kw


def check_invariants(lengths, cap, bins, max_samples=None, max_images=None, images=None,
                     max_image_tokens=None, image_tokens=None, **_):
    lengths = np.asarray(lengths, np.int64)
    assert bins.dtype == np.int64 and bins.shape == lengths.shape
    bad = (lengths <= 0) | (lengths > cap)
    if max_images is not None:
        bad |= np.asarray(images) > max_images
    if max_image_tokens is not None:
        bad |= np.asarray(image_tokens) > max_image_tokens
    assert ((bins == -1) == bad).all()  # every placeable sample placed, exactly once (one id each)
    placed = bins >= 0
    nb = int(bins.max()) + 1 if placed.any() else 0
    assert set(bins[placed].tolist()) == set(range(nb))  # contiguous 0..B-1
    assert (np.bincount(bins[placed], weights=lengths[placed], minlength=nb) <= cap).all()
    if max_samples is not None:
        assert (np.bincount(bins[placed], minlength=nb) <= max_samples).all()
    for lim, per in ((max_images, images), (max_image_tokens, image_tokens)):
        if lim is not None:
            assert (np.bincount(bins[placed], weights=np.asarray(per)[placed], minlength=nb) <= lim).all()
    # numbered by creation: first appearances in processing order are 0, 1, 2, ...
    order = sorted(np.flatnonzero(placed).tolist(), key=lambda i: (-lengths[i], i))
    _, first = np.unique(bins[order], return_index=True)
    assert (np.diff(first) > 0).all()


@pytest.mark.parametrize("limits", [False, True])
def test_kernel_equals_reference_on_random_inputs(limits):
    rng = np.random.default_rng(1 + limits)
    for _ in range(400):
        lengths, cap, kw = random_case(rng, limits)
        got = pack_lengths(lengths, cap, **kw)
        np.testing.assert_array_equal(got, reference_bfd(lengths, cap, **kw), err_msg=f"{lengths} {cap} {kw}")
        check_invariants(lengths, cap, got, **kw)
        if not limits:
            np.testing.assert_array_equal(got, naive_bfd(lengths.tolist(), cap))


def test_medium_input_with_limits_matches_reference():
    rng = np.random.default_rng(7)
    n = 20_000
    images = rng.choice(4, n, p=[0.2, 0.7, 0.05, 0.05])
    tokens = images * rng.integers(64, 900, n)
    lengths = tokens + rng.integers(10, 400, n)
    kw = dict(max_samples=24, max_images=6, images=images, max_image_tokens=5000, image_tokens=tokens)
    got = pack_lengths(lengths, 8192, **kw)
    np.testing.assert_array_equal(got, reference_bfd(lengths, 8192, **kw))
    check_invariants(lengths, 8192, got, **kw)
    free = pack_lengths(lengths, 8192)
    np.testing.assert_array_equal(free, reference_bfd(lengths, 8192))
    # limits cost bins, but the image-saturated bins still take text: not one bin per sample
    assert free.max() < got.max() < 1.2 * max(free.max(), images.sum() / 6)


def test_deterministic_and_dtype_independent():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 3000, 5000)
    a = pack_lengths(lengths, 4096)
    for variant in (lengths.astype(np.int32), lengths.astype(np.uint16), lengths.tolist(),
                    np.repeat(lengths, 2)[::2]):  # strided view
        np.testing.assert_array_equal(pack_lengths(variant, 4096), a)
    np.testing.assert_array_equal(pack_lengths(lengths, 4096), a)


def test_ties_by_index_and_lifo_within_a_residual():
    # equal lengths in index order: samples 0 and 1 share bin 0, sample 2 opens bin 1
    np.testing.assert_array_equal(pack_lengths([5, 5, 5], 10), [0, 0, 1])
    # both bins end at residual 3; the 3 goes to bin 1, the bin that reached residual 3 last
    np.testing.assert_array_equal(pack_lengths([3, 7, 7], 10), [1, 0, 1])
    # best fit, not first fit: the 2 goes to the 8's bin (residual 2; opened first as the longest),
    # not the 6's (residual 4)
    np.testing.assert_array_equal(pack_lengths([6, 8, 2], 10), [1, 0, 0])


def test_rejects_are_minus_one():
    got = pack_lengths([0, 11, -3, 10, 4], 10)
    np.testing.assert_array_equal(got, [-1, -1, -1, 0, 1])
    got = pack_lengths([4, 4, 4], 10, max_images=2, images=[3, 1, 0], max_image_tokens=100, image_tokens=[0, 0, 101])
    np.testing.assert_array_equal(got, [-1, 0, -1])


def test_degenerate_inputs():
    empty = pack_lengths([], 8)
    assert empty.dtype == np.int64 and empty.size == 0
    assert pack_lengths(np.zeros(0, np.int32), 8, max_images=1, images=[]).size == 0
    np.testing.assert_array_equal(pack_lengths(np.full(7, 8), 8), np.arange(7))  # all at capacity
    np.testing.assert_array_equal(pack_lengths(np.full(7, 3), 9), [0, 0, 0, 1, 1, 1, 2])  # all equal
    np.testing.assert_array_equal(pack_lengths(np.full(5, 9), 8), np.full(5, -1))  # all too long
    np.testing.assert_array_equal(pack_lengths([1] * 6, 100, max_samples=4), [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(pack_lengths([1], 1), [0])


def test_text_only_samples_fill_image_saturated_bins():
    # bin 0 gets both images (limit reached), then the text-only samples still go there
    lengths, images = [5, 5, 2, 2], [1, 1, 0, 0]
    got = pack_lengths(lengths, 20, max_images=2, images=images)
    np.testing.assert_array_equal(got, [0, 0, 0, 0])
    # a third image sample must open a new bin; the text goes to the best fit, the saturated bin 0
    got = pack_lengths([5, 5, 5, 2], 20, max_images=2, images=[1, 1, 1, 0])
    np.testing.assert_array_equal(got, [0, 0, 1, 0])


def test_text_only_sample_prefers_saturated_bin_on_ties():
    # bin 0 (image limit reached) and bin 1 both end with residual 8: the text-only 8 goes to bin 0,
    # keeping bin 1's image room (plain LIFO would pick bin 1)
    got = pack_lengths([12, 12, 8], 20, max_images=1, images=[1, 0, 0])
    np.testing.assert_array_equal(got, [0, 1, 0])


def test_limit_scan_is_bounded_by_max_scan():
    # image-token classes are 11 wide (limit 160, 16 classes): bins 0 and 1 (4 and 10 tokens of room)
    # share class 1, so the 30 (6 tokens) must check them: bin 0 is the best fit but too full of
    # image tokens, bin 1 takes it
    kw = dict(max_image_tokens=160, image_tokens=[156, 150, 6, 3])
    np.testing.assert_array_equal(pack_lengths([60, 50, 30, 1], 100, **kw), [0, 1, 1, 1])
    # with one candidate allowed it opens a new bin instead
    np.testing.assert_array_equal(pack_lengths([60, 50, 30, 1], 100, max_scan=1, **kw), [0, 1, 2, 0])


def test_tight_image_token_limit_does_not_explode_bins():
    # image tokens are most of each sample, so a limit below capacity binds on a second dimension:
    # classes of image room keep the search from getting stuck on bins full of image tokens
    rng = np.random.default_rng(5)
    n = 30_000
    tokens = rng.integers(64, 2000, n) * (rng.random(n) < 0.9)
    lengths = tokens + rng.integers(20, 300, n)
    got = pack_lengths(lengths, 8192, max_image_tokens=4096, image_tokens=tokens)
    np.testing.assert_array_equal(got, reference_bfd(lengths, 8192, max_image_tokens=4096, image_tokens=tokens))
    lower = max(lengths.sum() / 8192, tokens.sum() / 4096)
    assert got.max() + 1 < 1.05 * lower


@pytest.mark.parametrize("kwargs, match", [
    (dict(lengths=[1.5, 2], capacity=8), "integers"),
    (dict(lengths=[[1, 2]], capacity=8), "1-D"),
    (dict(lengths=[True, False], capacity=8), "integers"),
    (dict(lengths=[1, 2], capacity=-1), "capacity"),
    (dict(lengths=[1, 2], capacity=0), "capacity"),
    (dict(lengths=[1, 2], capacity=8.0), "capacity"),
    (dict(lengths=[1, 2], capacity=1 << 40), "capacity"),
    (dict(lengths=[1, 2], capacity=8, max_samples=0), "max_samples"),
    (dict(lengths=[1, 2], capacity=8, max_images=2), "images"),
    (dict(lengths=[1, 2], capacity=8, max_image_tokens=2), "image_tokens"),
    (dict(lengths=[1, 2], capacity=8, max_images=2, images=[1]), "entries"),
    (dict(lengths=[1, 2], capacity=8, max_images=2, images=[1, -1]), ">= 0"),
    (dict(lengths=[1, 2], capacity=8, max_images=-1, images=[1, 1]), "max_images"),
])
def test_invalid_inputs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pack_lengths(**kwargs)
    with pytest.raises(ValueError, match=match):
        reference_bfd(**kwargs)


def test_next_fit_baseline():
    np.testing.assert_array_equal(next_fit([6, 3, 2, 9, 11, 1], 10), [0, 0, 1, 2, -1, 2])
    assert next_fit([], 10).size == 0


def test_pack_stats():
    lengths = [6, 4, 5, 3, 20]
    bins = pack_lengths(lengths, 10)
    s = pack_stats(lengths, bins, 10)
    assert (s["samples"], s["rejected"], s["bins"], s["tokens"], s["lower_bound"]) == (5, 1, 2, 18, 2)
    assert s["efficiency"] == pytest.approx(0.9) and s["over_lower_bound"] == 0
    assert s["compression"] == 2 and s["overfull_bins"] == 0
    assert s["subsamples_per_bin"] == {"mean": 2.0, "max": 2, "p50": 2.0, "p99": 2.0}
    assert s["fill_histogram"][19] == 1 and s["fill_histogram"][16] == 1 and sum(s["fill_histogram"]) == 2
    assert pack_stats([], [], 10)["bins"] == 0
    with pytest.raises(ValueError, match="entries"):
        pack_stats([1, 2], [0], 10)


def test_near_lower_bound_on_multimodal_lengths():
    rng = np.random.default_rng(0)
    n = 100_000
    k = rng.choice(3, n, p=[0.1, 0.85, 0.05])
    image_tokens = k * np.clip(rng.lognormal(np.log(380), 0.85, n), 64, 3265).astype(np.int64)
    lengths = np.minimum(image_tokens + 24 + rng.lognormal(np.log(80), 1.1, n).astype(np.int64), 8192)
    s = pack_stats(lengths, pack_lengths(lengths, 8192), 8192)
    assert s["bins"] <= s["lower_bound"] * 1.0005
    nf = pack_stats(lengths, next_fit(lengths, 8192), 8192)
    assert nf["bins"] > s["bins"]


def test_jit_without_a_cache_location_still_compiles():
    ns = {}
    exec("def f(x):\n    return x + 1\n", ns)  # no source file: numba has nowhere to cache it
    assert bfd_mod._jit(ns["f"])(1) == 2
