"""Token ids per pre-token ("word"): the tokenizer's result, several times faster.

Byte-level BPE never merges across pre-token boundaries, so a text's ids are the concatenation of
its words' ids. We split with the tokenizer's own pattern (GPT-2's ByteLevel regex, or a Split
regex before a regex-free ByteLevel, as in Qwen), run the BPE merges in numba (`bpe.py`) and cache
short words. ASCII texts are split with `re` on an ASCII transcription of the pattern (2x faster
than `regex`; the same classes restricted to ASCII). Long words (a run of CJK characters is one
word) are encoded but not cached, and the cache is bounded, so memory stays flat on any corpus.

`count` (what the lengths step calls) goes further for the two split regexes `pretok` knows
(GPT-2's, Qwen2/3's): split, cache and BPE of whole texts in one numba call (`pretok.TextCounter`),
2.5-16x the tokenizer's encode_batch_fast on one core (bench/tokens_bench.py); `encode` stays here.

Used only for tokenizers of that shape (NFC or no normalizer) and only after a self-check on
probe texts reproduces the tokenizer; otherwise `enabled` is False and callers use the tokenizer.
"""
from __future__ import annotations

import json
import re
import unicodedata

from ovpipe.packing.bpe import ByteLevelBPE
from ovpipe.packing.pretok import PATTERNS, TextCounter

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PROBES = ["Hello,  world!  It's 3.14 -- ok?\n\n", "两个红色的圆 and a 蓝色 star 。", "  lead\tand trail  ",
          "<|im_end|> <image> e\u0301 caf\u00e9 ﬁ 123abc x''y", "a   b\r\n c", "ＡＢＣ１２３ ！？",
          "WE'LL SEE'S it's 12345 x\x1c\x0by\u3000z", "line\n\n  \n\tend ~~ !! 'quoted' I'M"]
MAX_CACHED_CHARS = 24  # longer words are rarely repeated: encode them without caching
MAX_ENTRIES = 1 << 20  # a table is cleared beyond this many entries


def split_pattern(pre: dict | None) -> str | None:
    """The pre-tokenizer's regex, if it is one regex followed by byte-level mapping; else None."""
    pre = pre or {}
    if pre.get("type") == "ByteLevel":
        return GPT2_PATTERN if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
    steps = pre.get("pretokenizers") or []
    if pre.get("type") != "Sequence" or len(steps) != 2:
        return None
    split, byte_level = steps
    if (split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert")
            or "Regex" not in (split.get("pattern") or {}) or byte_level.get("type") != "ByteLevel"
            or byte_level.get("use_regex", True) or byte_level.get("add_prefix_space")):
        return None
    return split["pattern"]["Regex"]


def ascii_pattern(pattern: str) -> str | None:
    r"""The pattern with \p{L} -> A-Za-z and \p{N} -> 0-9 (for ASCII text only); None if it has other \p."""
    out, in_class, i = [], False, 0
    while i < len(pattern):
        for prop, chars in ((r"\p{L}", "A-Za-z"), (r"\p{N}", "0-9")):
            if pattern.startswith(prop, i):
                out.append(chars if in_class else f"[{chars}]")
                i += len(prop)
                break
        else:
            c = pattern[i]
            if c == "\\":
                if pattern[i + 1:i + 2] in ("p", "P"):
                    return None
                out.append(pattern[i:i + 2])
                i += 2
                continue
            in_class = (in_class or c == "[") and not (in_class and c == "]")
            out.append(c)
            i += 1
    return "".join(out)


class _Table:
    """ids and token count per key, cleared when it grows past MAX_ENTRIES."""

    def __init__(self):
        self.ids: dict[str, list[int]] = {}
        self.n: dict[str, int] = {}

    def missing(self, keys) -> list[str]:
        ids = self.ids
        keys = set(keys)
        new = [k for k in keys if k not in ids]
        if new and len(ids) + len(new) > MAX_ENTRIES:
            ids.clear()
            self.n.clear()
            new = list(keys)
        return new

    def add(self, keys: list[str], ids: list[list[int]]) -> None:
        for k, v in zip(keys, ids):
            self.ids[k] = v
            self.n[k] = len(v)

    def forget(self, keys: list[str]) -> None:
        for k in keys:
            del self.ids[k], self.n[k]


class WordCache:
    def __init__(self, tokenizer):
        """tokenizer: a `tokenizers.Tokenizer` whose special tokens are encoded as text."""
        import regex

        self.tokenizer = tokenizer
        self.words = _Table()
        spec = json.loads(tokenizer.to_str())
        pattern, norm = split_pattern(spec.get("pre_tokenizer")), spec.get("normalizer")
        self.bpe = ByteLevelBPE.from_spec(spec.get("model") or {}) if pattern and norm in (None, {"type": "NFC"}) \
            else None
        self.enabled = self.bpe is not None
        if not self.enabled:
            return
        self._nfc = norm is not None
        self._pattern = regex.compile(pattern)
        ascii_p = ascii_pattern(pattern)
        self._ascii = re.compile(ascii_p, re.ASCII) if ascii_p else None
        if self._ascii and any(self._ascii.findall(t) != self._pattern.findall(t) for t in PROBES if t.isascii()):
            self._ascii = None
        self._counter = TextCounter(self.bpe, pattern) if pattern in PATTERNS else None
        direct = [e.ids for e in tokenizer.encode_batch(PROBES, add_special_tokens=False)]
        self.enabled = direct == self.encode(PROBES) == self.encode(PROBES)  # cold and cached paths alike
        n = [len(d) for d in direct]
        if self._counter is not None and not (self.enabled and n == self.count(PROBES) == self.count(PROBES)):
            self._counter = None  # the whole-text counter disagrees: count word by word

    def split(self, text: str) -> list[str]:
        if text.isascii():
            return (self._ascii or self._pattern).findall(text)
        return self._pattern.findall(unicodedata.normalize("NFC", text) if self._nfc else text)

    def _through_table(self, texts: list[str], per_text):
        """per_text(words) for each text, every word in the table; long new words are not kept."""
        split = [self.split(t) for t in texts]
        new = self.words.missing(w for words in split for w in words)
        self.words.add(new, self.bpe.encode(new))
        out = list(map(per_text, split))
        self.words.forget([w for w in new if len(w) > MAX_CACHED_CHARS])
        return out

    def encode(self, texts: list[str]) -> list[list[int]]:
        ids = self.words.ids
        return self._through_table(texts, lambda words: [i for w in words for i in ids[w]])

    def count(self, texts: list[str]) -> list[int]:
        if self._counter is None:
            return self._count_words(texts)
        if self._nfc:
            texts = [t if t.isascii() else unicodedata.normalize("NFC", t) for t in texts]
        out = self._counter.count(texts).tolist()
        slow = [i for i, n in enumerate(out) if n < 0]  # texts the scanner left undecided
        for i, n in zip(slow, self._count_words([texts[i] for i in slow])):
            out[i] = n
        return out

    def _count_words(self, texts: list[str]) -> list[int]:
        get = self.words.n.__getitem__
        return self._through_table(texts, lambda words: sum(map(get, words)))
