"""Exact byte-level BPE in numba: the Hugging Face BPE merge loop, without its per-word overhead.

For a pre-token ("word") of n bytes: start from one symbol per byte, then repeatedly apply the
lowest-ranked merge among adjacent pairs, the leftmost first on ties, as `tokenizers` does (a heap of
(rank, position), stale entries skipped). Merges are an open-addressing hash table of (left id,
right id) -> rank, plus merged id per rank. No Python object per word; `merge_word` is also called
from numba (`pretok.count_texts`). A linear scan for the minimum pair instead of the heap was tried
and measured slower on CJK runs (10-40 bytes), so there is one code path.

Built from a tokenizer.json (`ByteLevelBPE.from_spec`); `None` for tokenizers of another shape.
The caller (wordcache.WordCache) still checks the result against the tokenizer before using it.
"""
from __future__ import annotations

import numba
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
NO_MERGE = 1 << 40  # above any rank (ranks < 2**32)


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which byte-level vocabularies are written in."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _slot(key, bits):
    return np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(64 - bits))


@numba.njit(cache=True, nogil=True)
def _build(left, right, bits):
    size = 1 << bits
    keys = np.full(size, -1, np.int64)
    vals = np.zeros(size, np.int64)  # the merge's rank
    for r in range(left.shape[0]):
        key = (np.int64(left[r]) << 32) | np.int64(right[r])
        i = _slot(key, bits)
        while keys[i] != -1 and keys[i] != key:
            i = (i + 1) & (size - 1)
        keys[i] = key
        vals[i] = r  # a pair listed twice keeps its last rank, as tokenizers' merge map does
    return keys, vals


@numba.njit(cache=True, nogil=True, inline="always")
def _rank(a, b, keys, vals, bits):
    """Rank of the merge (a, b), or NO_MERGE."""
    key = (a << 32) | b
    mask = (1 << bits) - 1
    j = _slot(key, bits)
    while keys[j] != -1 and keys[j] != key:
        j = (j + 1) & mask
    return vals[j] if keys[j] != -1 else NO_MERGE


@numba.njit(cache=True, nogil=True)
def merge_word(data, s, n, byte_id, keys, vals, merged, bits, sym, rk, nxt, heap):
    """BPE of the word data[s:s+n] (n >= 1): its ids end up in sym[:count]; returns count.

    A heap of (rank << 32 | position) over adjacent pairs, popped lowest rank first, leftmost on ties,
    as tokenizers does. rk[p] is the live rank of the pair at p, so stale entries are told apart
    without a hash lookup. At most n - 1 + 2 per merge pushes."""
    prv = nxt[n:]
    for i in range(n):
        sym[i] = byte_id[data[s + i]]
        nxt[i] = i + 1 if i + 1 < n else -1
        prv[i] = i - 1
    size = 0
    rk[n - 1] = NO_MERGE
    for i in range(n - 1):
        rk[i] = _rank(sym[i], sym[i + 1], keys, vals, bits)
        if rk[i] != NO_MERGE:
            size = _push(heap, size, (rk[i] << 32) | i)
    count = n
    while size:
        top = heap[0]
        size = _pop(heap, size)
        rank, p = top >> 32, top & 0xFFFFFFFF
        if rk[p] != rank:
            continue
        q = nxt[p]
        sym[p] = merged[rank]
        rk[q] = NO_MERGE
        nxt[p] = nxt[q]
        if nxt[q] >= 0:
            prv[nxt[q]] = p
        count -= 1
        for a in (prv[p], p):
            if a >= 0:
                rk[a] = _rank(sym[a], sym[nxt[a]], keys, vals, bits) if nxt[a] >= 0 else NO_MERGE
                if rk[a] != NO_MERGE:
                    size = _push(heap, size, (rk[a] << 32) | a)
    i, k = 0, 0
    while i >= 0:  # compact the surviving symbols to the front
        sym[k] = sym[i]
        k += 1
        i = nxt[i]
    return count


def work_arrays(longest: int):
    """Scratch for merge_word on words of up to `longest` bytes: sym, rk, nxt (+ prv), heap."""
    longest = max(longest, 1)
    return (np.empty(longest, np.int64), np.empty(longest, np.int64), np.empty(2 * longest, np.int64),
            np.empty(3 * longest, np.int64))


@numba.njit(cache=True, nogil=True)
def _encode_words(data, starts, byte_id, keys, vals, merged, bits, out, sym, rk, nxt, heap):
    """Token ids of each word data[starts[w]:starts[w+1]] into out (concatenated); returns counts."""
    n_words = starts.shape[0] - 1
    counts = np.zeros(n_words, np.int64)
    pos = 0
    for w in range(n_words):
        n = starts[w + 1] - starts[w]
        if n == 0:
            continue
        c = merge_word(data, starts[w], n, byte_id, keys, vals, merged, bits, sym, rk, nxt, heap)
        out[pos:pos + c] = sym[:c]
        pos += c
        counts[w] = c
    return counts


@numba.njit(cache=True, nogil=True, inline="always")
def _push(heap, size, item):
    i = size
    heap[i] = item
    while i:
        parent = (i - 1) >> 1
        if heap[parent] <= item:
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = item
    return size + 1


@numba.njit(cache=True, nogil=True, inline="always")
def _pop(heap, size):
    size -= 1
    item = heap[size]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and heap[c + 1] < heap[c]:
            c += 1
        if heap[c] >= item:
            break
        heap[i] = heap[c]
        i = c
    heap[i] = item
    return size


class ByteLevelBPE:
    """The merge loop of one byte-level BPE model; `encode(words)` -> ids per word."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        b2u = byte_to_unicode()
        missing = [b for b, ch in b2u.items() if ch not in vocab]
        if missing:
            raise ValueError(f"byte-level vocabulary lacks {len(missing)} of the 256 byte tokens")
        self.byte_id = np.array([vocab[b2u[b]] for b in range(256)], np.int64)
        left, right, merged = (np.empty(len(merges), np.int64) for _ in range(3))
        for r, (a, b) in enumerate(merges):
            try:
                left[r], right[r], merged[r] = vocab[a], vocab[b], vocab[a + b]
            except KeyError:
                raise ValueError(f"merge {r} ({a!r}, {b!r}) names a token outside the vocabulary") from None
        self.bits = max(4, int(2 * max(len(merges), 1) - 1).bit_length())  # load factor <= 1/2
        self.keys, self.vals = _build(left, right, self.bits)
        self.merged = merged

    @classmethod
    def from_spec(cls, model: dict) -> ByteLevelBPE | None:
        """From tokenizer.json's "model"; None if it is not a plain BPE (dropout, affixes, merge skipping)."""
        if (model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix")
                or model.get("end_of_word_suffix") or model.get("ignore_merges") or model.get("byte_fallback")):
            return None
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        try:
            return cls(model["vocab"], merges)
        except (ValueError, KeyError):
            return None

    def encode(self, words: list[str]) -> list[list[int]]:
        if not words:
            return []
        blobs = [w.encode("utf-8") for w in words]
        starts = np.zeros(len(blobs) + 1, np.int64)
        np.cumsum([len(b) for b in blobs], out=starts[1:])
        data = np.frombuffer(b"".join(blobs), np.uint8)
        out = np.empty(max(len(data), 1), np.int64)
        work = work_arrays(max(len(b) for b in blobs))
        counts = _encode_words(data, starts, self.byte_id, self.keys, self.vals, self.merged, self.bits, out, *work)
        flat = out[:int(counts.sum())].tolist()
        ends = np.cumsum(counts).tolist()
        return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends)]
