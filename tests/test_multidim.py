"""Multi-dimensional packer: the numba kernel against its plain-Python oracle, the limits of every bin,
determinism (the bound itself: test_multidim_bound.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ovpipe.packing import multidim_lower_bound, pack_lengths, pack_multidim, reference_multidim
from tests.helpers import multimodal_sizes


def random_case(rng):
    n = int(rng.integers(0, 80))
    cap = int(rng.integers(1, 120))
    lengths = rng.integers(-2, cap + 6, n)
    images = rng.integers(0, 4, n) * (rng.random(n) < 0.8)
    tokens = np.minimum(images * rng.integers(1, 40, n), np.maximum(lengths, 0))
    kw = {}
    which = int(rng.integers(0, 4))
    if which in (0, 1):
        kw.update(max_images=int(rng.integers(0, 8)), images=images)
    if which in (0, 2):
        kw.update(max_image_tokens=int(rng.integers(0, 150)), image_tokens=tokens)
    if which == 3 or rng.random() < 0.5:
        kw["max_samples"] = int(rng.integers(1, 8))
    if rng.random() < 0.5:
        kw["window"] = int(rng.integers(1, 10))
    return lengths, cap, kw


def check_limits(lengths, cap, bins, max_samples=None, max_images=None, images=None, max_image_tokens=None,
                 image_tokens=None, **_):
    lengths = np.asarray(lengths, np.int64)
    assert bins.dtype == np.int64 and bins.shape == lengths.shape
    bad = (lengths <= 0) | (lengths > cap)
    for lim, per in ((max_images, images), (max_image_tokens, image_tokens)):
        if lim is not None:
            bad |= np.asarray(per) > lim
    assert ((bins == -1) == bad).all()  # every placeable sample in exactly one bin
    ok = bins >= 0
    nb = int(bins.max()) + 1 if ok.any() else 0
    assert set(bins[ok].tolist()) == set(range(nb))
    for lim, per in ((cap, lengths), (max_images, images), (max_image_tokens, image_tokens),
                     (max_samples, np.ones_like(lengths))):
        if lim is not None:
            assert (np.bincount(bins[ok], weights=np.asarray(per)[ok], minlength=nb) <= lim).all()


def test_kernel_equals_reference_on_random_inputs():
    rng = np.random.default_rng(11)
    for _ in range(400):
        lengths, cap, kw = random_case(rng)
        got = pack_multidim(lengths, cap, **kw)
        np.testing.assert_array_equal(got, reference_multidim(lengths, cap, **kw), err_msg=f"{lengths} {cap} {kw}")
        check_limits(lengths, cap, got, **kw)


@pytest.mark.parametrize("limits", [dict(max_samples=64, max_image_tokens=6144),
                                    dict(max_samples=64, max_images=16, max_image_tokens=6144)])
def test_medium_multimodal_input_matches_reference_and_beats_bfd(limits):
    lengths, images, tokens = multimodal_sizes(20_000, 3)
    kw = dict(limits, images=images, image_tokens=tokens)
    got = pack_multidim(lengths, 8192, **kw)
    np.testing.assert_array_equal(got, reference_multidim(lengths, 8192, **kw))
    check_limits(lengths, 8192, got, **kw)
    bound = multidim_lower_bound(lengths, 8192, **kw)["bound"]
    assert got.max() + 1 <= 1.007 * bound  # 1.0049 today (bench/pack_limits_bench.py: ~0.4% at scale)
    if "max_images" in limits:  # where bfd leaves the small-image samples to the last bins
        assert got.max() < pack_lengths(lengths, 8192, **kw).max()


def test_deterministic_and_dtype_independent():
    lengths, images, tokens = multimodal_sizes(5000, 4)
    kw = dict(max_samples=32, max_images=12, max_image_tokens=5000)
    a = pack_multidim(lengths, 8192, images=images, image_tokens=tokens, **kw)
    for cast in (np.int32, np.int64, lambda x: x.tolist()):
        np.testing.assert_array_equal(pack_multidim(cast(lengths), 8192, images=cast(images),
                                                    image_tokens=cast(tokens), **kw), a)


def test_without_image_limits_is_best_fit_on_tokens():
    # no visual samples: all go to bfd's 1-D best fit
    np.testing.assert_array_equal(pack_multidim([6, 8, 2], 10), [1, 0, 0])
    np.testing.assert_array_equal(pack_multidim([1] * 6, 100, max_samples=4), [0, 0, 0, 0, 1, 1])
    assert pack_multidim([], 8).size == 0


def test_bin_by_bin_rules():
    # seed: the hardest (sample 0, 9/10 of the image budget); fill: sample 2 (the only one that fits the
    # room); top-up to the level: text sample 3; sample 1 seeds bin 1
    got = pack_multidim([10, 6, 2, 3], 20, max_image_tokens=10, image_tokens=[9, 5, 1, 0])
    np.testing.assert_array_equal(got, reference_multidim([10, 6, 2, 3], 20, max_image_tokens=10,
                                                          image_tokens=[9, 5, 1, 0]))
    assert got[0] == got[2] != got[1]


def test_long_text_sample_seeds_a_bin_with_images():
    # text over the room a full image budget leaves (16 > 20 - 10) opens a bin of its own and takes an
    # image sample along, instead of being left to a text-only bin at the end
    kw = dict(max_image_tokens=10, image_tokens=[0, 4, 4])
    got = pack_multidim([16, 4, 4], 20, **kw)
    np.testing.assert_array_equal(got, reference_multidim([16, 4, 4], 20, **kw))
    assert got[0] == 0 and 0 in got[1:]


def test_zero_budget_and_rejects():
    # max_images 0: samples with images cannot be placed; too long / empty as bfd
    got = pack_multidim([4, 4, 0, 11], 10, max_images=0, images=[1, 0, 0, 0])
    np.testing.assert_array_equal(got, [-1, 0, -1, -1])


def test_tails_repacked_never_take_more_bins():
    from ovpipe.packing.multidim import WINDOW, _inputs, _pack_once

    lengths, images, tokens = multimodal_sizes(20_000, 11)
    kw = dict(max_samples=64, max_images=16, images=images, max_image_tokens=6144, image_tokens=tokens)
    once = _pack_once(_inputs(lengths, 8192, 64, 16, images, 6144, tokens), WINDOW)
    got = pack_multidim(lengths, 8192, **kw)
    check_limits(lengths, 8192, got, **kw)
    assert got.max() < once.max()  # this mix's tail packs tighter alone
    np.testing.assert_array_equal(got[once < int(0.6 * (once.max() + 1))], once[once < int(0.6 * (once.max() + 1))])
