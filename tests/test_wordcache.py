"""The numba BPE and the word cache must give exactly the tokenizer's ids, for GPT-2- and Qwen-shaped
byte-level tokenizers, and stay off for any other shape."""
import random

import pytest
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from ovpipe.packing import pretok, wordcache
from ovpipe.packing.bpe import ByteLevelBPE
from ovpipe.packing.wordcache import WordCache, ascii_pattern, split_pattern

QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
WORDS = "the cat sat on a mat it's 42 photos of 3.5% dogs—“quoted” CAN'T e\u0301t\u00e9 ".split(" ")
CJK = "一只猫坐在红色的木桌上旁边是明亮窗户两个人沿着海滩散步太阳落山后面有群"


def _texts(rng, n):
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(0, 30))]
        seps = [rng.choice([" ", " ", " ", "  ", "\n", "\t", ", ", "\n\n "]) for _ in words]
        text = "".join(w + s for w, s in zip(words, seps))
        if rng.random() < 0.4:
            text += "".join(rng.choice(CJK) for _ in range(rng.randint(1, 120)))  # one long pre-token
        out.append(text)
    return out


def _train(pre, normalizer=None, model=None, vocab=1500):
    tk = Tokenizer(model or models.BPE())
    tk.normalizer = normalizer
    tk.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False, special_tokens=["<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_texts(random.Random(1), 3000), trainer=trainer)
    tk.encode_special_tokens = True
    return tk


SHAPES = {
    "gpt2": lambda: _train(pre_tokenizers.ByteLevel(add_prefix_space=False), normalizers.NFC()),
    "qwen": lambda: _train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_word_cache_equals_tokenizer(shape):
    tk = SHAPES[shape]()
    cache = WordCache(tk)
    assert cache.enabled and cache._ascii is not None
    texts = _texts(random.Random(2), 1500) + ["", " ", "x", "<|im_end|>", "\x1c\x0b\u3000", "ＡＢＣ"]
    direct = [e.ids for e in tk.encode_batch(texts, add_special_tokens=False)]
    for _ in range(2):  # cold, then from the cache
        assert cache.encode(texts) == direct
        assert cache.count(texts) == [len(d) for d in direct]
    assert not any(len(w) > wordcache.MAX_CACHED_CHARS for w in cache.words.ids), "long words are not kept"


def test_bpe_matches_tokenizer_word_by_word():
    tk = SHAPES["gpt2"]()
    bpe = ByteLevelBPE.from_spec(__import__("json").loads(tk.to_str())["model"])
    rng = random.Random(3)
    words = ["", "a", " the", "aaaaaaa", " " * 9, *("".join(rng.choice(CJK) for _ in range(k)) for k in range(1, 60)),
             *(bytes(rng.randrange(256) for _ in range(20)).decode("latin-1") for _ in range(50))]
    words = [w for w in words if len(tk.pre_tokenizer.pre_tokenize_str(w)) <= 1]  # one pre-token each
    assert bpe.encode(words) == [tk.model_encode(w) if hasattr(tk, "model_encode") else
                                 tk.encode(w, add_special_tokens=False).ids for w in words]


def test_unsupported_shapes_stay_off():
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    assert not WordCache(wordpiece).enabled
    prefix = _train(pre_tokenizers.ByteLevel(add_prefix_space=True))
    assert not WordCache(prefix).enabled
    lower = _train(pre_tokenizers.ByteLevel(add_prefix_space=False), normalizers.Lowercase())
    assert not WordCache(lower).enabled
    assert split_pattern({"type": "Whitespace"}) is None
    assert split_pattern({"type": "ByteLevel", "use_regex": True}) == wordcache.GPT2_PATTERN


def test_ascii_pattern():
    assert ascii_pattern(r" ?\p{L}+| ?[^\s\p{L}\p{N}]+") == r" ?[A-Za-z]+| ?[^\sA-Za-z0-9]+"
    assert ascii_pattern(r"\p{Lu}") is None


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(wordcache, "MAX_ENTRIES", 50)
    tk = SHAPES["gpt2"]()
    cache = WordCache(tk)
    texts = [f"w{i} v{i * 7} u{i * 13}" for i in range(300)]
    direct = [len(e.ids) for e in tk.encode_batch(texts, add_special_tokens=False)]
    for i in range(0, len(texts), 10):
        assert cache.count(texts[i:i + 10]) == direct[i:i + 10]
        assert len(cache.words.ids) <= 50 + 30  # one batch's words at most beyond the bound


# ---------------------------------------------------------------- the whole-text counter (pretok)

POOL = ("abcxyzSTMDREVL'''   \t\n\n\r\x0b\x0c\x1c\x85\xa0\u3000\u2028.,!?-\"()~" "0123456789"
        "两个红色的圆蓝星，。、；：“”（）" "éè\u0301ſ١²½😀한국Жж\u0e31" "sstmdrevll")


def _noise(rng, n):
    return ["".join(rng.choice(POOL) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def _scan(text, mode):
    data = __import__("numpy").frombuffer(text.encode(), "uint8")
    out, i = [], 0
    while i < len(data):
        j = pretok.next_token(data, i, len(data), mode, pretok.classes())
        if j < 0:
            return None
        out.append(bytes(data[i:j]).decode())
        i = j
    return out


@pytest.mark.parametrize("pattern", sorted(pretok.PATTERNS))
def test_scanner_splits_as_the_regex(pattern):
    import regex

    mode, rx = pretok.PATTERNS[pattern], regex.compile(pattern)
    rng = random.Random(5)
    texts = _noise(rng, 4000) + _texts(rng, 300) + ["", " ", "  ", " \n ", "'s", "'S", "'ll'", "a'", "\r\n\r\nx"]
    undecided = 0
    for t in texts:
        got = _scan(t, mode)
        if got is None:  # only Qwen's case-folded contraction of the long s
            assert mode == pretok.QWEN2 and "'ſ" in t
            undecided += 1
            continue
        assert got == rx.findall(t), t
    assert undecided < len(texts) // 10


MIXED = "The 2 dogs' owner said: “两个人沿着海滩散步。” It's 3.5km—ok?\n\n一只猫，坐在红色的木桌上；旁边是明亮窗户。"


def _mixed(rng, n):
    out = []
    for t in _texts(rng, n):
        k = rng.randrange(len(MIXED))
        out.append(rng.choice([t, MIXED[k:] + t, t + MIXED[:k], t[:len(t) // 2] + MIXED + t[len(t) // 2:]]))
    return out


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_whole_text_counts_equal_tokenizer(shape, monkeypatch):
    monkeypatch.setattr(pretok, "SLOTS_BITS", 8)  # a tiny cache: cleared many times below
    monkeypatch.setattr(pretok, "ARENA_BYTES", 3000)
    tk = SHAPES[shape]()
    cache = WordCache(tk)
    assert cache.enabled and cache._counter is not None
    rng = random.Random(6)
    texts = _mixed(rng, 1500) + _noise(rng, 1500) + ["", "x", "'ſ x", "a" * 200, "两" * 300, "\n" * 70]
    direct = [len(e.ids) for e in tk.encode_batch(texts, add_special_tokens=False)]
    for _ in range(2):  # cold, then warm
        assert cache.count(texts) == direct
    for i in range(0, len(texts), 97):  # small batches, as one shard after another
        assert cache.count(texts[i:i + 97]) == direct[i:i + 97]
    state = cache._counter.cache[-1]
    assert state[0] * 2 <= 1 << 8 and state[1] <= 3000, "the cache stays within its bounds"


def test_long_words_through_the_heap():
    tk = SHAPES["qwen"]()
    bpe = ByteLevelBPE.from_spec(__import__("json").loads(tk.to_str())["model"])
    rng = random.Random(7)
    words = ["".join(rng.choice(CJK) for _ in range(k)) for k in (1, 2, 30, 100, 400)] + ["ab" * 300, " " * 500]
    assert bpe.encode(words) == [tk.encode(w, add_special_tokens=False).ids for w in words]
