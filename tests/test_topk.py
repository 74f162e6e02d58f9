"""Tests for ovpipe.curation.topk (faiss top-K concepts); all CPU and fast."""

import faiss
import numpy as np
import pytest

from ovpipe.curation.topk import (
    build_index,
    default_nlist,
    deserialize_index,
    recall_at_k,
    search,
    serialize_index,
    set_nprobe,
)


def _normalize(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _random(n, d, seed):
    return _normalize(np.random.default_rng(seed).standard_normal((n, d)))


def _clustered(n, d, centers, noise, seed):
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)] + noise * rng.standard_normal((n, d))
    return _normalize(x)


def _oracle(queries, concepts, k):
    """Brute force in float64: ids by decreasing similarity, ties by lower id."""
    s = queries.astype(np.float64) @ concepts.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s))[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def _assert_matches_oracle(ids, sims, queries, concepts, k):
    exp_ids, exp_sims = _oracle(queries, concepts, k)
    np.testing.assert_allclose(sims, exp_sims, atol=1e-5)
    # float32 vs float64 rounding may swap near-ties; every other position must agree.
    s = queries.astype(np.float64) @ concepts.astype(np.float64).T
    got = np.take_along_axis(s, ids.astype(np.int64), axis=1)
    np.testing.assert_allclose(got, exp_sims, atol=1e-5)
    mismatch = ids != exp_ids
    assert mismatch.mean() < 0.01


@pytest.fixture(scope="module")
def clustered():
    d = 32
    centers = _random(40, d, seed=1)
    concepts = _clustered(4000, d, centers, noise=0.08, seed=2)
    queries = _clustered(300, d, centers, noise=0.08, seed=3)
    return concepts, queries


def test_flat_matches_numpy_oracle():
    concepts, queries = _random(1500, 24, seed=0), _random(257, 24, seed=1)
    index = build_index(concepts, kind="flat", use_gpu="no")
    ids, sims = search(index, queries, k=7, batch_size=50)  # several batches + a tail
    assert ids.dtype == np.int32 and sims.dtype == np.float32
    assert ids.shape == sims.shape == (257, 7)
    assert np.all(np.diff(sims, axis=1) <= 0)
    _assert_matches_oracle(ids, sims, queries, concepts, 7)
    exp_ids, _ = _oracle(queries, concepts, 7)
    # well-separated random data without near-ties: ids match exactly
    np.testing.assert_array_equal(ids, exp_ids)


def test_exact_ties_ordered_by_lower_id():
    concepts = _random(200, 16, seed=5)
    dup = [10, 150, 60, 199]  # copies of one vector, inserted out of id order
    concepts[dup] = concepts[dup[0]]
    queries = np.repeat(concepts[10:11], 3, axis=0)
    index = build_index(concepts, kind="flat", use_gpu="no")
    for k in (1, 2, 3, 4, 6):
        ids, sims = search(index, queries, k=k)
        want = sorted(dup)[:k]
        assert ids[0, : min(k, 4)].tolist() == want[: min(k, 4)]
        assert (ids == ids[0]).all()
    # every tied slot has exactly the same score
    ids, sims = search(index, queries, k=4)
    assert len(set(sims[0].tolist())) == 1


def test_ivf_full_probe_equals_exact(clustered):
    concepts, queries = clustered
    flat = build_index(concepts, kind="flat", use_gpu="no")
    ivf = build_index(concepts, kind="ivf", nlist=32, nprobe=32, use_gpu="no")
    assert ivf.nlist == 32 and ivf.nprobe == 32
    e_ids, e_sims = search(flat, queries, k=5)
    a_ids, a_sims = search(ivf, queries, k=5)
    np.testing.assert_array_equal(a_ids, e_ids)
    np.testing.assert_allclose(a_sims, e_sims, atol=1e-6)
    assert recall_at_k(a_ids, e_ids) == 1.0


def test_ivf_small_nprobe_recall(clustered):
    concepts, queries = clustered
    flat = build_index(concepts, kind="flat", use_gpu="no")
    ivf = build_index(concepts, kind="ivf", nprobe=2, use_gpu="no")
    # default nlist = min(4*sqrt(4000)=253, 4000//39=102)
    assert ivf.nlist == default_nlist(len(concepts)) == 102
    e_ids, _ = search(flat, queries, k=5)
    a_ids, _ = search(ivf, queries, k=5)
    r2 = recall_at_k(a_ids, e_ids)
    assert 0.5 < r2 <= 1.0
    set_nprobe(ivf, 16)
    r16 = recall_at_k(search(ivf, queries, k=5)[0], e_ids)
    assert r16 >= r2


def test_ivf_missing_results_are_marked():
    # nprobe=1 over many small lists can reach fewer than k vectors.
    concepts = _random(39 * 20, 8, seed=7)
    ivf = build_index(concepts, kind="ivf", nlist=20, nprobe=1, use_gpu="no")
    ids, sims = search(ivf, _random(50, 8, seed=8), k=200)
    missing = ids < 0
    assert missing.any()
    assert np.all(np.isneginf(sims[missing]))
    # missing slots only at the end of a row
    assert np.all(np.diff(missing.astype(int), axis=1) >= 0)


def test_ivf_deterministic_for_seed(clustered):
    concepts, queries = clustered
    a = build_index(concepts, kind="ivf", nprobe=3, seed=11, use_gpu="no")
    b = build_index(concepts, kind="ivf", nprobe=3, seed=11, use_gpu="no")
    assert serialize_index(a) == serialize_index(b)
    np.testing.assert_array_equal(search(a, queries, 5)[0], search(b, queries, 5)[0])


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_serialize_round_trip(clustered, kind):
    concepts, queries = clustered
    index = build_index(concepts, kind=kind, nprobe=5, use_gpu="no")
    data = serialize_index(index)
    assert isinstance(data, bytes)
    back = deserialize_index(data)
    assert back.ntotal == index.ntotal and back.d == index.d
    if kind == "ivf":
        assert back.nprobe == 5
    for got, want in zip(search(back, queries, 4), search(index, queries, 4)):
        np.testing.assert_array_equal(got, want)


def test_bad_k_and_dims():
    concepts = _random(100, 16, seed=0)
    index = build_index(concepts, use_gpu="no")
    q = _random(4, 16, seed=1)
    for k in (0, -1, 101):
        with pytest.raises(ValueError, match="k must be in 1..100"):
            search(index, q, k=k)
    with pytest.raises(TypeError, match="k must be an int"):
        search(index, q, k=2.5)
    with pytest.raises(ValueError, match="dimension 8, index has 16"):
        search(index, _random(4, 8, seed=1), k=1)
    with pytest.raises(ValueError, match="2-D"):
        search(index, q[0], k=1)
    with pytest.raises(ValueError, match="batch_size"):
        search(index, q, k=1, batch_size=0)
    ids, sims = search(index, q[:0], k=3)
    assert ids.shape == sims.shape == (0, 3)
    with pytest.raises(ValueError, match="2-D"):
        build_index(concepts[0], use_gpu="no")
    with pytest.raises(ValueError, match="kind"):
        build_index(concepts, kind="hnsw", use_gpu="no")


def test_ivf_vocab_too_small():
    with pytest.raises(ValueError, match="at least 39 concepts"):
        build_index(_random(38, 8, seed=0), kind="ivf", use_gpu="no")
    # 39 concepts is the minimum: one list
    assert build_index(_random(39, 8, seed=0), kind="ivf", use_gpu="no").nlist == 1
    with pytest.raises(ValueError, match="nlist=10 is out of range 1..2"):
        build_index(_random(100, 8, seed=0), kind="ivf", nlist=10, use_gpu="no")
    with pytest.raises(ValueError, match="nprobe"):
        build_index(_random(100, 8, seed=0), kind="ivf", nprobe=0, use_gpu="no")


def test_use_gpu_options():
    concepts = _random(50, 8, seed=0)
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible; the no-GPU error path cannot be exercised")
    with pytest.raises(RuntimeError, match="use_gpu='yes' but faiss sees no GPU"):
        build_index(concepts, use_gpu="yes")
    with pytest.raises(RuntimeError, match="no GPU"):
        deserialize_index(
            serialize_index(build_index(concepts, use_gpu="no")), use_gpu="yes"
        )
    with pytest.raises(ValueError, match="use_gpu"):
        build_index(concepts, use_gpu="maybe")
    # auto falls back to CPU
    assert type(build_index(concepts, use_gpu="auto")).__name__ == "IndexFlatIP"


def test_recall_at_k():
    exact = np.array([[0, 1, 2], [3, 4, 5]])
    assert recall_at_k(exact, exact) == 1.0
    approx = np.array([[2, 9, 0], [-1, -1, 5]])  # order does not matter; -1 never hits
    assert recall_at_k(approx, exact) == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="equal shapes"):
        recall_at_k(approx[:, :2], exact)
