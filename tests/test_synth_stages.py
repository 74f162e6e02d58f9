"""Stage data (align / sft / eval): determinism, keys, answerable questions, bad kinds, disjoint eval."""
from __future__ import annotations

import io
import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from ovpipe.data.synth import COLORS, PLURAL, SHAPES, load_vocab
from ovpipe.data.synth_stages import (
    ALIGN_BAD_KINDS,
    BACKGROUNDS,
    CELLS,
    OPTIONS,
    SFT_BAD_KINDS,
    TEXT_WORDS,
    ZH,
    align_samples,
    answer_choices,
    eval_items,
    in_eval_space,
    sft_samples,
    with_options,
)

VOCAB = load_vocab(str(Path(__file__).resolve().parents[1] / "configs" / "vocab" / "tiny-concepts.txt"))
CJK = re.compile(r"[\u4e00-\u9fff]")
EN = {v: k for k, v in ZH.items()}  # Chinese word -> English word
NUM = {"one": 1, "two": 2, "three": 3, "four": 4}
SINGULAR = {v: k for k, v in PLURAL.items()}


@pytest.fixture(scope="module")
def sft() -> list[dict]:
    return list(sft_samples(5, 0, 400, VOCAB)) + list(sft_samples(5, 1, 400, VOCAB, split="val"))


@pytest.fixture(scope="module")
def align() -> list[dict]:
    return list(align_samples(5, 0, 300, VOCAB))


def _meta(s: dict) -> dict:
    return json.loads(s["json"].decode("utf-8"))


def _ext(s: dict) -> str:
    (ext,) = [k for k in s if k in ("jpg", "png")]
    return ext


def _img(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im.convert("RGB")


def _oracle(question: str, sc: dict) -> str:
    """The English answer recomputed from scene meta; fails when the question is not answerable."""
    shapes, size = sc["shapes"], sc["width"]
    q = question.removeprefix("<image>\n")
    zh = bool(CJK.search(q))
    one = lambda items: (items[0] if len(items) == 1 else pytest.fail(f"ambiguous: {q} {sc}"))
    pats = [(r"What color are the shapes\?|这些图形是什么颜色？", lambda: "all_color"),
            (r"What color is the (\w+)\?|(.+)是什么颜色？",
             lambda k: one([s["color"] for s in shapes if s["shape"] == k])),
            (r"What shape is shown\?|图中是什么形状？", lambda: "all_shape"),
            (r"What shape is the (\w+) one\?|(.+)的图形是什么形状？",
             lambda c: one([s["shape"] for s in shapes if s["color"] == c])),
            (r"How many shapes are there\?|图中有几个图形？", lambda: len(shapes)),
            (r"How many (\w+) shapes are there\?|有几个(.+)的图形？",
             lambda c: sum(s["color"] == c for s in shapes)),
            (r"How many (\w+) are there\?|有几个(.+)？",
             lambda k: sum(s["shape"] == SINGULAR.get(k, k) for s in shapes)),
            (r"Where is the (\w+)\?|(.+)在哪里？", lambda k: _cell(one([s for s in shapes if s["shape"] == k]), size)),
            (r"What word is written\?|图中写着什么词？", lambda: sc["text"])]
    for pat, fn in pats:
        m = re.fullmatch(pat, q)
        if m:
            args = [EN[g] if zh else g for g in m.groups() if g is not None]
            ans = fn(*args)
            if ans == "all_color":
                assert len(shapes) > 1 and len({s["color"] for s in shapes}) == 1
                ans = shapes[0]["color"]
            elif ans == "all_shape":
                assert len({s["shape"] for s in shapes}) == 1
                ans = shapes[0]["shape"]
            return {1: "one", 2: "two", 3: "three", 4: "four"}[ans] if isinstance(ans, int) else ans
    pytest.fail(f"unknown question {q!r}")


def _cell(s: dict, size: int) -> str:
    third = lambda v: 0 if v < size / 3 else 2 if v >= 2 * size / 3 else 1
    for v in (s["x"], s["y"]):  # asked only where a viewer can tell
        assert min(abs(v - size / 3), abs(v - 2 * size / 3)) >= size / 16
    return CELLS[(third(s["x"]), third(s["y"]))]


def _check_image(s: dict, m: dict) -> None:
    """Decodes at 64x64; shapes inside, apart, off the text strip; each centre pixel is its colour."""
    im, sc = _img(s[_ext(s)]), m["scene"]
    assert im.size == (64, 64) == (sc["width"], sc["height"])
    boxes = [(t["x"] - t["size"] / 2, t["y"] - t["size"] / 2, t["x"] + t["size"] / 2, t["y"] + t["size"] / 2)
             for t in sc["shapes"]]
    assert 1 <= len(boxes) <= 4 and all(b[0] >= 0 and b[1] >= 0 and b[2] < 64 and b[3] < 64 for b in boxes)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] + 2 <= b[0] or b[2] + 2 <= a[0] or a[3] + 2 <= b[1] or b[3] + 2 <= a[1]
    assert sc["background"] not in {t["color"] for t in sc["shapes"]}
    tol = 0 if _ext(s) == "png" else 60
    for t in sc["shapes"]:
        got = im.getpixel((t["x"], t["y"]))
        assert sum(abs(p - q) for p, q in zip(got, COLORS[t["color"]])) <= tol, (t, got)


def test_deterministic():
    for gen in (lambda: align_samples(3, 2, 40, VOCAB), lambda: sft_samples(3, 2, 40, VOCAB),
                lambda: eval_items(3, 20, VOCAB, task="shape", lang="zh")):
        assert list(gen()) == list(gen())
    assert list(sft_samples(3, 2, 20, VOCAB)) != list(sft_samples(4, 2, 20, VOCAB))


def test_keys_unique_sortable(align, sft):
    keys = [s["__key__"] for s in align + sft]
    assert len(set(keys)) == len(keys)
    for part in (align, sft[:400], sft[400:]):
        k = [s["__key__"] for s in part]
        assert k == sorted(k) and all("." not in x for x in k)
    assert keys[0].startswith("align-train-") and sft[0]["__key__"].startswith("sft-train-")
    assert sft[400]["__key__"].startswith("sft-val-")


def test_sft_questions_answerable(sft):
    types = Counter()
    for s in sft:
        m = _meta(s)
        if m["bad"] == "corrupt_image":
            continue
        _check_image(s, m)
        if m["bad"]:
            continue
        conv, zh = m["conversation"], m["lang"] == "zh"
        assert [t["role"] for t in conv] == ["user", "assistant"] * len(m["qa"])
        assert conv[0]["content"].startswith("<image>\n")
        assert sum(t["content"].count("<image>") for t in conv) == 1
        assert 1 <= len(m["qa"]) <= 3
        for qa, (u, a) in zip(m["qa"], zip(conv[::2], conv[1::2])):
            types[qa["type"]] += 1
            assert a["content"] == qa["answer"] and u["content"].endswith(qa["question"])
            if qa["type"] == "caption":
                for t in m["scene"]["shapes"]:
                    assert all((ZH[w] if zh else w) in a["content"] for w in (t["color"], t["shape"]))
                continue
            ans = EN[qa["answer"]] if zh and qa["type"] != "text" else qa["answer"]
            assert ans == _oracle(u["content"], m["scene"]), (u, a, m["scene"])
            assert ans in {*COLORS, *SHAPES, *NUM, *TEXT_WORDS, *CELLS.values()}
    assert set(types) == {"color", "shape", "count", "position", "text", "caption"}
    assert 0.05 < types["caption"] / len(sft) < 0.16


def test_align_captions(align):
    for s in align:
        m = _meta(s)
        if m["bad"]:
            continue
        _check_image(s, m)
        conv = m["conversation"]
        assert conv[0] == {"role": "user", "content": "<image>"} and conv[1]["role"] == "assistant"
        cap, zh = conv[1]["content"], m["lang"] == "zh"
        assert 0 < len(cap.split()) <= 40 and bool(CJK.search(cap)) == zh
        for t in m["scene"]["shapes"]:
            assert (ZH[t["color"]] if zh else t["color"]) in cap
            assert (ZH[t["shape"]] if zh else t["shape"]) in cap
        assert m["scene"]["concepts"], "every scene realizes some vocabulary concept"


def test_both_languages(align, sft):
    for part in (align, sft):
        langs = Counter(_meta(s)["lang"] for s in part)
        assert 0.2 < langs["zh"] / len(part) < 0.4
    zh = [qa for s in sft for qa in _meta(s)["qa"] if _meta(s)["lang"] == "zh" and qa["type"] in ("color", "count")]
    assert zh and all(CJK.search(qa["answer"]) for qa in zh)


@pytest.mark.parametrize("gen,kinds", [(align_samples, ALIGN_BAD_KINDS), (sft_samples, SFT_BAD_KINDS)])
def test_bad_kinds(gen, kinds):
    samples = list(gen(9, 4, 50, VOCAB, bad_fraction=0.02))
    seen = Counter(_meta(s)["bad"] for s in samples)
    assert set(seen) == {None, *kinds}
    for s in samples:
        m = _meta(s)
        conv, bad = m["conversation"], m["bad"]
        images = sum(t["content"].count("<image>") for t in conv)
        answers = [t["content"] for t in conv if t["role"] == "assistant"]
        decodes = True
        try:
            _img(s[_ext(s)])
        except Exception:  # noqa: BLE001 - the corrupt kind must not decode
            decodes = False
        assert decodes == (bad != "corrupt_image")
        assert (images != 1) == (bad == "placeholder_mismatch")
        assert (not answers) == (bad == "no_assistant_turn")
        assert ("" in answers) == (bad == "empty_answer")
    assert not any(_meta(s)["bad"] for s in gen(9, 4, 50, VOCAB, bad_fraction=0.0))


@pytest.mark.parametrize("task,n", [("color", 8), ("shape", 5), ("count", 4)])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_eval_balanced_and_correct(task, n, lang):
    items = list(eval_items(1, 43, VOCAB, task=task, lang=lang))
    assert len({it["id"] for it in items}) == 43
    counts = Counter(it["answer"] for it in items)
    assert len(counts) == n and max(counts.values()) - min(counts.values()) <= 1
    for it in items:
        assert len(it["choices"]) == n and it["chance"] == pytest.approx(1 / n) and it["answer"] in it["choices"]
        assert bool(CJK.search(it["answer"])) == (lang == "zh")
        ans = EN[it["answer"]] if lang == "zh" else it["answer"]
        assert ans == _oracle(it["question"], it["scene"])
        img = _img(it["image"])
        assert img.size == (64, 64) and in_eval_space(img)


def test_eval_disjoint_from_train():
    ev = [it for task in ("color", "shape", "count") for it in eval_items(0, 100, VOCAB, task=task)]
    ev_bytes, ev_pixels = {it["image"] for it in ev}, {_img(it["image"]).tobytes() for it in ev}
    for shard in (0, 1):
        for s in [*align_samples(0, shard, 300, VOCAB), *sft_samples(0, shard, 300, VOCAB),
                  *sft_samples(0, shard, 100, VOCAB, split="val")]:
            data = s[_ext(s)]
            assert data not in ev_bytes
            if _meta(s)["bad"] != "corrupt_image" and _ext(s) == "png":
                img = _img(data)
                assert not in_eval_space(img) and img.tobytes() not in ev_pixels


def test_shard_of_2000_is_fast():
    t0 = time.perf_counter()
    n = sum(1 for _ in sft_samples(2, 7, 2000, VOCAB))
    assert n == 2000 and time.perf_counter() - t0 < 8


@pytest.mark.parametrize("call,name", [
    (lambda: align_samples(-1, 0, 1, VOCAB), "seed"),
    (lambda: sft_samples(0, 0, 1, VOCAB, split="eval"), "split"),
    (lambda: sft_samples(0, 0, 1, [], zh_fraction=2), "vocab"),
    (lambda: eval_items(0, 1, VOCAB, task="position"), "task"),
    (lambda: eval_items(0, 1, VOCAB, task="color", size=16), "size"),
    (lambda: sft_samples(0, 0, 1, VOCAB, question_types=("colour",)), "question_types"),
    (lambda: sft_samples(0, 0, 1, VOCAB, max_turns=0), "max_turns"),
    (lambda: sft_samples(0, 0, 1, VOCAB, question_weights={"colour": 2}), "question_weights"),
    (lambda: sft_samples(0, 0, 1, VOCAB, question_weights={"shape": -1}), "question_weights"),
])
def test_invalid_arguments_raise_eagerly(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_sft_question_types_and_turns():
    got = [_meta(s) for s in sft_samples(3, 0, 300, VOCAB, question_types=("shape", "text"), max_turns=1,
                                         caption_fraction=0.0, bad_fraction=0)]
    turns = Counter(len(m["qa"]) for m in got)
    types = Counter(q["type"] for m in got for q in m["qa"])
    assert set(turns) == {1} and set(types) <= {"shape", "text", "caption"}
    assert types["shape"] > 100 and types["text"] > 10
    # images that answer neither type get a caption request instead of an empty conversation
    assert all(m["conversation"][-1]["role"] == "assistant" for m in got)
    assert all(m["qa"][0]["type"] == "caption" for m in got if m["qa"][0]["type"] not in ("shape", "text"))


def test_sft_question_weights_shift_the_mix_and_default_to_uniform():
    def kinds(**kw):
        return Counter(q["type"] for s in sft_samples(3, 0, 400, VOCAB, question_types=("color", "shape", "count"),
                                                      max_turns=1, caption_fraction=0.0, bad_fraction=0, **kw)
                       for q in _meta(s)["qa"])
    uniform, shape = kinds(), kinds(question_weights={"shape": 4})
    assert kinds(question_weights={}) == uniform  # no weights: the same data as before the option existed
    assert shape["shape"] > 1.5 * uniform["shape"] and shape["color"] < uniform["color"]
    assert kinds(question_weights={"count": 0, "color": 0})["shape"] > 0.4 * 400  # zero weight: when nothing else


def test_backgrounds_are_neutral_unless_shapes_take_both(sft):
    for m in map(_meta, sft):
        colors = {s["color"] for s in m["scene"]["shapes"]}
        assert m["scene"]["background"] not in colors
        if not set(BACKGROUNDS) <= colors:
            assert m["scene"]["background"] in BACKGROUNDS


def test_sft_options_fraction_lists_every_answer_as_eval_does():
    def asked(fraction):
        return [q for s in sft_samples(5, 0, 200, VOCAB, question_types=("color", "shape", "count", "position"),
                                       options_fraction=fraction, caption_fraction=0.0, bad_fraction=0)
                for q in _meta(s)["qa"]]
    plain, half = asked(0.0), asked(0.5)
    assert not any(OPTIONS[lang][0] in q["question"] for q in plain for lang in OPTIONS)
    listed = [q for q in half if any(OPTIONS[lang][0] in q["question"] for lang in OPTIONS)]
    assert 0.3 * len(half) < len(listed) < 0.7 * len(half)
    assert {q["type"] for q in listed} == {"color", "shape", "count"}  # never position
    for q in listed:
        lang = "zh" if OPTIONS["zh"][0] in q["question"] else "en"
        bare, options = q["question"].split(OPTIONS[lang][0])
        assert options.split(OPTIONS[lang][1]) == answer_choices(q["type"], lang) and q["answer"] in options
    # the same multiple-choice form as the eval's mc tasks
    item = next(eval_items(7, 1, VOCAB, task="shape", lang="zh"))
    assert with_options(item["question"], "shape", "zh").endswith(OPTIONS["zh"][1].join(item["choices"]))
