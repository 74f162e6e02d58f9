"""Top-K nearest concepts of image embeddings (the "concepts" step).

Each image embedding gets its K most similar concepts of a large vocabulary (~500K in
LLaVA-OneVision-1.5) by inner product; with L2-normalized inputs that is cosine similarity.
Two index kinds:

* ``"flat"`` - exact search (``IndexFlatIP``); the reference, and fast enough on a GPU.
* ``"ivf"``  - ``IndexIVFFlat`` with inner-product metric: the vocabulary is split into
  ``nlist`` k-means cells and a query scans only its ``nprobe`` nearest cells. Use
  :func:`recall_at_k` against a flat index to pick ``nprobe``.

Results are deterministic: IVF centroids come from seeded k-means, and each result row is
ordered by (decreasing similarity, increasing id), so exact ties never depend on scan order.
"""

from __future__ import annotations

import math
import os

import faiss
import numpy as np

__all__ = [
    "build_index",
    "default_nlist",
    "deserialize_index",
    "recall_at_k",
    "search",
    "serialize_index",
    "set_nprobe",
]

# faiss warns (and k-means gets noisy) below 39 training points per centroid.
MIN_POINTS_PER_LIST = 39
# Selection limit of faiss GPU k-select kernels (k and nprobe).
GPU_MAX_K = 2048
_KMEANS_NITER = 20


def _set_threads(threads: int | None) -> int:
    if threads is None:
        # sched_getaffinity honours container CPU pinning; cpu_count does not.
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            threads = os.cpu_count() or 1
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    faiss.omp_set_num_threads(int(threads))
    return int(threads)


def _num_gpus() -> int:
    # faiss-cpu has get_num_gpus() returning 0; guard anyway for stripped builds.
    fn = getattr(faiss, "get_num_gpus", None)
    return int(fn()) if fn is not None else 0


def _resolve_gpu(use_gpu: str) -> bool:
    if use_gpu not in ("auto", "yes", "no"):
        raise ValueError(f"use_gpu must be 'auto', 'yes' or 'no', got {use_gpu!r}")
    n = _num_gpus()
    if use_gpu == "yes" and n == 0:
        raise RuntimeError(
            "use_gpu='yes' but faiss sees no GPU: install faiss-gpu (the 'gpu' extra) "
            "and make a CUDA device visible, or pass use_gpu='auto'/'no'"
        )
    return use_gpu != "no" and n > 0


def _is_gpu_index(index) -> bool:
    return type(index).__name__.startswith("Gpu")


def _to_gpu(cpu_index):
    res = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(res, 0, cpu_index)
    # The GPU index only borrows the resources object; keep it alive with the index.
    gpu_index._ovpipe_gpu_res = res
    return gpu_index


def _check_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    return x


def _max_nlist(num_concepts: int) -> int:
    max_nlist = num_concepts // MIN_POINTS_PER_LIST
    if max_nlist < 1:
        raise ValueError(
            f"IVF needs at least {MIN_POINTS_PER_LIST} concepts to train one list, got "
            f"{num_concepts}; use kind='flat' for such a small vocabulary"
        )
    return max_nlist


def default_nlist(num_concepts: int) -> int:
    """~4*sqrt(C) lists, capped so each list gets >= MIN_POINTS_PER_LIST training points."""
    return max(1, min(round(4 * math.sqrt(num_concepts)), _max_nlist(num_concepts)))


def build_index(
    concepts: np.ndarray,
    kind: str = "flat",
    nlist: int | None = None,
    nprobe: int = 16,
    use_gpu: str = "auto",
    seed: int = 0,
    threads: int | None = None,
):
    """Build a faiss inner-product index over ``concepts`` (float32 (C, d), L2-normalized).

    ``nlist``/``nprobe``/``seed`` only matter for ``kind="ivf"``. ``use_gpu``: ``"auto"``
    uses a GPU when faiss-gpu sees one, ``"yes"`` requires one, ``"no"`` stays on CPU.
    ``threads`` sets faiss's OpenMP threads (default: CPUs available to this process).
    """
    if kind not in ("flat", "ivf"):
        raise ValueError(f"kind must be 'flat' or 'ivf', got {kind!r}")
    gpu = _resolve_gpu(use_gpu)
    concepts = _check_matrix(concepts, "concepts")
    num, dim = concepts.shape
    if num == 0 or dim == 0:
        raise ValueError(f"concepts must be non-empty, got shape {concepts.shape}")
    if num > np.iinfo(np.int32).max:
        raise ValueError(
            f"at most {np.iinfo(np.int32).max} concepts (ids are int32), got {num}"
        )
    _set_threads(threads)
    concepts = np.ascontiguousarray(concepts, dtype=np.float32)

    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        if gpu:
            index = _to_gpu(index)
        index.add(concepts)
        return index

    if nlist is None:
        nlist = default_nlist(num)
    else:
        nlist = int(nlist)
        max_nlist = _max_nlist(num)
        if not 1 <= nlist <= max_nlist:
            raise ValueError(
                f"nlist={nlist} is out of range 1..{max_nlist} for {num} concepts "
                f"(training needs >= {MIN_POINTS_PER_LIST} concepts per list)"
            )
    if nprobe < 1:
        raise ValueError(f"nprobe must be >= 1, got {nprobe}")
    if gpu and min(nprobe, nlist) > GPU_MAX_K:
        raise ValueError(f"faiss GPU supports nprobe <= {GPU_MAX_K}, got {nprobe}")

    # Train the coarse quantizer explicitly with seeded k-means so the seed is ours and
    # not whatever IndexIVF::train defaults to. Spherical k-means keeps centroids on the
    # unit sphere, matching inner-product assignment of normalized vectors.
    kmeans = faiss.Kmeans(
        dim,
        nlist,
        niter=_KMEANS_NITER,
        seed=int(seed),
        spherical=True,
        gpu=gpu,
        verbose=False,
    )
    kmeans.train(concepts)
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(np.ascontiguousarray(kmeans.centroids, dtype=np.float32))
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    # A quantizer already holding nlist centroids makes the IVF count as trained.
    if not index.is_trained:
        raise RuntimeError(
            "IVF index not trained after k-means; faiss behaviour changed?"
        )
    index.nprobe = min(int(nprobe), nlist)
    if gpu:
        index = _to_gpu(index)  # adding on the GPU does the list assignment there
    index.add(concepts)
    return index


def set_nprobe(index, nprobe: int) -> None:
    """Change how many IVF lists a query scans (no-op for flat indices)."""
    if nprobe < 1:
        raise ValueError(f"nprobe must be >= 1, got {nprobe}")
    ivf = index if _is_gpu_index(index) else faiss.try_extract_index_ivf(index)
    if ivf is not None and hasattr(ivf, "nprobe"):
        if _is_gpu_index(index) and min(nprobe, ivf.nlist) > GPU_MAX_K:
            raise ValueError(f"faiss GPU supports nprobe <= {GPU_MAX_K}, got {nprobe}")
        ivf.nprobe = min(int(nprobe), ivf.nlist)


def search(
    index,
    queries: np.ndarray,
    k: int,
    batch_size: int = 65536,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` concepts per query: ``(ids int32 (N, k), sims float32 (N, k))``.

    Rows are sorted by decreasing similarity, exact ties by increasing id. An IVF index can
    find fewer than ``k`` candidates when ``nprobe`` is small; those slots hold id -1 and
    similarity -inf (after all real results). Queries go through in ``batch_size`` chunks
    to bound the temporary memory of faiss (N x k results plus per-batch buffers).
    """
    queries = _check_matrix(queries, "queries")
    if queries.shape[1] != index.d:
        raise ValueError(
            f"queries have dimension {queries.shape[1]}, index has {index.d}"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {k!r}")
    k = int(k)
    if index.ntotal == 0:
        raise ValueError("index is empty")
    if not 1 <= k <= index.ntotal:
        raise ValueError(
            f"k must be in 1..{index.ntotal} (the vocabulary size), got {k}"
        )
    if _is_gpu_index(index) and k > GPU_MAX_K:
        raise ValueError(f"faiss GPU supports k <= {GPU_MAX_K}, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if threads is not None:
        _set_threads(threads)

    n = queries.shape[0]
    ids = np.empty((n, k), dtype=np.int32)
    sims = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        q = np.ascontiguousarray(queries[start:stop], dtype=np.float32)
        d, i = index.search(q, k)
        # Missing results (IVF probed too few vectors) come back as id -1 with -FLT_MAX;
        # make them -inf so they can never tie with a real score.
        d[i < 0] = -np.inf
        # faiss keeps the lowest ids among equal scores at the k boundary (id-aware heaps),
        # but the order *within* a tie depends on scan order; re-sort by (-sim, id).
        order = np.lexsort((i, -d))
        ids[start:stop] = np.take_along_axis(i, order, axis=1)
        sims[start:stop] = np.take_along_axis(d, order, axis=1)
    return ids, sims


def serialize_index(index) -> bytes:
    """Bytes of the index; a GPU index is copied to CPU first (faiss can only write CPU)."""
    if _is_gpu_index(index):
        index = faiss.index_gpu_to_cpu(index)
    return faiss.serialize_index(index).tobytes()


def deserialize_index(data: bytes, use_gpu: str = "no"):
    """Inverse of :func:`serialize_index` (nprobe is part of the serialized IVF header)."""
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    return _to_gpu(index) if _resolve_gpu(use_gpu) else index


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over rows of |approx ∩ exact| / k; -1 (missing) ids never count as hits."""
    approx_ids = np.asarray(approx_ids)
    exact_ids = np.asarray(exact_ids)
    if approx_ids.shape != exact_ids.shape or approx_ids.ndim != 2:
        raise ValueError(
            f"approx_ids and exact_ids must be 2-D with equal shapes, got "
            f"{approx_ids.shape} and {exact_ids.shape}"
        )
    n, k = approx_ids.shape
    if n == 0 or k == 0:
        raise ValueError("recall of an empty result is undefined")
    hits = 0
    # Pairwise comparison is N*k*k booleans; chunk rows to keep that bounded for large k.
    step = max(1, (1 << 24) // (k * k))
    for s in range(0, n, step):
        a = approx_ids[s : s + step]
        e = exact_ids[s : s + step]
        match = (a[:, :, None] == e[:, None, :]).any(axis=2) & (a >= 0)
        hits += int(match.sum())
    return hits / (n * k)
