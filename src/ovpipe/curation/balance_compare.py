"""What each balancing method makes of the same corpus at the same budget: the balance step reports its
chosen method beside the others (inverse frequency, MetaCLIP's rule, random), on the concepts balancing
sees (the assigned top-K) and, for the synthetic corpus, on the concepts the images really show: every
concept each realizes ("true": some, like a background colour, every image has) and the one each was
drawn for ("primary": the Zipf law the corpus's long tail follows).

Head and tail are fixed by the counts before balancing, over the concepts present: the head is the most
frequent fifth, the tail the least frequent half (ties by concept id)."""
from __future__ import annotations

import numpy as np

from ovpipe.curation import balancing
from ovpipe.data.truth import counts_of

METHODS = ("inverse_frequency", "metaclip", "random")
HEAD, TAIL = 0.2, 0.5


def groups(before: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(present, head, tail) concept ids by the counts before balancing."""
    present = np.flatnonzero(before > 0)
    order = present[np.lexsort((present, -before[present]))]  # most frequent first
    n = len(order)
    return present, order[:max(1, int(round(HEAD * n)))] if n else order, order[n - int(round(TAIL * n)):]


def shape(before: np.ndarray, after: np.ndarray) -> dict:
    """Coverage of the present / head / tail concepts after, the tail's share of assignments, and
    max/median over the covered concepts."""
    present, head, tail = groups(before)
    cov = (lambda ids: float((after[ids] > 0).mean()) if len(ids) else float("nan"))
    total = after.sum()
    flat = balancing.flatness(after)
    return {"coverage": cov(present), "head_coverage": cov(head), "tail_coverage": cov(tail),
            "head_share": float(after[head].sum() / total) if total else float("nan"),
            "tail_share": float(after[tail].sum() / total) if total else float("nan"),
            "max_over_median": flat["max_over_median"], "gini": flat["gini"]}


def compare(select, topk: np.ndarray, counts: np.ndarray, uid: np.ndarray, n_concepts: int,
            truth: list[list[int]] | None = None) -> tuple[dict, dict]:
    """({method: {"assigned": shape, "true": shape (with truth)}}, {method: assigned counts after}).
    select(method) -> the keep mask of that method at the step's budget."""
    report, curves = {}, {}
    views = {} if truth is None else {"true": truth, "primary": [t[:1] for t in truth]}
    view_before = {v: counts_of(t, n_concepts) for v, t in views.items()}
    for method in METHODS:
        mask = select(method)
        after = balancing.concept_counts(topk[mask], n_concepts)
        curves[method] = after
        report[method] = {"selected": int(mask.sum()), "assigned": shape(counts, after)}
        for v, t in views.items():
            report[method][v] = shape(view_before[v], counts_of([x for x, m in zip(t, mask) if m], n_concepts))
    report["before"] = {"assigned": shape(counts, counts), **{v: shape(c, c) for v, c in view_before.items()}}
    return report, curves
