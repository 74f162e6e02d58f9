"""Deterministic synthetic image-caption corpus: the pipeline's input when no real data is given.

Each sample is a procedurally drawn scene (plain background, 1-4 coloured shapes, sometimes text)
built to realize a *primary concept* drawn from a Zipf law over vocabulary rank, where rank is the
vocabulary's line order (line 1 = most frequent). That gives the long-tailed concept distribution
the balance step exists to flatten, with ground truth in the json meta to check it against.

Vocabulary phrases (see configs/vocab/tiny-concepts.txt) follow a small grammar; a phrase outside
it is realized literally, as drawn text equal to the phrase:
  "<color> <shape>", "<two|three|four> <shapes>", "<two|three|four> <color> shapes" (exact count),
  "<color> background", "<shape> in the <top left|top right|bottom left|bottom right|center>",
  "<large|small> <shape>", "<color> text", "<shape> and <shape>", "<shape> on <color> background",
  "<wide|tall|square> image", "single shape" / "two shapes" / "three shapes" / "many shapes" (= 4),
  "text", "letters", "numbers", "word".
Geometry rules behind those words: a shape's region is the third (column, row) its centre (x, y)
falls in; its size (px) is small below 0.22*min(w, h), large above 0.42*min(w, h); wide means
w >= 1.5*h. A fraction of samples is deliberately bad (BAD_KINDS) so the filter step has work.

Bytes depend only on (seed, shard, count, vocab, options) and the installed Pillow/codec build.
"""
from __future__ import annotations

import functools
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
          "yellow": (240, 220, 40), "purple": (140, 60, 180), "orange": (245, 140, 30),
          "white": (250, 250, 250), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
          "cross": "crosses"}
# (column, row) thirds of the canvas for each named position.
_REGION = {(0, 0): "top left", (2, 0): "top right", (0, 2): "bottom left",
           (2, 2): "bottom right", (1, 1): "center"}
POSITIONS = tuple(_REGION.values())
_CELL = {v: k for k, v in _REGION.items()}
_NUM = {"two": 2, "three": 3, "four": 4}
_NSHAPES = {"single shape": 1, "two shapes": 2, "three shapes": 3, "many shapes": 4}
MAX_SHAPES = 4
_SIZE_FRAC = {"small": (0.14, 0.2), "medium": (0.27, 0.36), "large": (0.48, 0.6)}

BAD_KINDS = {"corrupt_image": "corrupt_image", "truncated_image": "truncated_image",
             "tiny_image": "too_small", "empty_caption": "caption_empty",
             "non_utf8_caption": "caption_not_utf8"}
NON_UTF8_CAPTION = b"\xff\xfe\xfa bad"
_FORMATS, _FORMAT_P = ("jpg", "png", "webp"), (0.8, 0.1, 0.1)
_TEXT_KINDS = ("word", "letters", "numbers")
ZIPF_S = 1.1  # the primary concept's Zipf exponent over vocabulary rank (the corpus's long tail)
FILLER_S = 1.0  # Zipf exponent of filler shapes and colours over SHAPES / COLORS order
FILLER_P = 0.35  # chance a scene gets filler shapes besides those its concept needs
_TEXT_P = 0.25  # chance of random text when the primary concept does not ask for it
_FONT_SIZES = (10, 13, 16, 20)

_C, _S = "|".join(COLORS), "|".join(SHAPES)
_SP, _N, _P = "|".join(PLURAL.values()), "|".join(_NUM), "|".join(POSITIONS)
_SINGULAR = {v: k for k, v in PLURAL.items()}
_GRAMMAR = [
    (rf"({_C}) ({_S})", lambda c, s: ("color_shape", s, c)),
    (rf"({_N}) ({_SP})", lambda n, s: ("count_shape", _NUM[n], _SINGULAR[s])),
    (rf"({_N}) ({_C}) shapes", lambda n, c: ("count_color", _NUM[n], c)),
    (rf"({_C}) background", lambda c: ("background", c)),
    (rf"({_S}) in the ({_P})", lambda s, p: ("pos_shape", s, p)),
    (rf"(large|small) ({_S})", lambda z, s: ("size_shape", s, z)),
    (rf"({_C}) text", lambda c: ("text_color", c)),
    (rf"({_S}) and ({_S})", lambda a, b: ("pair", a, b) if a != b else ("literal", f"{a} and {b}")),
    (rf"({_S}) on ({_C}) background", lambda s, c: ("shape_bg", s, c)),
    (r"(wide|tall|square) image", lambda a: ("aspect", a)),
    (r"(text|letters|numbers|word)", lambda k: ("text", k)),
]


def load_vocab(uri: str) -> list[str]:
    """Concept phrases, one per line (stripped, blank lines skipped); line order = frequency rank. A path
    or an object-store URI."""
    from ovpipe import storage

    return [line.strip() for line in storage.read_text(uri).splitlines() if line.strip()]


def _parse(phrase: str) -> tuple:
    if phrase in _NSHAPES:
        return ("nshapes", _NSHAPES[phrase])
    for pattern, build in _GRAMMAR:
        m = re.fullmatch(pattern, phrase)
        if m:
            return build(*m.groups())
    return ("literal", phrase)


def size_class(size: int, w: int, h: int) -> str:
    m = min(w, h)
    return "small" if size < 0.22 * m else "large" if size > 0.42 * m else "medium"


def region(x: int, y: int, w: int, h: int) -> str | None:
    third = lambda v, n: 0 if v < n / 3 else 2 if v >= 2 * n / 3 else 1
    return _REGION.get((third(x, w), third(y, h)))


def _text_kind(t: str) -> str | None:
    if re.fullmatch(r"[A-Z]( [A-Z])+", t):
        return "letters"
    if t.isdigit():
        return "numbers"
    return "word" if re.fullmatch(r"[a-z]+", t) else None


def _aspect(w: int, h: int) -> str | None:
    return "wide" if w >= 1.5 * h else "tall" if h >= 1.5 * w else "square" if w == h else None


def _truths(sc: dict) -> set[tuple]:
    """Every parsed concept (see _parse) that holds for the scene; vocab lookup is then a dict hit."""
    w, h, shp, bg, t = sc["width"], sc["height"], sc["shapes"], sc["background"], sc["text"]
    ns, nc = Counter(s["shape"] for s in shp), Counter(s["color"] for s in shp)
    out = {("background", bg), ("nshapes", len(shp)), ("aspect", _aspect(w, h))}
    out |= {("count_shape", n, s) for s, n in ns.items()}
    out |= {("count_color", n, c) for c, n in nc.items()}
    out |= {("pair", a, b) for a in ns for b in ns if a != b} | {("shape_bg", s, bg) for s in ns}
    for s in shp:
        out |= {("color_shape", s["shape"], s["color"]),
                ("pos_shape", s["shape"], region(s["x"], s["y"], w, h)),
                ("size_shape", s["shape"], size_class(s["size"], w, h))}
    if t is not None:
        out |= {("text_color", sc["text_color"]), ("text", "text"), ("text", _text_kind(t)),
                ("literal", t)}
    return out


def _pick(rng: np.random.Generator, options) -> str:
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _skewed(rng: np.random.Generator, options) -> str:
    """A filler attribute (a shape, a colour the concept does not fix): Zipf-weighted over the options'
    order (FILLER_S), so the concepts scenes realize besides their primary one have a long tail too."""
    options = list(options)
    w = np.arange(1, len(options) + 1, dtype=np.float64) ** -FILLER_S
    return options[min(int(np.searchsorted(np.cumsum(w / w.sum()), rng.random(), side="right")), len(options) - 1)]


def _random_text(rng: np.random.Generator, kind: str) -> str:
    if kind == "letters":
        return " ".join(chr(65 + int(c)) for c in rng.integers(0, 26, int(rng.integers(2, 4))))
    if kind == "numbers":
        return "".join(str(int(d)) for d in rng.integers(0, 10, int(rng.integers(2, 5))))
    # Pronounceable consonant-vowel word, 3-6 letters.
    cons, vow = "bcdfghklmnprstvz", "aeiou"
    return "".join(_pick(rng, vow if i % 2 else cons) for i in range(int(rng.integers(3, 7))))


def _canvas(rng: np.random.Generator, spec: tuple, lo: int, hi: int) -> tuple[int, int]:
    if spec[0] != "aspect":
        return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    if spec[1] == "square":
        side = int(rng.integers(lo, hi + 1))
        return side, side
    short = int(rng.integers(lo, int(hi / 1.5) + 1))
    long = int(rng.integers(math.ceil(short * 1.5), hi + 1))
    return (long, short) if spec[1] == "wide" else (short, long)


def _coord(rng: np.random.Generator, n: int, cell: int | None) -> int:
    """Centre coordinate along one axis: inside third `cell` (0-2), or anywhere off the edges."""
    a, b = (0.08 * n, 0.92 * n) if cell is None else \
        ((0.08 * n, n / 3 - 1), (n / 3 + 1, 2 * n / 3 - 1), (2 * n / 3 + 1, 0.92 * n))[cell]
    return int(rng.integers(math.ceil(a), math.floor(b) + 1))


def _scene(rng: np.random.Generator, spec: tuple, lo: int, hi: int) -> dict:
    """Random scene that realizes `spec`; the shapes the concept needs are drawn last (on top)."""
    k, a, b = (spec + (None, None))[:3]
    w, h = _canvas(rng, spec, lo, hi)
    # Partial slots (shape / color / size class / position) the concept needs; the rest is random.
    forced = {"color_shape": [{"shape": a, "color": b}], "pos_shape": [{"shape": a, "pos": b}],
              "size_shape": [{"shape": a, "size": b}], "pair": [{"shape": a}, {"shape": b}],
              "shape_bg": [{"shape": a}]}.get(k, [])
    if k in ("count_shape", "count_color"):  # exact counts: fillers must not match
        forced = [{"shape" if k == "count_shape" else "color": b} for _ in range(a)]
    no_shape, no_color = {b} if k == "count_shape" else set(), {b} if k == "count_color" else set()
    avoid_bg = {b} if k in ("color_shape", "count_color") else {a} if k == "text_color" else set()
    bg = spec[-1] if k in ("background", "shape_bg") else \
        _skewed(rng, [c for c in COLORS if c not in avoid_bg])
    base = max(1, len(forced))  # filler shapes only sometimes: each one realizes a dozen concepts more
    n = spec[1] if k == "nshapes" else base + (int(rng.integers(1, MAX_SHAPES - base + 1))
                                               if base < MAX_SHAPES and rng.random() < FILLER_P else 0)
    slots = [{} for _ in range(n - len(forced))] + forced
    shapes = []
    for slot in slots:
        shape = slot.get("shape") or _skewed(rng, [s for s in SHAPES if s not in no_shape])
        color = slot.get("color") or _skewed(rng, [c for c in COLORS if c != bg and c not in no_color])
        lo_f, hi_f = _SIZE_FRAC[slot.get("size") or _pick(rng, _SIZE_FRAC)]
        size = int(min(w, h) * rng.uniform(lo_f, hi_f))
        col, row = _CELL[slot["pos"]] if "pos" in slot else (None, None)
        shapes.append({"shape": shape, "color": color, "size": size,
                       "x": _coord(rng, w, col), "y": _coord(rng, h, row)})
    text = text_color = None
    if k in ("text", "text_color", "literal") or rng.random() < _TEXT_P:
        kind = spec[1] if k == "text" and spec[1] != "text" else _pick(rng, _TEXT_KINDS)
        text = spec[1] if k == "literal" else _random_text(rng, kind)
        text_color = spec[1] if k == "text_color" else _pick(rng, [c for c in COLORS if c != bg])
    return {"width": w, "height": h, "background": bg, "shapes": shapes, "text": text,
            "text_color": text_color, "font_size": _pick(rng, _FONT_SIZES),
            "text_anchor": (float(rng.random()), float(rng.random()))}


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: nothing to download


def _draw(sc: dict) -> Image.Image:
    img = Image.new("RGB", (sc["width"], sc["height"]), COLORS[sc["background"]])
    d = ImageDraw.Draw(img)
    for s in sc["shapes"]:
        x, y, r, fill = s["x"], s["y"], s["size"] / 2, COLORS[s["color"]]
        if s["shape"] == "circle":
            d.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif s["shape"] == "square":
            d.rectangle((x - r, y - r, x + r, y + r), fill=fill)
        elif s["shape"] == "triangle":
            d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
        elif s["shape"] == "star":
            rad = [r if i % 2 == 0 else 0.45 * r for i in range(10)]  # 5 tips, 5 inner corners
            d.polygon([(x + q * math.cos(math.pi * (i / 5 - 0.5)), y + q * math.sin(math.pi * (i / 5 - 0.5)))
                       for i, q in enumerate(rad)], fill=fill)
        else:  # cross
            t = max(1.0, r / 3)
            d.rectangle((x - r, y - t, x + r, y + t), fill=fill)
            d.rectangle((x - t, y - r, x + t, y + r), fill=fill)
    if sc["text"] is not None:
        # The scene's font size, shrunk until the text fits; placed by the stored anchor.
        fs = next((f for f in _FONT_SIZES[::-1] if f <= sc["font_size"]
                   and _font(f).getbbox(sc["text"])[2] <= sc["width"] - 2), _FONT_SIZES[0])
        _, _, tw, th = _font(fs).getbbox(sc["text"])
        ax, ay = sc["text_anchor"]
        d.text((int(ax * max(0, sc["width"] - tw)), int(ay * max(0, sc["height"] - th))),
               sc["text"], fill=COLORS[sc["text_color"]], font=_font(fs))
    return img


# Fixed encoder parameters: the same pixels always give the same bytes.
_ENCODER = {"jpg": ("JPEG", {"quality": 90, "subsampling": 2, "optimize": False}),
            "png": ("PNG", {"compress_level": 6}),
            "webp": ("WEBP", {"quality": 85, "method": 4, "lossless": False})}


def _encode(img: Image.Image, ext: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, _ENCODER[ext][0], **_ENCODER[ext][1])
    return buf.getvalue()


_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色",
       "orange": "橙色", "white": "白色", "black": "黑色", "circle": "圆形", "square": "正方形",
       "triangle": "三角形", "star": "星形", "cross": "十字", "top left": "左上角",
       "top right": "右上角", "bottom left": "左下角", "bottom right": "右下角", "center": "中间",
       "large": "大", "small": "小", "one": "一", "two": "两", "three": "三", "four": "四"}
_NUMBER = {1: "one", 2: "two", 3: "three", 4: "four"}
# Clause -> (English templates, Chinese templates); fields are filled from the same facts.
_TEMPLATES = {
    "open": (("{a} {bg} background with {items}.", "{items} on {a} {bg} background.",
              "An image of {items} against {a} {bg} backdrop.",
              "This picture shows {items} on a plain {bg} background.",
              "A simple drawing: {items} over {bg}."),
             ("{bg}背景上有{items}。", "图中是{bg}背景，上面画着{items}。", "一张{bg}底色的图片，包含{items}。",
              "在{bg}的背景上，可以看到{items}。", "这幅简单的图画在{bg}背景上画了{items}。")),
    "pos": (("The {c} {s} is in the {p}.", "There is {a} {c} {s} in the {p}.",
             "{a} {c} {s} sits toward the {p}."),
            ("{c}{s}位于{p}。", "{p}有一个{c}{s}。", "在{p}可以看到{c}{s}。")),
    "size": (("The {c} {s} is {z}.", "One {s} looks quite {z}.", "There is a {z} {c} {s}."),
             ("{c}{s}很{z}。", "其中一个{s}比较{z}。")),
    "wide": (("The image is wide.", "It is a wide, landscape-format picture."),
             ("这是一张横向的宽图。", "图片较宽。")),
    "tall": (("The image is tall and narrow.", "It is a tall, portrait-format picture."),
             ("这是一张竖向的长图。", "图片又高又窄。")),
    "square": (("The image is square.", "The picture has a square format."),
               ("图片是正方形的。", "这张图的宽高相等。")),
    "one": (("There is only one shape.", "Just a single shape is shown."),
            ("图中只有一个图形。", "画面里仅有一个图形。")),
    "count": (("There are {n} shapes in total.", "In all, {n} shapes are visible."),
              ("一共有{n}个图形。", "图中总共{n}个图形。")),
    "text": (('The text "{t}" is written in {c}.', 'It also shows "{t}" in {c} letters.',
              '{c} text reads "{t}".'),
             ("图中有{c}文字“{t}”。", "上面写着{c}的“{t}”。", "还可以看到{c}字样“{t}”。")),
}


def _an(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(items: list[str], sep: str, last: str) -> str:
    return items[0] if len(items) == 1 else sep.join(items[:-1]) + last + items[-1]


def _captions(rng: np.random.Generator, sc: dict, spec: tuple) -> tuple[str, str]:
    """English and Chinese captions of the same facts; clauses the primary concept needs are kept."""
    w, h, shapes, bg, k = sc["width"], sc["height"], sc["shapes"], sc["background"], spec[0]
    en: list[str] = []
    zh: list[str] = []

    def say(clause: str, zh_as_is: dict | None = None, **f: str) -> None:
        en_t, zh_t = _TEMPLATES[clause]
        line = _pick(rng, en_t).format(**f)
        en.append(line[0].upper() + line[1:])
        zh.append(_pick(rng, zh_t).format(**{**{key: _ZH.get(v, v) for key, v in f.items()},
                                              **(zh_as_is or {})}))

    groups = list(Counter((s["color"], s["shape"]) for s in shapes).items())
    groups = [groups[int(j)] for j in rng.permutation(len(groups))]
    en_items = [f"{_an(c)} {c} {s}" if n == 1 else f"{_NUMBER[n]} {c} {PLURAL[s]}"
                for (c, s), n in groups]
    zh_items = [f"{_ZH[_NUMBER[n]]}个{_ZH[c]}{_ZH[s]}" for (c, s), n in groups]
    say("open", {"items": _join(zh_items, "、", "和")}, a=_an(bg), bg=bg,
        items=_join(en_items, ", ", " and "))
    placed = [(s, region(s["x"], s["y"], w, h)) for s in shapes]
    placed = [(s, p) for s, p in placed if p and (k != "pos_shape" or (s["shape"], p) == spec[1:])]
    if placed and (k == "pos_shape" or rng.random() < 0.4):
        s, p = placed[int(rng.integers(len(placed)))]
        say("pos", a=_an(s["color"]), c=s["color"], s=s["shape"], p=p)
    sized = [(s, size_class(s["size"], w, h)) for s in shapes]
    sized = [(s, z) for s, z in sized if z != "medium" and (k != "size_shape" or (s["shape"], z) == spec[1:])]
    if sized and (k == "size_shape" or rng.random() < 0.3):
        s, z = sized[int(rng.integers(len(sized)))]
        say("size", c=s["color"], s=s["shape"], z=z)
    aspect = _aspect(w, h)
    if aspect and (k == "aspect" or rng.random() < 0.3):
        say(aspect)
    if k == "nshapes" or rng.random() < 0.25:
        say("one") if len(shapes) == 1 else say("count", n=_NUMBER[len(shapes)])
    if sc["text"] is not None:
        say("text", {"t": sc["text"]}, t=sc["text"], c=sc["text_color"])
    return " ".join(en), "".join(zh)


def _decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not decodable", which is the point
        return False


def _bad_slots(seed: int, shard: int, count: int, frac: float) -> dict[int, str]:
    """Sample index -> bad kind. At least one slot per kind once count >= 50, kinds in order."""
    if frac <= 0 or count == 0:
        return {}
    kinds = list(BAD_KINDS)
    n = min(count, max(math.ceil(count * frac - 1e-9), min(len(kinds), count // 10)))
    pos = np.sort(np.random.default_rng([seed, shard]).choice(count, n, replace=False))
    return {int(p): kinds[j % len(kinds)] for j, p in enumerate(pos)}


def _check(seed, shard, count, vocab, specs, opts: dict) -> None:
    lo, hi = opts["min_size"], opts["max_size"]
    tilted = any(sp[0] == "aspect" and sp[1] != "square" for sp in specs)
    for ok, name, value, fix in (
        (isinstance(seed, (int, np.integer)) and seed >= 0, "seed", seed, "use a non-negative int"),
        (isinstance(shard, (int, np.integer)) and 0 <= shard < 10**5, "shard", shard,
         "use an int in [0, 99999] (keys are shard:05d + index:06d)"),
        (isinstance(count, (int, np.integer)) and 0 <= count <= 10**6, "count", count, "use an int in [0, 10**6]"),
        (bool(vocab), "vocab", vocab, "pass load_vocab('configs/vocab/tiny-concepts.txt')"),
        (0 <= opts["bad_fraction"] <= 1, "bad_fraction", opts["bad_fraction"], "use a fraction in [0, 1]"),
        (0 <= opts["zh_fraction"] <= 1, "zh_fraction", opts["zh_fraction"], "use a fraction in [0, 1]"),
        (opts["zipf_s"] >= 0, "zipf_s", opts["zipf_s"], "use an exponent >= 0 (0 = uniform)"),
        (24 <= lo <= hi, "min_size/max_size", (lo, hi), "need 24 <= min_size <= max_size"),
        (not tilted or int(hi / 1.5) >= lo, "max_size", hi,
         f"the vocabulary's wide/tall concepts need max_size >= 1.5 * min_size ({lo})"),
    ):
        if not ok:
            raise ValueError(f"synth_samples: {name}={value!r} is invalid; {fix}")


def synth_samples(seed: int, shard: int, count: int, vocab: list[str], *,
                  bad_fraction: float = 0.02, min_size: int = 48, max_size: int = 160,
                  zh_fraction: float = 0.3, zipf_s: float = ZIPF_S) -> Iterator[dict]:
    """Yield `count` webdataset samples of shard `shard`: {"__key__", "jpg"|"png"|"webp", "txt", "json"}.

    Keys are f"{shard:05d}{index:06d}". Sample i is drawn from default_rng([seed, shard, i]), so it
    does not depend on other samples; only which indices are bad depends on `count`.
    json meta: width, height, background, shapes [{shape, color, size, x, y}], text, text_color,
    concepts (vocab indices realized, primary first), lang, caption_en, caption_zh, bad (None or a
    BAD_KINDS key). For bad samples the meta describes the intended scene; the payload is damaged
    as `bad` says, and BAD_KINDS[bad] is the reject reason the filter must give it.
    """
    specs = [_parse(p) for p in vocab]
    opts = {"bad_fraction": bad_fraction, "min_size": min_size, "max_size": max_size,
            "zh_fraction": zh_fraction, "zipf_s": zipf_s}
    _check(seed, shard, count, vocab, specs, opts)  # eagerly, not at the first next()
    return _generate(seed, shard, count, vocab, specs, **opts)


def _generate(seed, shard, count, vocab, specs, *, bad_fraction, min_size, max_size,
              zh_fraction, zipf_s) -> Iterator[dict]:
    index: dict[tuple, list[int]] = {}
    for j, sp in enumerate(specs):
        index.setdefault(sp, []).append(j)
    cdf = np.cumsum(np.arange(1, len(vocab) + 1, dtype=np.float64) ** -float(zipf_s))
    cdf /= cdf[-1]
    fmt_cdf = np.cumsum(_FORMAT_P)
    bad_at = _bad_slots(seed, shard, count, bad_fraction)
    for i in range(count):
        rng = np.random.default_rng([seed, shard, i])
        primary = min(int(np.searchsorted(cdf, rng.random(), side="right")), len(vocab) - 1)
        lang = "zh" if rng.random() < zh_fraction else "en"
        ext = _FORMATS[min(int(np.searchsorted(fmt_cdf, rng.random(), side="right")), 2)]
        sc = _scene(rng, specs[primary], min_size, max_size)
        truths = _truths(sc)
        if specs[primary] not in truths:  # a bug in _scene, never a data condition
            raise AssertionError(f"scene does not realize {vocab[primary]!r}: {sc}")
        concepts = [primary] + sorted(j for sp in truths for j in index.get(sp, ()) if j != primary)
        en, zh = _captions(rng, sc, specs[primary])
        txt = (zh if lang == "zh" else en).encode("utf-8")
        kind = bad_at.get(i)
        if kind == "corrupt_image":
            ext, payload = "jpg", rng.bytes(int(rng.integers(256, 2048)))
            while _decodes(payload):  # astronomically rare, but the kind must hold
                payload = rng.bytes(len(payload))
        elif kind == "truncated_image":
            full = _encode(_draw(sc), "jpg")
            sos = full.find(b"\xff\xda")
            # Cut inside the entropy-coded data: the header parses, decoding runs out of bytes.
            ext, payload = "jpg", full[:max(len(full) // 2, sos + (len(full) - sos) // 2)]
        elif kind == "tiny_image":
            payload = _encode(Image.new("RGB", (1, 1), COLORS[sc["background"]]), ext)
        else:
            payload = _encode(_draw(sc), ext)
            if kind == "empty_caption":
                txt = b""
            elif kind == "non_utf8_caption":
                txt = NON_UTF8_CAPTION
        meta = {k: sc[k] for k in ("width", "height", "background", "shapes", "text", "text_color")}
        meta.update(concepts=concepts, lang=lang, caption_en=en, caption_zh=zh, bad=kind)
        yield {"__key__": f"{shard:05d}{i:06d}", ext: payload, "txt": txt,
               "json": json.dumps(meta, ensure_ascii=False, sort_keys=True,
                                  separators=(",", ":")).encode("utf-8")}


# Public handles for sibling generators (synth_stages.py) that draw and word the same scenes.
ZH_WORDS = _ZH
NUMBER_WORDS = _NUMBER


def draw_scene(scene: dict) -> Image.Image:
    """Render a scene dict (width, height, background, shapes, text, text_color, font_size, text_anchor)."""
    return _draw(scene)


def encode_image(img: Image.Image, ext: str) -> bytes:
    """Encode with the fixed codec settings used by synth_samples (ext: jpg, png or webp)."""
    return _encode(img, ext)
