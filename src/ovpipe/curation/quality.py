"""How well curation's model-driven steps work where the truth is known (the synthetic corpus): concept
assignment against each image's realized concepts, and the CLIP score's separation of true captions
from shuffled ones. Pure numpy; the steps that have the data call them."""
from __future__ import annotations

import numpy as np


def topk_precision_recall(topk_ids: np.ndarray, truths: list[list[int]]) -> dict:
    """Mean precision@K (hits / K) and recall@K (hits / |truth|) of each row's top-K concept ids against
    its true concept ids (rows with no truth are left out of recall), the best any assignment could
    score (min(K, |truth|) hits: an image realizing more than K concepts caps recall), and the rows scored."""
    k = topk_ids.shape[1] if topk_ids.ndim == 2 else 0
    hits = np.array([len(set(row.tolist()) & set(t)) for row, t in zip(topk_ids, truths)], np.float64)
    sizes = np.array([len(set(t)) for t in truths], np.float64)
    has = sizes > 0
    best = np.minimum(sizes, k)
    return {"precision_at_k": float(hits.mean() / k) if len(hits) and k else float("nan"),
            "recall_at_k": float((hits[has] / sizes[has]).mean()) if has.any() else float("nan"),
            "precision_at_k_max": float(best.mean() / k) if len(hits) and k else float("nan"),
            "recall_at_k_max": float((best[has] / sizes[has]).mean()) if has.any() else float("nan"),
            "k": k, "scored": int(len(hits))}


def random_topk(n: int, vocab_size: int, k: int, seed: int) -> np.ndarray:
    """What an embedding that knows nothing assigns: K distinct concepts per row, uniformly at random."""
    rng = np.random.default_rng([seed, 0x70C])
    return np.argsort(rng.random((n, vocab_size)), axis=1)[:, :k].astype(np.int32)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney U / (n_pos * n_neg))."""
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if not len(pos) or not len(neg):
        return float("nan")
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both), np.float64)
    sorted_vals = both[order]
    # average ranks over ties (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], len(both)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation with no fixed point (each image paired with another image's caption): one
    cycle through a random order; the identity for n < 2."""
    if n < 2:
        return np.arange(n)
    perm = np.random.default_rng([seed, 0x5AF]).permutation(n)
    out = np.empty(n, np.int64)
    out[perm] = np.roll(perm, 1)
    return out


def caption_separation(matched: np.ndarray, shuffled: np.ndarray) -> dict:
    """ROC AUC of matched over shuffled image-caption scores, and the quantiles a threshold is read from."""
    m, s = np.asarray(matched, np.float64), np.asarray(shuffled, np.float64)
    q = (lambda a, p: float(np.quantile(a, p)) if len(a) else float("nan"))
    return {"clip_score_auc": roc_auc(m, s), "matched_p05": q(m, 0.05), "matched_median": q(m, 0.5),
            "shuffled_median": q(s, 0.5), "shuffled_p95": q(s, 0.95), "pairs": int(len(m))}
