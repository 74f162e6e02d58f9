import random

import numpy as np
import pytest

from ovpipe.curation.caption_rules import normalize
from ovpipe.curation.dedup import duplicates, exact_key, lsh_params, minhash, minhash_many

LONG = ("The photograph shows a busy street market at dusk, with wooden stalls selling fresh fruit, "
        "vegetables and spices under strings of warm yellow lights, while shoppers carrying woven "
        "baskets walk past a red bicycle leaning against a stone wall covered in faded posters.")


def _shingles(text, k=5):
    t = normalize(text)
    return {t[i:i + k] for i in range(len(t) - k + 1)} or {t}


def _dedup(texts, ids=None, near=True, **kw):
    ids = ids or [f"id{i:03d}" for i in range(len(texts))]
    exact = np.array([exact_key(t) for t in texts], dtype=np.int64)
    return duplicates(ids, exact, minhash_many(texts) if near else None, **kw)


def test_exact_key_is_signed_int64_of_normalized_text():
    k = exact_key("A cat, on a mat!")
    assert isinstance(k, int) and -2**63 <= k < 2**63
    assert k == exact_key("  a CAT on a mat ") != exact_key("a dog on a mat")


def test_exact_keeps_smallest_id_and_is_order_independent():
    texts = ["A red car.", "a red car", "A blue car.", "A RED CAR!", "A green car."]
    ids = ["c", "b", "x", "a", "y"]
    assert _dedup(texts, ids, near=False) == {
        "b": ("a", "exact duplicate of a"), "c": ("a", "exact duplicate of a")}
    rng = random.Random(1)
    for _ in range(5):
        perm = list(range(len(ids)))
        rng.shuffle(perm)
        assert _dedup([texts[i] for i in perm], [ids[i] for i in perm], near=False) == \
            _dedup(texts, ids, near=False)


def test_near_duplicate_differs_by_one_word():
    texts = [LONG, LONG.replace("red bicycle", "old bicycle"),
             "A close-up of a tabby cat sleeping on a knitted blanket next to a sunny window sill."]
    got = _dedup(texts, ["b", "a", "c"])
    assert list(got) == ["b"]
    kept, detail = got["b"]
    assert kept == "a" and detail.startswith("near duplicate of a (jaccard≈")
    assert _dedup(texts, ["b", "a", "c"], near=False) == {}  # exact-only misses it


def test_unrelated_captions_are_not_duplicates():
    rng = random.Random(0)
    words = ["a", "the", "cat", "dog", "red", "blue", "small", "large", "sits", "on", "near", "table",
             "window", "street", "tree", "car", "man", "woman", "photo", "shows", "bright", "dark"]
    texts = [" ".join(rng.choice(words) for _ in range(25)) for _ in range(300)]
    assert _dedup(texts) == {}


def test_near_clusters_merge_and_keep_smallest_id():
    v1 = LONG.replace("red bicycle", "old bicycle")
    v2 = LONG.replace("at dusk", "at dawn")
    texts = [LONG, v1, v2, LONG.upper()]
    ids = ["m", "k", "z", "q"]
    got = _dedup(texts, ids)
    assert {d: k for d, (k, _) in got.items()} == {"m": "k", "z": "k", "q": "k"}
    assert got["q"][1].startswith("near duplicate of k")  # exact copy of m, which is near k


def test_minhash_deterministic_and_seeded():
    a = minhash(LONG)
    assert a.dtype == np.uint64 and a.shape == (64,)
    assert np.array_equal(a, minhash(LONG))
    assert np.array_equal(a, minhash("  " + LONG.upper()))  # computed on normalize(text)
    assert not np.array_equal(a, minhash(LONG, seed=1))
    assert minhash(LONG, num_perm=128).shape == (128,)


def test_minhash_many_matches_minhash():
    texts = [LONG, "", "abc", "a cat", "一只猫坐在桌子上", LONG[:40]]
    many = minhash_many(texts, num_perm=32, shingle=5)
    assert many.shape == (6, 32)
    for row, text in zip(many, texts):
        assert np.array_equal(row, minhash(text, num_perm=32))
    assert (many[1] == np.iinfo(np.uint64).max).all()  # empty text: sentinel
    assert not np.array_equal(many[2], minhash("abd", num_perm=32))  # short text is one shingle
    assert minhash_many([]).shape == (0, 64)


def test_similarity_estimate_tracks_true_jaccard():
    rng = random.Random(7)
    errors = []
    for _ in range(40):
        base = [rng.choice("abcdefgh") for _ in range(300)]
        other = list(base)
        for _ in range(rng.randint(0, 60)):
            other[rng.randrange(300)] = rng.choice("abcdefgh")
        x, y = "".join(base), "".join(other)
        sa, sb = _shingles(x), _shingles(y)
        true = len(sa & sb) / len(sa | sb)
        est = float((minhash(x, num_perm=256) == minhash(y, num_perm=256)).mean())
        errors.append(est - true)
    assert abs(np.mean(errors)) < 0.02  # unbiased
    assert max(abs(e) for e in errors) < 0.12  # ~4 standard deviations at 256 permutations


def test_lsh_params_recall():
    bands, rows = lsh_params(64, 0.9)
    assert bands * rows <= 64 and 1 - (1 - 0.9 ** rows) ** bands >= 0.99
    assert duplicates(["a", "b"], np.array([1, 2]), np.zeros((2, 64), np.uint64), bands=16) == {
        "b": ("a", "near duplicate of a (jaccard≈1.00)")}


def test_input_validation():
    with pytest.raises(ValueError, match="unique"):
        duplicates(["a", "a"], np.array([1, 1]), None)
    with pytest.raises(ValueError, match="exact"):
        duplicates(["a", "b"], np.array([1]), None)
    with pytest.raises(ValueError, match="signatures"):
        duplicates(["a", "b"], np.array([1, 2]), np.zeros((3, 8), np.uint64))
    assert duplicates([], np.array([], np.int64), None) == {}


def test_large_bucket_is_bounded_and_order_independent():
    # 2,000 rows that all share every band: the windowed pairing still connects them into one cluster.
    rng = np.random.default_rng(0)
    n = 2000
    sig = np.tile(rng.integers(0, 2**63, 64, dtype=np.uint64), (n, 1))
    sig[:, -1] = np.arange(n)  # one slot differs: estimated Jaccard 63/64
    ids = [f"s{i:05d}" for i in range(n)]
    exact = np.arange(n, dtype=np.int64)
    got = duplicates(ids, exact, sig)
    assert len(got) == n - 1 and {k for k, _ in got.values()} == {"s00000"}
    perm = rng.permutation(n)
    assert duplicates([ids[i] for i in perm], exact[perm], sig[perm]) == got
