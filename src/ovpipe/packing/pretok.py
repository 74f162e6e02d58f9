"""Token counts of whole texts in one numba call: pre-tokenizer, word cache and BPE, no Python per word.

`WordCache.count` spends most of its time in Python per word (the regex split, the set and dicts
around the cache) and, on CJK text whose runs rarely repeat, in building lists for words met once.
Here each text's UTF-8 bytes are split by a hand-written scanner for one of two known split regexes
(GPT-2's ByteLevel regex and Qwen2/Qwen3's Split regex, recognised by their exact text), every
pre-token is looked up in a bounded byte-keyed hash table (verified byte for byte, so a hash
collision cannot change a count) and missing ones go through `bpe.merge_word`.

The scanner follows the regex's alternation order and backtracking (`\\s+(?!\\S)` leaves a run's last
whitespace to the next word; `\\s*[\\r\\n]+` ends at the run's last newline). Character classes come
from the `regex` module itself (the one WordCache's split trusts), as a table per code point. A text
the scanner will not decide (Qwen's case-insensitive contraction "'ſ": whether the long s folds to
"s" is up to the regex engine) gets -1 and the caller counts it word by word.
"""
from __future__ import annotations

import functools

import numba
import numpy as np

from ovpipe.packing import bpe

GPT2, QWEN2 = 0, 1
PATTERNS = {
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""": GPT2,
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+""": QWEN2,
}
OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3  # character classes
MAX_CACHED_BYTES = 64  # longer pre-tokens (long CJK runs) are rarely repeated: not cached
SLOTS_BITS = 20  # hash slots; the table is cleared at half load ...
ARENA_BYTES = 16 << 20  # ... or when the cached words' bytes fill this: ~40 MB in all


@functools.lru_cache(maxsize=1)
def classes() -> np.ndarray:
    """uint8 class per code point, by the `regex` module's \\s, \\p{L}, \\p{N} (0.2 s, once)."""
    import regex

    table = np.zeros(0x110000, np.uint8)
    every = "".join(map(chr, range(0x110000)))
    for cls, pat in ((LETTER, r"\p{L}+"), (NUMBER, r"\p{N}+"), (SPACE, r"\s+")):
        for m in regex.finditer(pat, every):
            table[m.start():m.end()] = cls
    return table


@numba.njit(cache=True, nogil=True, inline="always")
def _width(b):
    return 1 if b < 0x80 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4


@numba.njit(cache=True, nogil=True, inline="always")
def _cls(d, i, table):
    b = np.int64(d[i])
    if b < 0x80:
        return table[b]
    if b < 0xE0:
        return table[((b & 0x1F) << 6) | (d[i + 1] & 0x3F)]
    if b < 0xF0:
        return table[((b & 0x0F) << 12) | ((np.int64(d[i + 1]) & 0x3F) << 6) | (d[i + 2] & 0x3F)]
    return table[((b & 0x07) << 18) | ((np.int64(d[i + 1]) & 0x3F) << 12) | ((np.int64(d[i + 2]) & 0x3F) << 6)
                 | (d[i + 3] & 0x3F)]


@numba.njit(cache=True, nogil=True, inline="always")
def _run(d, i, e, cls, table):
    """End of the run of class `cls` starting at i."""
    while i < e and _cls(d, i, table) == cls:
        i += _width(d[i])
    return i


@numba.njit(cache=True, nogil=True, inline="always")
def _contraction(d, i, e, fold):
    """Length of a contraction ('s 't 're 've 'm 'll 'd) at i, 0 if none, -1 if undecidable."""
    if d[i] != 39 or i + 1 >= e:
        return 0
    a = np.int64(d[i + 1])
    if fold:
        if a >= 0x80:  # only U+017F (long s) folds to an ASCII letter here, and engines may differ on it
            return -1 if a == 0xC5 and i + 2 < e and d[i + 2] == 0xBF else 0
        a |= 0x20 if 65 <= a <= 90 else 0
    if a == 115 or a == 116 or a == 109 or a == 100:  # s t m d
        return 2
    if i + 2 >= e:
        return 0
    b = np.int64(d[i + 2])
    if fold:
        b |= 0x20 if 65 <= b <= 90 else 0
    if (a == 114 and b == 101) or (a == 118 and b == 101) or (a == 108 and b == 108):  # re ve ll
        return 3
    return 0


@numba.njit(cache=True, nogil=True, inline="always")
def _space_run(d, i, e, table, newline_ends):
    """A whitespace pre-token at i: `\\s*[\\r\\n]+` (Qwen only), then `\\s+(?!\\S)`, then `\\s+`."""
    j, last, last_nl, k = i, i, -1, 0
    while j < e and _cls(d, j, table) == SPACE:
        if d[j] == 10 or d[j] == 13:
            last_nl = j
        last = j
        j += _width(d[j])
        k += 1
    if newline_ends and last_nl >= 0:
        return last_nl + 1
    if j == e or k == 1:
        return j
    return last  # leave the last whitespace to the next word


@numba.njit(cache=True, nogil=True)
def next_token(d, i, e, mode, table):
    """End of the pre-token starting at i (< e); -1 if the scanner will not decide this text."""
    c = d[i]
    w = _width(c)
    cc = _cls(d, i, table)
    if mode == GPT2:
        k = _contraction(d, i, e, False)
        if k:
            return i + k
        j = i + 1 if c == 32 and i + 1 < e and _cls(d, i + 1, table) != SPACE else i
        cj = _cls(d, j, table)
        if cj != SPACE:
            return _run(d, j + _width(d[j]), e, cj, table)
        return _space_run(d, i, e, table, False)
    k = _contraction(d, i, e, True)
    if k:
        return i + k if k > 0 else -1
    if cc == LETTER:
        return _run(d, i + w, e, LETTER, table)
    if cc != NUMBER and c != 10 and c != 13 and i + w < e and _cls(d, i + w, table) == LETTER:
        return _run(d, i + w, e, LETTER, table)
    if cc == NUMBER:
        return i + w
    j = i + 1 if c == 32 and i + 1 < e and _cls(d, i + 1, table) == OTHER else i
    if _cls(d, j, table) == OTHER:
        j = _run(d, j, e, OTHER, table)
        while j < e and (d[j] == 10 or d[j] == 13):
            j += 1
        return j
    return _space_run(d, i, e, table, True)


@numba.njit(cache=True, nogil=True, inline="always")
def _hash(d, s, n):
    h = np.uint64(0xCBF29CE484222325)  # FNV-1a
    for i in range(n):
        h = (h ^ np.uint64(d[s + i])) * np.uint64(0x100000001B3)
    return h | np.uint64(1)  # 0 marks an empty slot


@numba.njit(cache=True)  # keeps the GIL: the cache arrays are shared state
def count_texts(d, starts, mode, table, byte_id, keys, vals, merged, bits,
                hashes, offsets, counts, arena, state, sym, rk, nxt, heap):
    """Tokens per text d[starts[t]:starts[t+1]] (-1: undecided); the cache (hashes, offsets, counts,
    arena; state = [entries, arena bytes used]) persists across calls."""
    out = np.zeros(starts.shape[0] - 1, np.int64)
    mask = hashes.shape[0] - 1
    slot_bits = 0
    while (1 << slot_bits) < hashes.shape[0]:
        slot_bits += 1
    for t in range(starts.shape[0] - 1):
        i, e, total = starts[t], starts[t + 1], 0
        while i < e:
            j = next_token(d, i, e, mode, table)
            if j < 0:
                total = -1
                break
            n = j - i
            if n == 1:  # every byte is a token
                total += 1
            elif n > MAX_CACHED_BYTES:
                total += bpe.merge_word(d, i, n, byte_id, keys, vals, merged, bits, sym, rk, nxt, heap)
            else:
                h = _hash(d, i, n)
                s = np.int64((h * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - slot_bits))
                found = -1
                while hashes[s] != 0:
                    if hashes[s] == h and counts[s] >> 8 == n:  # low byte: count, then length
                        o = offsets[s]
                        same = True
                        for k in range(n):
                            if arena[o + k] != d[i + k]:
                                same = False
                                break
                        if same:
                            found = counts[s] & 255
                            break
                    s = (s + 1) & mask
                if found < 0:
                    found = bpe.merge_word(d, i, n, byte_id, keys, vals, merged, bits, sym, rk, nxt, heap)
                    if 2 * (state[0] + 1) > hashes.shape[0] or state[1] + n > arena.shape[0]:
                        hashes[:] = 0  # full: start afresh (bounded memory)
                        state[0] = state[1] = 0
                        s = np.int64((h * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - slot_bits))
                        while hashes[s] != 0:
                            s = (s + 1) & mask
                    o = state[1]
                    arena[o:o + n] = d[i:i + n]
                    hashes[s], offsets[s], counts[s] = h, o, (n << 8) | found
                    state[0] += 1
                    state[1] += n
                total += found
            i = j
        out[t] = total
    return out


class TextCounter:
    """Per-text token counts of a byte-level BPE whose split regex is one of PATTERNS."""

    def __init__(self, model: bpe.ByteLevelBPE, pattern: str):
        self.mode = PATTERNS[pattern]
        self.model = model
        self.table = classes()
        size = 1 << SLOTS_BITS
        self.cache = (np.zeros(size, np.uint64), np.zeros(size, np.int64), np.zeros(size, np.int64),
                      np.zeros(ARENA_BYTES, np.uint8), np.zeros(2, np.int64))

    def count(self, texts: list[str]) -> np.ndarray:
        """int64 count per (already normalized) text; -1 where the caller must count it itself."""
        blobs = [t.encode("utf-8") for t in texts]
        starts = np.zeros(len(blobs) + 1, np.int64)
        np.cumsum([len(b) for b in blobs], out=starts[1:])
        data = np.frombuffer(b"".join(blobs), np.uint8)
        m = self.model
        work = bpe.work_arrays(int(np.diff(starts).max(initial=1)))
        return count_texts(data, starts, self.mode, self.table, m.byte_id, m.keys, m.vals, m.merged, m.bits,
                           *self.cache, *work)
