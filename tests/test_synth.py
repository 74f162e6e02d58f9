"""Synthetic corpus: determinism, bad kinds, declared sizes, long tail, captions, vocabulary."""
from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from ovpipe.data.synth import BAD_KINDS, load_vocab, synth_samples

VOCAB_PATH = Path(__file__).resolve().parents[1] / "configs" / "vocab" / "tiny-concepts.txt"
IMAGE_EXTS = ("jpg", "png", "webp")
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def vocab() -> list[str]:
    return load_vocab(str(VOCAB_PATH))


@pytest.fixture(scope="module")
def shard(vocab) -> list[dict]:
    return list(synth_samples(7, 3, 300, vocab))


@pytest.fixture(scope="module")
def big(vocab) -> list[dict]:
    return list(synth_samples(11, 0, 3000, vocab, bad_fraction=0.0))


def _ext(sample: dict) -> str:
    (ext,) = [k for k in sample if k in IMAGE_EXTS]
    return ext


def _meta(sample: dict) -> dict:
    return json.loads(sample["json"].decode("utf-8"))


def _load(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_vocab_file(vocab):
    assert 150 <= len(set(vocab)) <= 250
    assert len(set(vocab)) == len(vocab)
    assert all(v == v.strip() and v for v in vocab)


def test_load_vocab_strips_and_skips_blank(tmp_path):
    p = tmp_path / "v.txt"
    p.write_text("  red circle \n\n\t\nblue background\n", encoding="utf-8")
    assert load_vocab(str(p)) == ["red circle", "blue background"]


def test_deterministic_and_keyed(vocab, shard):
    again = list(synth_samples(7, 3, 300, vocab))
    assert again == shard
    keys = [s["__key__"] for s in shard]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert keys[42] == "00003000042"
    other = list(synth_samples(7, 4, 300, vocab))
    assert not set(keys) & {s["__key__"] for s in other}
    assert [s["json"] for s in other] != [s["json"] for s in shard]
    reseeded = list(synth_samples(8, 3, 20, vocab, bad_fraction=0.0))
    assert [s["json"] for s in reseeded] != [s["json"] for s in shard[:20]]


def test_sample_shape(shard):
    exts = Counter(_ext(s) for s in shard)
    assert set(exts) == set(IMAGE_EXTS) and exts["jpg"] > exts["png"] + exts["webp"]
    for s in shard:
        assert set(s) == {"__key__", _ext(s), "txt", "json"}
        m = _meta(s)
        assert {"width", "height", "shapes", "background", "text", "concepts", "lang",
                "caption_en", "caption_zh", "bad"} <= set(m)
        assert 1 <= len(m["shapes"]) <= 4 and m["lang"] in ("en", "zh")
        assert 48 <= m["width"] <= 160 and 48 <= m["height"] <= 160
        assert len(set(m["concepts"])) == len(m["concepts"])


def test_every_bad_kind_behaves(shard):
    by_kind: dict[str, list[dict]] = {}
    for s in shard:
        by_kind.setdefault(_meta(s)["bad"], []).append(s)
    assert set(BAD_KINDS) <= set(by_kind)
    assert set(BAD_KINDS.values()) == {"corrupt_image", "truncated_image", "too_small",
                                       "caption_empty", "caption_not_utf8"}
    for s in by_kind["corrupt_image"]:
        assert _ext(s) == "jpg"
        with pytest.raises(OSError):
            _load(s["jpg"])
    for s in by_kind["truncated_image"]:
        with pytest.raises(OSError, match="truncated"):
            _load(s["jpg"])
    for s in by_kind["tiny_image"]:
        assert _load(s[_ext(s)]).size == (1, 1)
    for s in by_kind["empty_caption"]:
        assert s["txt"] == b""
    for s in by_kind["non_utf8_caption"]:
        with pytest.raises(UnicodeDecodeError):
            s["txt"].decode("utf-8")
    for s in by_kind[None]:  # good samples: valid image of the declared size, UTF-8 caption
        m = _meta(s)
        assert _load(s[_ext(s)]).size == (m["width"], m["height"])
        assert s["txt"].decode("utf-8") == m["caption_" + m["lang"]] != ""


@pytest.mark.parametrize("count", [50, 120, 400])
def test_small_shards_hold_all_kinds(vocab, count):
    kinds = Counter(_meta(s)["bad"] for s in synth_samples(5, count, count, vocab))
    assert set(BAD_KINDS) <= set(kinds)
    assert sum(kinds[k] for k in BAD_KINDS) >= max(5, round(0.02 * count))


def test_no_bad_when_fraction_zero(big):
    assert all(_meta(s)["bad"] is None for s in big)


def test_concepts_long_tailed(vocab, big):
    primary = Counter(_meta(s)["concepts"][0] for s in big)
    counts = sorted((primary[i] for i in range(len(vocab))), reverse=True)
    median = counts[len(counts) // 2]
    assert counts[0] >= 10 * max(median, 1)
    assert primary.most_common(1)[0][0] == 0  # line order is the frequency rank
    assert len(primary) > len(vocab) // 2  # the tail is sampled, not empty


def test_captions(big):
    metas = [_meta(s) for s in big]
    zh = [m for m in metas if m["lang"] == "zh"]
    assert 0.2 < len(zh) / len(metas) < 0.4
    assert all(CJK.search(m["caption_zh"]) for m in metas)
    assert not any(CJK.search(m["caption_en"]) for m in metas)
    en = Counter(m["caption_en"] for m in metas)
    assert len(en) > 0.9 * len(metas)  # duplicates are rare


def test_primary_concept_is_described(vocab, big):
    for s in big[:500]:
        m = _meta(s)
        phrase = vocab[m["concepts"][0]]
        if phrase.endswith(" background"):
            assert m["background"] == phrase.split()[-2]
        if re.fullmatch(r"(red|green|blue|yellow|purple|orange|white|black) \w+", phrase):
            color, shape = phrase.split()
            if shape in ("circle", "square", "triangle", "star", "cross"):
                assert {"shape": shape, "color": color} in [
                    {"shape": x["shape"], "color": x["color"]} for x in m["shapes"]]


def test_bad_arguments_fail_early(vocab):
    with pytest.raises(ValueError, match="bad_fraction"):
        synth_samples(0, 0, 10, vocab, bad_fraction=1.5)
    with pytest.raises(ValueError, match="max_size"):
        synth_samples(0, 0, 10, vocab, min_size=100, max_size=120)
    with pytest.raises(ValueError, match="vocab"):
        synth_samples(0, 0, 10, [])
