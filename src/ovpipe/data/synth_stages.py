"""Synthetic training-stage data for the tiny recipe: alignment captions, instruction QA, held-out eval.

Scenes are size x size (64 default) images of 1-4 non-overlapping shapes (synth.SHAPES x synth.COLORS,
16-24 px at 64 px so a star is still a star), a plain white or black background no shape shares, and
sometimes one word from TEXT_WORDS in a strip at the top or bottom, clear of the shapes. Drawing,
codecs and Chinese words come from synth.py, so these scenes look like the curation corpus.

  align_samples  stage 1 (LLaVA-558K style): "<image>" -> one short caption.
  sft_samples    stage 2: 1-3 one-word QA turns (color, shape, count, position, text) or a caption.
  eval_items     held-out multiple-choice items for color / shape / count, balanced over answers.
  scene_images   labelled scenes (scene dict, encoded image) for pretraining the tiny vision tower.

Every question is asked only when the image alone answers it (e.g. "what color is the circle?" needs
exactly one circle). Each sample draws from default_rng([seed, kind, split, shard, purpose, index]).
Images are disjoint by construction: a hash of the pixels puts 1/EVAL_MOD of all images in the eval
space; eval_items draws only from it and training samples never do.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator

import numpy as np
from PIL import Image

from .synth import (
    _FONT_SIZES,
    _REGION,
    COLORS,
    NUMBER_WORDS,
    PLURAL,
    SHAPES,
    ZH_WORDS,
    _an,
    _decodes,
    _font,
    _join,
    _parse,
    _truths,
    draw_scene,
    encode_image,
)

TEXT_WORDS = ("cat", "dog", "sun", "box", "car", "hat", "cup", "pen")  # small, tokenizer-friendly
# 3x3 cell (column, row) -> answer word; corners and centre are synth.py's region names.
CELLS = {**_REGION, (1, 0): "top", (1, 2): "bottom", (0, 1): "left", (2, 1): "right"}
ZH = {**ZH_WORDS, "top": "上方", "bottom": "下方", "left": "左侧", "right": "右侧"}
TASKS = ("color", "shape", "count")
QUESTION_TYPES = ("color", "shape", "count", "position", "text")
ALIGN_BAD_KINDS = ("corrupt_image", "empty_answer", "placeholder_mismatch")
SFT_BAD_KINDS = ALIGN_BAD_KINDS + ("no_assistant_turn",)
EVAL_MOD = 16  # 1/16 of images (by pixel hash) are reserved for evaluation
_KIND, _SPLIT = {"align": 1, "sft": 2, "eval": 3, "vit": 4}, {"train": 1, "val": 2, "eval": 3}
_TASK = {t: i + 1 for i, t in enumerate(TASKS)}
_SCENE_KEYS = ("width", "height", "background", "shapes", "text", "text_color")
_SAMPLE, _BAD = 1, 2  # RNG purposes
_SIZE_FRAC = (0.25, 0.38)
_TEXT_P, _SAME_P, _PNG_P = 0.2, 0.3, 0.5
_MIN_DIST = 120  # background vs shape / text colour
BACKGROUNDS = ("white", "black")
_ANSWERS = {"color": tuple(COLORS), "shape": tuple(SHAPES), "count": (1, 2, 3, 4)}  # per task, in option order
OPTIONS = {"en": ("\nOptions: ", ", "), "zh": ("\n选项：", "、")}  # multiple choice: question + head + choices
# Question kind -> (English, Chinese) template; fields {s} shape, {sp} plural, {c} colour.
_Q = {"color_one": ("What color is the {s}?", "{s}是什么颜色？"),
      "color_all": ("What color are the shapes?", "这些图形是什么颜色？"),
      "shape_all": ("What shape is shown?", "图中是什么形状？"),
      "shape_color": ("What shape is the {c} one?", "{c}的图形是什么形状？"),
      "count_all": ("How many shapes are there?", "图中有几个图形？"),
      "count_shape": ("How many {sp} are there?", "有几个{s}？"),
      "count_color": ("How many {c} shapes are there?", "有几个{c}的图形？"),
      "position": ("Where is the {s}?", "{s}在哪里？"),
      "text": ("What word is written?", "图中写着什么词？"),
      "caption": ("Describe the image.", "描述这张图片。")}


def _rng(seed: int, kind: str, split: str, shard: int, purpose: int, index: int) -> np.random.Generator:
    # Fixed length and non-zero tags: no two streams share a seed sequence.
    return np.random.default_rng([seed, _KIND[kind], _SPLIT[split], shard, purpose, index])


def _pick(rng: np.random.Generator, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _word(w: str, lang: str) -> str:
    return ZH[w] if lang == "zh" else w


def _answer_word(task: str, answer, lang: str) -> str:
    return _word(NUMBER_WORDS[answer] if task == "count" else answer, lang)


def answer_choices(task: str, lang: str) -> list[str]:
    """Every answer a color / shape / count question can have, in a fixed order: the options of its
    multiple-choice form."""
    return [_answer_word(task, a, lang) for a in _ANSWERS[task]]


def with_options(question: str, task: str, lang: str) -> str:
    head, sep = OPTIONS[lang]
    return question + head + sep.join(answer_choices(task, lang))


def _cell(v: float, n: int) -> int:
    return 0 if v < n / 3 else 2 if v >= 2 * n / 3 else 1  # same thirds as synth.region


def in_eval_space(img: Image.Image) -> bool:
    """True for the 1/EVAL_MOD of images reserved for eval_items (hash of the RGB pixels)."""
    h = hashlib.blake2b(img.tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "big") % EVAL_MOD == 0


def _attrs(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Shape kinds and colours of 1-4 shapes; 'all the same' is made common so those questions occur."""
    n = int(rng.integers(1, 5))
    kinds = [_pick(rng, SHAPES)] * n if rng.random() < _SAME_P else [_pick(rng, SHAPES) for _ in range(n)]
    colors = [_pick(rng, COLORS)] * n if rng.random() < _SAME_P else [_pick(rng, COLORS) for _ in range(n)]
    return kinds, colors


def _place(rng: np.random.Generator, size: int, y0: int, y1: int, n: int) -> list[tuple[int, int, int]]:
    """(size, x, y) of n shapes inside rows [y0, y1), bounding boxes >= 2 px apart; shrinks if crowded."""
    for attempt in range(1000):
        scale, out = 0.92 ** (attempt // 5), []
        for _ in range(n):
            s = max(8, int(size * rng.uniform(*_SIZE_FRAC) * scale))
            r = math.ceil(s / 2)
            if y1 - y0 < 2 * r + 3:
                break
            for _ in range(30):
                x, y = int(rng.integers(r + 1, size - r - 1)), int(rng.integers(y0 + r + 1, y1 - r - 1))
                if all(abs(x - a) >= (s + b) / 2 + 2 or abs(y - c) >= (s + b) / 2 + 2 for b, a, c in out):
                    out.append((s, x, y))
                    break
            else:
                break
        if len(out) == n:
            return out
    raise RuntimeError(f"cannot place {n} shapes on a {size}px canvas")  # not reachable for size >= 32


def _contrasting(used: set[str]) -> list[str]:
    """Colours not in `used` and far (RGB distance) from all of them, e.g. no purple on blue."""
    free = [c for c in COLORS if c not in used]
    far = [c for c in free if all(math.dist(COLORS[c], COLORS[u]) >= _MIN_DIST for u in used)]
    return far or free


def _layout(rng: np.random.Generator, size: int, kinds: list[str], colors: list[str]) -> dict:
    """A synth-style scene dict (draw_scene renders it) with the given shapes placed at random."""
    # White or black: a tiny ViT trained from scratch tells shapes apart on a neutral background several
    # times faster than on one from the shape palette (measured: 0.78 vs 0.40 shape accuracy in 300 steps).
    bg = _pick(rng, [c for c in BACKGROUNDS if c not in colors] or _contrasting(set(colors)))
    text = text_color = None
    fs, y0, y1, ay = _FONT_SIZES[0], 0, size, 0.0
    if rng.random() < _TEXT_P:
        text = _pick(rng, TEXT_WORDS)
        text_color = _pick(rng, _contrasting({bg}))
        fits = [f for f in _FONT_SIZES if f <= max(10, size // 4) and _font(f).getbbox(text)[2] <= size - 2]
        fs = fits[-1] if fits else _FONT_SIZES[0]
        band = _font(fs).getbbox(text)[3] + 2  # rows the text may cover
        ay = float(rng.random() < 0.5)  # 0 = top strip, 1 = bottom strip
        y0, y1 = (band, size) if ay == 0 else (0, size - band)
    placed = _place(rng, size, y0, y1, len(kinds))
    shapes = [{"shape": k, "color": c, "size": s, "x": x, "y": y}
              for k, c, (s, x, y) in zip(kinds, colors, placed)]
    return {"width": size, "height": size, "background": bg, "shapes": shapes, "text": text,
            "text_color": text_color, "font_size": fs, "text_anchor": (float(rng.random()), ay)}


def _train_scene(rng: np.random.Generator, size: int) -> tuple[dict, Image.Image]:
    while True:  # redraw the rare scene whose pixels fall in the eval space
        sc = _layout(rng, size, *_attrs(rng))
        img = draw_scene(sc)
        if not in_eval_space(img):
            return sc, img


def _position(s: dict, size: int) -> str | None:
    """3x3 cell word of a shape, or None when its centre is too close to a third line to tell."""
    margin = size / 16
    if any(min(abs(v - size / 3), abs(v - 2 * size / 3)) < margin for v in (s["x"], s["y"])):
        return None
    return CELLS[(_cell(s["x"], size), _cell(s["y"], size))]


def _ask(kind: str, lang: str, **f: str) -> str:
    en, zh = _Q[kind]
    if lang == "zh":
        return zh.format(**{k: ZH.get(v, v) for k, v in f.items()})
    return en.format(**f)


def questions(sc: dict, lang: str) -> dict[str, list[tuple[str, str]]]:
    """Every one-word question the image answers: qa type -> [(question, answer)]."""
    shapes, size = sc["shapes"], sc["width"]
    kinds, colors = Counter(s["shape"] for s in shapes), Counter(s["color"] for s in shapes)
    num = lambda n: _word(NUMBER_WORDS[n], lang)
    out: dict[str, list[tuple[str, str]]] = {"color": [], "shape": [], "count": [], "position": []}
    for s in shapes:
        if kinds[s["shape"]] == 1:
            out["color"].append((_ask("color_one", lang, s=s["shape"]), _word(s["color"], lang)))
            pos = _position(s, size)
            if pos:
                out["position"].append((_ask("position", lang, s=s["shape"]), _word(pos, lang)))
        if colors[s["color"]] == 1 and len(shapes) > 1:
            out["shape"].append((_ask("shape_color", lang, c=s["color"]), _word(s["shape"], lang)))
    if len(colors) == 1 and len(shapes) > 1:
        out["color"].append((_ask("color_all", lang), _word(shapes[0]["color"], lang)))
    if len(kinds) == 1:
        out["shape"].append((_ask("shape_all", lang), _word(shapes[0]["shape"], lang)))
    out["count"].append((_ask("count_all", lang), num(len(shapes))))
    # Per-kind counts from two up only, or "one" would swamp the count answers.
    out["count"] += [(_ask("count_shape", lang, s=k, sp=PLURAL[k]), num(n))
                     for k, n in sorted(kinds.items()) if n > 1]
    out["count"] += [(_ask("count_color", lang, c=c), num(n)) for c, n in sorted(colors.items()) if n > 1]
    if sc["text"] is not None:
        out["text"] = [(_ask("text", lang), sc["text"])]
    return {k: v for k, v in out.items() if v}


def caption(rng: np.random.Generator, sc: dict, lang: str) -> str:
    """A short caption: "two red circles and a blue star", "一个红色圆形"; sometimes background, text."""
    groups = list(Counter((s["color"], s["shape"]) for s in sc["shapes"]).items())
    groups = [groups[int(j)] for j in rng.permutation(len(groups))]
    bg = rng.random() < 0.5
    if lang == "zh":
        items = _join([f"{ZH[NUMBER_WORDS[n]]}个{ZH[c]}{ZH[s]}" for (c, s), n in groups], "、", "和")
        out = (f"{ZH[sc['background']]}背景上有" if bg else "") + items
        return out + (f"，写着{sc['text']}" if sc["text"] else "")
    items = _join([f"{_an(c)} {c} {s}" if n == 1 else f"{NUMBER_WORDS[n]} {c} {PLURAL[s]}"
                   for (c, s), n in groups], ", ", " and ")
    out = items + (f" on {_an(sc['background'])} {sc['background']} background" if bg else "")
    return out + (f" and the word {sc['text']}" if sc["text"] else "")


def _bad_slots(rng: np.random.Generator, count: int, frac: float, kinds: tuple) -> dict[int, str]:
    """Index -> bad kind; every kind at least once when count >= 50 and frac > 0 (as synth.py does)."""
    if frac <= 0 or count == 0:
        return {}
    n = min(count, max(math.ceil(count * frac - 1e-9), min(len(kinds), count // 10)))
    pos = np.sort(rng.choice(count, n, replace=False))
    return {int(p): kinds[j % len(kinds)] for j, p in enumerate(pos)}


def _corrupt(rng: np.random.Generator) -> bytes:
    payload = rng.bytes(int(rng.integers(256, 2048)))
    while _decodes(payload):  # astronomically rare, but the kind must hold
        payload = rng.bytes(len(payload))
    return payload


def _damage(conv: list[dict], kind: str | None, rng: np.random.Generator) -> list[dict]:
    """Apply a conversation-level bad kind (image kinds are handled by the caller)."""
    if kind == "empty_answer":
        first = next(i for i, t in enumerate(conv) if t["role"] == "assistant")
        conv[first] = {"role": "assistant", "content": ""}
    elif kind == "placeholder_mismatch":  # none, or two for one image
        body = conv[0]["content"].replace("<image>", "").lstrip("\n")
        two = "<image>\n<image>" + (f"\n{body}" if body else "")
        conv[0] = {"role": "user", "content": body if rng.random() < 0.5 else two}
    elif kind == "no_assistant_turn":
        conv = [t for t in conv if t["role"] != "assistant"]
    return conv


def _check(fn: str, **kw) -> None:
    rules = {"seed": (lambda v: isinstance(v, (int, np.integer)) and 0 <= v < 2**32, "an int in [0, 2**32)"),
             "shard": (lambda v: isinstance(v, (int, np.integer)) and 0 <= v < 10**5, "an int in [0, 99999]"),
             "count": (lambda v: isinstance(v, (int, np.integer)) and 0 <= v <= 10**6, "an int in [0, 10**6]"),
             "vocab": (bool, "a non-empty list: load_vocab('configs/vocab/tiny-concepts.txt')"),
             "size": (lambda v: isinstance(v, (int, np.integer)) and 32 <= v <= 512, "an int in [32, 512]"),
             "split": (lambda v: v in ("train", "val"), "'train' or 'val' ('eval' is eval_items')"),
             "task": (lambda v: v in TASKS, f"one of {TASKS}"),
             "lang": (lambda v: v in ("en", "zh"), "'en' or 'zh'"),
             "question_types": (lambda v: bool(v) and set(v) <= set(QUESTION_TYPES),
                                f"a non-empty subset of {QUESTION_TYPES}"),
             "max_turns": (lambda v: isinstance(v, (int, np.integer)) and 1 <= v <= 8, "an int in [1, 8]"),
             "question_weights": (lambda v: isinstance(v, dict) and set(v) <= set(QUESTION_TYPES) and all(
                 isinstance(w, (int, float)) and w >= 0 for w in v.values()),
                 f"a mapping from some of {QUESTION_TYPES} to weights >= 0")}
    problems = []
    for name, value in kw.items():
        ok, fix = rules.get(name) or (lambda v: 0 <= v <= 1, "a fraction in [0, 1]")
        if not ok(value):
            problems.append(f"{name}={value!r} is invalid; use {fix}")
    if problems:
        raise ValueError(f"{fn}: " + "; ".join(problems))


def _vocab_index(vocab: list[str]) -> dict[tuple, list[int]]:
    index: dict[tuple, list[int]] = {}
    for j, p in enumerate(vocab):
        index.setdefault(_parse(p), []).append(j)
    return index


def _sample(key, ext, payload, conv, sc, index, lang, bad, **extra) -> dict:
    concepts = sorted(j for sp in _truths(sc) for j in index.get(sp, ()))  # vocab indices realized
    meta = {"conversation": conv, "scene": {**{k: sc[k] for k in _SCENE_KEYS}, "concepts": concepts},
            "lang": lang, "bad": bad, **extra}
    return {"__key__": key, ext: payload,
            "json": json.dumps(meta, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")}


def align_samples(seed: int, shard: int, count: int, vocab: list[str], *, size: int = 64,
                  zh_fraction: float = 0.3, bad_fraction: float = 0.02) -> Iterator[dict]:
    """Stage-1 pairs {"__key__", "jpg"|"png", "json"}; key f"align-train-{shard:05d}{i:06d}".

    json: conversation [user "<image>", assistant caption], scene (synth-style meta plus concepts:
    the vocab indices the scene realizes), lang ("en"|"zh"), bad (None or one of ALIGN_BAD_KINDS).
    """
    _check("align_samples", seed=seed, shard=shard, count=count, vocab=vocab, size=size,
           zh_fraction=zh_fraction, bad_fraction=bad_fraction)
    return _align(seed, shard, count, _vocab_index(vocab), size, zh_fraction, bad_fraction)


def _align(seed, shard, count, index, size, zh_fraction, bad_fraction) -> Iterator[dict]:
    bad_at = _bad_slots(_rng(seed, "align", "train", shard, _BAD, 0), count, bad_fraction, ALIGN_BAD_KINDS)
    for i in range(count):
        rng = _rng(seed, "align", "train", shard, _SAMPLE, i)
        lang = "zh" if rng.random() < zh_fraction else "en"
        ext = "png" if rng.random() < _PNG_P else "jpg"
        sc, img = _train_scene(rng, size)
        conv = [{"role": "user", "content": "<image>"},
                {"role": "assistant", "content": caption(rng, sc, lang)}]
        bad = bad_at.get(i)
        conv = _damage(conv, bad, rng)
        ext, payload = ("jpg", _corrupt(rng)) if bad == "corrupt_image" else (ext, encode_image(img, ext))
        yield _sample(f"align-train-{shard:05d}{i:06d}", ext, payload, conv, sc, index, lang, bad)


def scene_images(seed: int, split: str, count: int, size: int = 64) -> Iterator[tuple[dict, bytes]]:
    """(scene, jpg or png bytes) pairs drawn like align_samples' images, from their own streams."""
    _check("scene_images", seed=seed, split=split, count=count, size=size)
    for i in range(count):
        rng = _rng(seed, "vit", split, 0, _SAMPLE, i)
        ext = "png" if rng.random() < _PNG_P else "jpg"
        sc, img = _train_scene(rng, size)
        yield sc, encode_image(img, ext)


def sft_samples(seed: int, shard: int, count: int, vocab: list[str], *, split: str = "train", size: int = 64,
                zh_fraction: float = 0.3, bad_fraction: float = 0.02, caption_fraction: float = 0.1,
                question_types: tuple[str, ...] = QUESTION_TYPES, max_turns: int = 3,
                options_fraction: float = 0.0, question_weights: dict[str, float] | None = None) -> Iterator[dict]:
    """Stage-2 instruction samples; key f"sft-{split}-{shard:05d}{i:06d}" (split: "train" or "val").

    json: conversation (1..max_turns user turns, the first prefixed "<image>\\n", each followed by a
    one-word assistant answer; or one caption request), scene, lang, bad (None or one of SFT_BAD_KINDS),
    and qa [{"type": color|shape|count|position|text|caption, "question", "answer"}] per turn. Each turn
    picks a type among the `question_types` the image can answer, uniformly or in proportion to
    `question_weights` (type -> weight, 1 where missing; weight-0 types only when nothing else is). A
    color / shape / count question lists its options (multiple-choice form, as eval asks it) with
    probability options_fraction.
    """
    weights = question_weights or {}
    _check("sft_samples", seed=seed, shard=shard, count=count, vocab=vocab, split=split, size=size,
           zh_fraction=zh_fraction, bad_fraction=bad_fraction, caption_fraction=caption_fraction,
           question_types=question_types, max_turns=max_turns, options_fraction=options_fraction,
           question_weights=weights)
    return _sft(seed, shard, count, _vocab_index(vocab), split, size, zh_fraction, bad_fraction,
                caption_fraction, tuple(question_types), max_turns, options_fraction, weights)


def _pick_kind(rng: np.random.Generator, kinds: list[str], weights: dict[str, float]) -> str:
    if not weights:  # uniform: the draw existing data was made with
        return _pick(rng, kinds)
    w = np.array([weights.get(k, 1.0) for k in kinds], dtype=float)
    if w.sum() <= 0:
        w[:] = 1.0
    return kinds[int(rng.choice(len(kinds), p=w / w.sum()))]


def _sft(seed, shard, count, index, split, size, zh_fraction, bad_fraction, caption_fraction, types,
         max_turns, options_fraction, weights) -> Iterator[dict]:
    bad_at = _bad_slots(_rng(seed, "sft", split, shard, _BAD, 0), count, bad_fraction, SFT_BAD_KINDS)
    for i in range(count):
        rng = _rng(seed, "sft", split, shard, _SAMPLE, i)
        lang = "zh" if rng.random() < zh_fraction else "en"
        ext = "png" if rng.random() < _PNG_P else "jpg"
        sc, img = _train_scene(rng, size)
        qa = []
        if rng.random() >= caption_fraction:
            pool = {k: v for k, v in questions(sc, lang).items() if k in types}
            for _ in range(int(rng.integers(1, max_turns + 1))):
                if not pool:
                    break
                kind = _pick_kind(rng, sorted(pool), weights)
                q, a = pool[kind].pop(int(rng.integers(len(pool[kind]))))
                pool = {k: v for k, v in pool.items() if v}
                if options_fraction and kind in TASKS and rng.random() < options_fraction:  # no draw at 0
                    q = with_options(q, kind, lang)
                qa.append({"type": kind, "question": q, "answer": a})
        if not qa:  # a caption request, or the image answers none of the question types
            qa = [{"type": "caption", "question": _ask("caption", lang), "answer": caption(rng, sc, lang)}]
        conv = []
        for t, turn in enumerate(qa):
            conv += [{"role": "user", "content": ("<image>\n" if t == 0 else "") + turn["question"]},
                     {"role": "assistant", "content": turn["answer"]}]
        bad = bad_at.get(i)
        conv = _damage(conv, bad, rng)
        ext, payload = ("jpg", _corrupt(rng)) if bad == "corrupt_image" else (ext, encode_image(img, ext))
        yield _sample(f"sft-{split}-{shard:05d}{i:06d}", ext, payload, conv, sc, index, lang, bad, qa=qa)


def _eval_attrs(rng: np.random.Generator, task: str, answer) -> tuple[list[str], list[str], str, dict]:
    """Shapes for a scene whose answer to the task's question is `answer`, plus that question."""
    n = answer if task == "count" else int(rng.integers(1, 5))
    kinds, colors = _attrs(rng)
    kinds, colors = (kinds * 4)[:n], (colors * 4)[:n]
    if task == "color":  # one shape of a kind no other shape has, in the answer colour
        kinds[0], colors[0] = _pick(rng, SHAPES), answer
        kinds[1:] = [_pick(rng, [s for s in SHAPES if s != kinds[0]]) for _ in kinds[1:]]
        return kinds, colors, "color_one", {"s": kinds[0]}
    if task == "shape" and (n == 1 or rng.random() < 0.5):  # one kind: "what shape is shown?"
        return [answer] * n, colors, "shape_all", {}
    if task == "shape":  # the only shape of its colour
        kinds[0], colors[0] = answer, _pick(rng, COLORS)
        colors[1:] = [_pick(rng, [c for c in COLORS if c != colors[0]]) for _ in colors[1:]]
        return kinds, colors, "shape_color", {"c": colors[0]}
    return kinds, colors, "count_all", {}


def eval_items(seed: int, count: int, vocab: list[str], *, task: str, size: int = 64,
               lang: str = "en") -> Iterator[dict]:
    """Held-out multiple-choice items: {"id", "image" (png bytes), "question", "answer", "choices", "chance"}.

    Item i has answer choices[i % len(choices)] (balanced); its image lies in the eval space, which
    no align/sft image enters. The same seed gives the same images in both languages.
    """
    _check("eval_items", seed=seed, count=count, vocab=vocab, task=task, size=size, lang=lang)
    return _eval(seed, count, task, size, lang)


def _eval(seed, count, task, size, lang) -> Iterator[dict]:
    answers = _ANSWERS[task]
    choices = answer_choices(task, lang)
    for i in range(count):
        rng = _rng(seed, "eval", "eval", _TASK[task], _SAMPLE, i)
        answer = answers[i % len(answers)]
        while True:
            kinds, colors, qkind, fields = _eval_attrs(rng, task, answer)
            order = rng.permutation(len(kinds))  # the asked-about shape is not always drawn first
            sc = _layout(rng, size, [kinds[j] for j in order], [colors[j] for j in order])
            img = draw_scene(sc)
            if in_eval_space(img):
                break
        yield {"id": f"eval-{task}-{lang}-{i:06d}", "image": encode_image(img, "png"),
               "question": _ask(qkind, lang, **fields), "answer": _answer_word(task, answer, lang), "choices": choices,
               "chance": 1 / len(choices), "scene": {k: sc[k] for k in _SCENE_KEYS}}
