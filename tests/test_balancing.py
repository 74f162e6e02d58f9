"""Concept balancing: vectorized code against plain-Python oracles, plus the properties we rely on."""

import hashlib
import math

import numpy as np
import pytest

from ovpipe.curation import balancing as B


def _rand_uid(n, seed):
    return np.random.default_rng(seed).integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)


@pytest.fixture(scope="module")
def zipf():
    topk = B.zipf_topk(20_000, 500, 5, seed=7)
    return topk, B.concept_counts(topk, 500), _rand_uid(len(topk), 8)


# ----------------------------------------------------------------------------- ids and draws
def test_uid64_is_blake2b_prefix():
    ids = ["a", "shard-0001/000042", "图像"]
    want = [int.from_bytes(hashlib.blake2b(s.encode()).digest()[:8], "little") for s in ids]
    got = B.uid64(ids)
    assert got.dtype == np.uint64 and [int(x) for x in got] == want
    assert B.uid64([]).shape == (0,)


def test_uniform01_matches_reference_and_is_open_interval():
    uid = np.concatenate([_rand_uid(300, 1), np.array([0, 1, 2**64 - 1], dtype=np.uint64)])
    for seed, stream in [(0, 0), (1, 0), (-5, 3), (2**40, 17)]:
        u = B.uniform01(uid, seed, stream)
        assert [B.reference_uniform01(int(x), seed, stream) for x in uid] == u.tolist()
    u = B.uniform01(_rand_uid(200_000, 2), 0)
    assert u.min() > 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.005


def test_uniform01_per_element_streams_and_order():
    uid = _rand_uid(1000, 3)
    streams = np.random.default_rng(4).integers(0, 50, 1000)
    u = B.uniform01(uid, 9, stream=streams)
    assert u.tolist() == [B.reference_uniform01(int(x), 9, int(s)) for x, s in zip(uid, streams)]
    perm = np.random.default_rng(5).permutation(1000)
    assert np.array_equal(B.uniform01(uid[perm], 9, stream=streams[perm]), u[perm])
    assert np.array_equal(B.uniform01(uid[:10], 9, stream=3), B.uniform01(uid, 9, stream=3)[:10])
    # Different seeds and streams give unrelated draws.
    a, b, c = B.uniform01(uid, 1), B.uniform01(uid, 2), B.uniform01(uid, 1, stream=1)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.1 and abs(np.corrcoef(a, c)[0, 1]) < 0.1


# ----------------------------------------------------------------------------- counts and weights
def test_concept_counts():
    topk = np.array([[0, 1, -1], [1, 2, 3], [-1, -1, -1], [3, 0, 1]])
    c = B.concept_counts(topk, 5)
    assert c.dtype == np.int64 and c.tolist() == [2, 3, 1, 2, 0]
    assert c.sum() == topk.size - np.count_nonzero(topk == -1)
    with pytest.raises(ValueError):
        B.concept_counts(np.array([[0, 5]]), 5)
    with pytest.raises(ValueError):
        B.concept_counts(np.array([[0, -2]]), 5)


@pytest.mark.parametrize("agg", B.AGGREGATES)
def test_inverse_frequency_weights_match_python(agg):
    topk = B.zipf_topk(500, 40, 4, seed=1)
    topk[::7, 1:] = -1
    topk[3] = -1
    counts = B.concept_counts(topk, 40)
    w = B.inverse_frequency_weights(topk, counts, agg)
    f = {"sum": sum, "mean": lambda v: sum(v) / len(v), "max": max}[agg]
    want = [f([1 / counts[c] for c in row if c >= 0]) if (row >= 0).any() else 0.0 for row in topk]
    assert np.allclose(w, want, rtol=1e-12) and w[3] == 0.0


def test_sum_weights_give_each_concept_unit_mass(zipf):
    topk, counts, _ = zipf
    w = B.inverse_frequency_weights(topk, counts)
    assert math.isclose(w.sum(), np.count_nonzero(counts), rel_tol=1e-9)
    with pytest.raises(ValueError):
        B.inverse_frequency_weights(topk, counts, "median")


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("seed", range(6))
def test_weighted_sample_equals_reference(seed):
    rng = np.random.default_rng(seed)
    n_items = int(rng.integers(1, 200))
    uid = _rand_uid(n_items, 100 + seed)
    w = rng.pareto(1.0, n_items)
    w[rng.random(n_items) < 0.2] = 0.0
    w[rng.random(n_items) < 0.05] = -1.0
    w[rng.random(n_items) < 0.05] = np.nan
    for n in {0, 1, n_items // 3, n_items // 2, n_items}:
        got = B.weighted_sample(uid, w, n, seed)
        assert np.array_equal(got, B.reference_weighted_sample(uid, w, n, seed))
        assert got.sum() == min(n, np.count_nonzero(w > 0))
        assert not got[~(w > 0)].any()


def test_weighted_sample_ties_go_to_smaller_uid():
    # Infinite weights give key -0.0 for all: a pure tie, decided by uid.
    uid = _rand_uid(50, 11)
    w = np.full(50, np.inf)
    m = B.weighted_sample(uid, w, 7, 0)
    assert set(np.flatnonzero(m)) == set(np.argsort(uid)[:7])
    assert np.array_equal(m, B.reference_weighted_sample(uid, w, 7, 0))
    # Underflowing weights (key -inf) still beat excluded ones.
    w = np.array([1e-320, 0.0, 1e-320, -1.0, 1.0])
    m = B.weighted_sample(np.arange(5, dtype=np.uint64), w, 2, 0)
    assert m.tolist() == [True, False, False, False, True]


def test_weighted_sample_deterministic_and_order_independent():
    uid = _rand_uid(5000, 12)
    w = np.random.default_rng(13).pareto(0.5, 5000)
    m = B.weighted_sample(uid, w, 700, 3)
    assert np.array_equal(m, B.weighted_sample(uid.copy(), w.copy(), 700, 3))
    perm = np.random.default_rng(14).permutation(5000)
    assert np.array_equal(B.weighted_sample(uid[perm], w[perm], 700, 3), m[perm])
    assert not np.array_equal(B.weighted_sample(uid, w, 700, 4), m)


def test_weighted_sample_edges():
    uid = _rand_uid(100, 15)
    w = np.zeros(100)
    w[::3] = 1.0
    assert np.array_equal(B.weighted_sample(uid, w, 34, 0), w > 0)
    assert np.array_equal(B.weighted_sample(uid, w, 10**6, 0), w > 0)
    assert not B.weighted_sample(uid, w, 0, 0).any()
    assert not B.weighted_sample(uid, w, -3, 0).any()
    with pytest.raises(ValueError):
        B.weighted_sample(uid, w[:-1], 5, 0)


def test_weighted_sample_first_draw_is_proportional():
    # With n = 1, Efraimidis–Spirakis picks item i with probability w_i / Σw.
    uid = _rand_uid(4, 16)
    w = np.array([1.0, 2.0, 3.0, 4.0])
    hits = sum(B.weighted_sample(uid, w, 1, s).astype(int) for s in range(4000))
    assert np.allclose(hits / 4000, w / w.sum(), atol=0.03)


def test_random_sample():
    uid = _rand_uid(1000, 17)
    m = B.random_sample(uid, 100, 5)
    assert m.sum() == 100
    perm = np.random.default_rng(18).permutation(1000)
    assert np.array_equal(B.random_sample(uid[perm], 100, 5), m[perm])


# ----------------------------------------------------------------------------- MetaCLIP
def test_metaclip_probs():
    p = B.metaclip_probs(np.array([0, 5, 10, 40]), 10.0)
    assert p.tolist() == [1.0, 1.0, 1.0, 0.25]
    assert not B.metaclip_probs(np.array([3]), 0.0).any()


@pytest.mark.parametrize("t", [1.0, 7.5, 60.0])
def test_metaclip_select_equals_reference(t):
    topk = B.zipf_topk(800, 60, 3, seed=19)
    topk[::5, 0] = -1
    topk[1] = -1
    counts = B.concept_counts(topk, 60)
    uid = _rand_uid(800, 20)
    got = B.metaclip_select(topk, counts, uid, t, seed=2)
    assert np.array_equal(got, B.reference_metaclip_select(topk, counts, uid, t, seed=2))
    assert not got[1]
    perm = np.random.default_rng(21).permutation(800)
    assert np.array_equal(B.metaclip_select(topk[perm], counts, uid[perm], t, 2), got[perm])


@pytest.mark.parametrize("frac", [0.02, 0.1, 0.4])
def test_metaclip_t_for_budget_hits_budget(zipf, frac):
    topk, counts, uid = zipf
    n = int(frac * len(topk))
    t = B.metaclip_t_for_budget(topk, counts, n)
    kept = np.array([B.metaclip_select(topk, counts, uid, t, seed=s).sum() for s in range(5)])
    # The kept count is random (sd ~ sqrt(n)): its mean is on budget, each draw close to it.
    assert abs(kept.mean() - n) <= 0.03 * n and np.all(abs(kept - n) <= 5 * np.sqrt(n))
    assert B.metaclip_t_for_budget(topk, counts, len(topk)) == counts.max()


# ----------------------------------------------------------------------------- flatness
def test_flatness_known_values():
    f = B.flatness(np.array([5, 5, 5, 5, 0]))
    assert (f["concepts"], f["covered"], f["max"], f["median"]) == (5, 4, 5, 5.0)
    assert f["max_over_median"] == 1.0 and math.isclose(f["normalized_entropy"], 1.0)
    assert f["gini"] == 0.0
    g = B.flatness(np.array([0, 0, 0, 10]))  # one concept holds everything
    assert g["covered"] == 1 and g["gini"] == 0.0
    assert math.isclose(B.flatness(np.array([1, 3]))["gini"], 0.25)
    assert B.flatness(np.zeros(3, dtype=int))["covered"] == 0


def test_inverse_frequency_is_flatter_than_random(zipf):
    topk, counts, uid = zipf
    n = len(topk) // 10
    rnd = B.flatness(B.concept_counts(topk[B.random_sample(uid, n, 1)], counts.size))
    w = B.inverse_frequency_weights(topk, counts, "sum")
    inv = B.flatness(B.concept_counts(topk[B.weighted_sample(uid, w, n, 1)], counts.size))
    assert inv["covered"] >= rnd["covered"]
    assert inv["normalized_entropy"] > rnd["normalized_entropy"] + 0.03
    assert inv["gini"] < rnd["gini"] - 0.08
    assert inv["max_over_median"] < 0.5 * rnd["max_over_median"]
