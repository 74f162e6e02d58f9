"""Header sizes, the resize rule, the tokenizer and the one sequence builder (encode == lengths)."""
from __future__ import annotations

import io
import json
import math
import random
import struct

import numpy as np
import pytest
from PIL import Image

from ovpipe.packing.images import HeaderError, VisionGeometry, image_size, image_tokens, smart_resize
from ovpipe.packing.sequence import caption_turns, encode, lengths, normalize_turns
from ovpipe.packing.tokenizer import SPECIAL, load_tokenizer, train_tokenizer

EN = ("the a photo of cat dog sitting on red wooden table next to window with bright light in "
      "afternoon two people walking along beach while sun sets behind mountains").split()
ZH = "一只猫坐在红色的木桌上旁边是明亮窗户两个人沿着海滩散步太阳落山后面有群"


def _en(rng, n):
    return " ".join(rng.choice(EN) for _ in range(n))


def _zh(rng, n):
    return "".join(rng.choice(ZH) for _ in range(n))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    rng = random.Random(0)
    corpus = [_en(rng, 20) for _ in range(300)] + [_zh(rng, 30) for _ in range(300)]
    return load_tokenizer(train_tokenizer(corpus, str(tmp_path_factory.mktemp("tok")), vocab_size=600))


# ---------------------------------------------------------------- image headers

def _save(im, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


VARIANTS = [
    ("JPEG", "RGB", {}),
    ("JPEG", "RGB", {"progressive": True}),
    ("JPEG", "L", {"exif": b"Exif\x00\x00" + b"\x00" * 200, "icc_profile": b"\x01" * 70000}),  # big APPn
    ("JPEG", "CMYK", {}),
    ("PNG", "RGBA", {}),
    ("PNG", "P", {}),
    ("WEBP", "RGB", {}),                     # VP8
    ("WEBP", "RGB", {"lossless": True}),     # VP8L
    ("WEBP", "RGBA", {}),                    # VP8X (alpha)
    ("GIF", "P", {}),
    ("BMP", "RGB", {}),
    ("TIFF", "RGB", {}),                     # PIL fallback
]


@pytest.mark.parametrize("fmt,mode,kw", VARIANTS, ids=[f"{f}-{m}-{'-'.join(k)}" for f, m, k in VARIANTS])
def test_image_size_matches_pil(fmt, mode, kw):
    rng = random.Random(hash((fmt, mode, tuple(kw))) & 0xFFFF)
    sizes = [(1, 1), (1, 977), (3001, 2), (16383 if fmt == "WEBP" else 5000, 3)]
    sizes += [(rng.randint(1, 1200), rng.randint(1, 1200)) for _ in range(12)]
    for w, h in sizes:
        data = _save(Image.new(mode, (w, h)), fmt, **kw)
        assert image_size(data) == Image.open(io.BytesIO(data)).size == (w, h), (fmt, w, h)


def test_bmp_top_down_and_os2_headers():
    data = bytearray(_save(Image.new("RGB", (37, 21)), "BMP"))
    data[22:26] = struct.pack("<i", -21)  # top-down rows
    assert image_size(bytes(data)) == Image.open(io.BytesIO(bytes(data))).size == (37, 21)
    # OS/2 1.x: 12-byte core header with 16-bit sides, 24-bit pixels, rows padded to 4 bytes
    w, h = 5, 3
    pixels = (b"\x00" * (w * 3) + b"\x00" * (-(w * 3) % 4)) * h
    os2 = b"BM" + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26) + struct.pack("<IHHHH", 12, w, h, 1, 24) + pixels
    assert image_size(os2) == Image.open(io.BytesIO(os2)).size == (w, h)


def test_jpeg_junk_between_segments_is_skipped_like_pil():
    data = _save(Image.new("RGB", (77, 55)), "JPEG")
    end = 4 + struct.unpack(">H", data[4:6])[0]  # after the first segment (APP0)
    junk = data[:end] + b"\x00\x13\x37" + data[end:]
    assert image_size(junk) == Image.open(io.BytesIO(junk)).size == (77, 55)


def test_exif_orientation_reports_stored_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: displayed as 30x100
    data = _save(Image.new("RGB", (100, 30)), "JPEG", exif=exif)
    assert image_size(data) == Image.open(io.BytesIO(data)).size == (100, 30)
    assert image_tokens(100, 30) == image_tokens(30, 100)  # so the loader may transpose freely


def _header_len(data: bytes) -> int:
    """Bytes image_size needs (found by bisection on prefixes)."""
    for k in range(len(data) + 1):
        try:
            image_size(data[:k])
            return k
        except HeaderError:
            continue
    raise AssertionError("never parsed")


@pytest.mark.parametrize("fmt,mode,kw", VARIANTS[:-1], ids=[f"{f}-{m}" for f, m, _ in VARIANTS[:-1]])
def test_truncated_headers_raise(fmt, mode, kw):
    data = _save(Image.new(mode, (123, 45)), fmt, **kw)
    need = _header_len(data)
    assert need <= (72000 if "icc_profile" in kw else 1024)  # header only, never the pixel data
    for k in range(need):  # every shorter prefix fails cleanly, never a struct.error/IndexError
        with pytest.raises(HeaderError):
            image_size(data[:k])


def test_corrupt_headers_raise():
    jpeg = _save(Image.new("RGB", (8, 8)), "JPEG")
    png = _save(Image.new("RGB", (8, 8)), "PNG")
    webp = _save(Image.new("RGB", (8, 8)), "WEBP")
    cases = {
        "no frame": jpeg[:2] + b"\x00garbage" * 4,
        "invalid marker": jpeg[:2] + b"\xff\x10\x00\x04" + jpeg[2:],
        "scan before frame": b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 20,
        "zero length": b"\xff\xd8\xff\xe0\x00\x00" + b"\x00" * 20,
        "IHDR": png[:12] + b"XXXX" + png[16:],
        "VP8 start code": webp[:23] + b"\x00\x00\x00" + webp[26:],
        "unknown first chunk": webp[:12] + b"ABCD" + webp[16:],
        "zero side": b"GIF89a\x00\x00\x05\x00" + b"\x00" * 10,
        "unknown format": b"definitely not an image, just some text" * 3,
        "empty": b"",
    }
    for name, data in cases.items():
        with pytest.raises(HeaderError) as exc:
            image_size(data)
        assert str(exc.value), name
    assert issubclass(HeaderError, ValueError)


# ---------------------------------------------------------------- resize rule

def test_smart_resize_invariants():
    rng = random.Random(1)
    sizes = [(rng.randint(1, 20000), rng.randint(1, 20000)) for _ in range(3000)]
    sizes += [(rng.randint(1, 60), rng.randint(1, 60)) for _ in range(500)]
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError, match="aspect"):
                smart_resize(h, w)
            continue
        rh, rw = smart_resize(h, w)
        assert rh % 28 == 0 and rw % 28 == 0 and rh >= 28 and rw >= 28
        assert 3136 <= rh * rw <= 2_560_000, (h, w, rh, rw)
        assert smart_resize(w, h) == (rw, rh)  # sides treated alike: EXIF rotation keeps the count
        if min(h, w) >= 280:  # aspect kept up to the 28-px rounding
            assert abs(np.log(rh / rw) - np.log(h / w)) < 0.25


def test_smart_resize_matches_float_formula():
    """The integer-exact scaling equals the textbook float formula away from float ties."""
    rng = random.Random(3)
    for _ in range(3000):
        h, w = rng.randint(1, 30000), rng.randint(1, 30000)
        if max(h, w) / min(h, w) > 200:
            continue
        rh, rw = max(28, round(h / 28) * 28), max(28, round(w / 28) * 28)
        if rh * rw > 2_560_000:
            beta = math.sqrt(h * w / 2_560_000)
            xs = (h / beta / 28, w / beta / 28)
            want = tuple(max(28, math.floor(x) * 28) for x in xs)
        elif rh * rw < 3136:
            beta = math.sqrt(3136 / (h * w))
            xs = (h * beta / 28, w * beta / 28)
            want = tuple(math.ceil(x) * 28 for x in xs)
        else:
            xs, want = (), (rh, rw)
        if any(abs(x - round(x)) < 1e-9 for x in xs):
            continue
        assert smart_resize(h, w) == want, (h, w)


def test_smart_resize_cases():
    assert smart_resize(448, 448) == (448, 448)
    assert smart_resize(1000, 1000) == (1008, 1008)
    h, w = smart_resize(10000, 8000)  # huge: scaled down under max_pixels, close to it
    assert h * w <= 2_560_000 and h * w > 0.9 * 2_560_000 and h > w
    assert smart_resize(10, 10) == (56, 56)  # tiny: scaled up to min_pixels
    assert smart_resize(3, 30) == (28, 196)  # ceil(30 * sqrt(3136 / 90) / 28) * 28
    with pytest.raises(ValueError, match="aspect"):
        smart_resize(10, 2500)
    with pytest.raises(ValueError):
        smart_resize(0, 10)
    geo = VisionGeometry()
    assert image_tokens(448, 448, geo) == 256
    assert image_tokens(1000, 1000, geo) == 36 * 36
    assert image_tokens(1, 1, geo) == 4
    small = VisionGeometry(patch_size=14, merge_size=2, min_pixels=784, max_pixels=784 * 16, max_aspect_ratio=50)
    assert image_tokens(5000, 5000, small) == 16


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_round_trip_and_specials(tok, tmp_path):
    for text in ["the cat sat on the table", "一只猫坐在桌上。", "mixed 中文 and English\n\n  spaces  ", "emoji 🐱!"]:
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    for s in SPECIAL.values():
        assert len(tok(s, add_special_tokens=False).input_ids) == 1
    # deterministic: same texts -> byte-identical tokenizer.json
    rng = random.Random(5)
    corpus = [_en(rng, 10) for _ in range(50)] + [_zh(rng, 10) for _ in range(50)]
    a = train_tokenizer(corpus, str(tmp_path / "a"), vocab_size=400)
    b = train_tokenizer(corpus, str(tmp_path / "b"), vocab_size=400)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert "<|im_start|>" in json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())["chat_template"]
    assert load_tokenizer(a).get_vocab() == load_tokenizer(b).get_vocab()


def test_load_tokenizer_without_specials_fails_clearly(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                                     special_tokens=["<|endoftext|>"]))
    PreTrainedTokenizerFast(tokenizer_object=tk).save_pretrained(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match=r"lacks special tokens.*<\|im_start\|>"):
        load_tokenizer(str(tmp_path / "plain"))
    with pytest.raises(FileNotFoundError):
        load_tokenizer(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- sequences

def _random_conversation(rng):
    seen = []

    def text():
        if seen and rng.random() < 0.15:  # repeated pieces within a sample
            return rng.choice(seen)
        seen.append(_text())
        return seen[-1]

    def _text():
        kind = rng.random()
        if kind < 0.4:
            s = _en(rng, rng.randint(0, 30))
        elif kind < 0.8:
            s = _zh(rng, rng.randint(0, 40))
        else:
            s = _en(rng, 3) + rng.choice(["\n", "  ", "\n\n", " <|im_end|> ", "🐱", "<|image_pad|>"]) + _zh(rng, 5)
        return rng.choice(["", " ", "\n"]) + s if rng.random() < 0.2 else s

    turns = [{"role": "system", "content": text()}] if rng.random() < 0.3 else []
    n_images = 0
    for _ in range(rng.randint(1, 3)):
        parts = [text()]
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3]) if n_images < 3 else 0):
            parts.append(text())
            n_images += 1
        turns.append({"role": "user", "content": "<image>".join(parts)})
        turns.append({"role": "assistant", "content": text()})
    while n_images > 3:  # cap at 3 images: fold extra placeholders into text
        for t in turns:
            if n_images > 3 and "<image>" in t["content"]:
                t["content"] = t["content"].replace("<image>", " ", 1)
                n_images -= 1
    return turns, [rng.choice([1, 4, 64, rng.randint(1, 5000)]) for _ in range(n_images)]


def test_lengths_equal_encode_on_random_conversations(tok):
    rng = random.Random(2)
    samples = [_random_conversation(rng) for _ in range(300)]
    assert {len(im) for _, im in samples} == {0, 1, 2, 3}
    lens = lengths(samples, tok)
    assert lens.dtype == np.int64
    ids = {name: tok.convert_tokens_to_ids(s) for name, s in SPECIAL.items()}
    for (turns, images), n in zip(samples, lens):
        enc = encode(turns, images, tok)
        assert enc.input_ids.dtype == np.int32 and enc.loss_mask.dtype == np.uint8
        assert len(enc.input_ids) == len(enc.loss_mask) == n
        assert enc.image_token_counts == images
        # image pads: exactly n_i per image, each framed by vision start/end
        assert int((enc.input_ids == ids["image_pad"]).sum()) == sum(images)
        assert int((enc.input_ids == ids["vision_start"]).sum()) == len(images)
        # the whole sequence is the chat template with each image's single pad expanded
        rendered = tok.apply_chat_template(turns, tokenize=False)
        pad_block = SPECIAL["vision_start"] + SPECIAL["image_pad"] + SPECIAL["vision_end"]
        pieces = rendered.split(pad_block)
        expected = pieces[0] + "".join(SPECIAL["vision_start"] + SPECIAL["image_pad"] * k + SPECIAL["vision_end"] + p
                                       for k, p in zip(images, pieces[1:]))
        assert tok.decode(enc.input_ids.tolist()) == expected
        # loss mask: exactly each assistant content + its <|im_end|>, as contiguous runs
        assistant = [t["content"] for t in turns if t["role"] == "assistant"]
        assert tok.decode(enc.input_ids[enc.loss_mask == 1].tolist()) == "".join(c + "<|im_end|>" for c in assistant)
        runs = np.flatnonzero(np.diff(np.concatenate([[0], enc.loss_mask, [0]]).astype(np.int8)) == 1)
        assert len(runs) == len(assistant)
        assert int(((enc.input_ids == ids["im_end"]) & (enc.loss_mask == 1)).sum()) == len(assistant)


def test_repeated_pieces_counted_each_time(tok):
    turns = [{"role": "user", "content": "<image>\nhow many?"}, {"role": "assistant", "content": "two"},
             {"role": "user", "content": "how many?"}, {"role": "assistant", "content": "two"},
             {"role": "user", "content": "\n<image>\nhow many?"}, {"role": "assistant", "content": "two"}]
    enc = encode(turns, [4, 9], tok)
    assert lengths([(turns, [4, 9]), (turns, [4, 9])], tok).tolist() == [len(enc.input_ids)] * 2
    assert tok.decode(enc.input_ids[enc.loss_mask == 1].tolist()) == "two<|im_end|>" * 3


def test_placeholder_count_mismatch(tok):
    turns = [{"role": "user", "content": "<image><image>a<image>"}, {"role": "assistant", "content": "b"}]
    for fn in (lambda: encode(turns, [4, 4], tok), lambda: lengths([(turns, [4, 4])], tok)):
        with pytest.raises(ValueError, match=r"^3 <image> placeholders but 2 images$"):
            fn()
    with pytest.raises(ValueError, match="0 <image> placeholders but 1 images"):
        lengths([(caption_turns("x"), [1]), ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                             [1])], tok)


def test_caption_turns_and_structure(tok):
    turns = caption_turns("A cat on a table.", "Describe the image.")
    assert turns == [{"role": "user", "content": "<image>Describe the image."},
                     {"role": "assistant", "content": "A cat on a table."}]
    enc = encode(turns, [9], tok)
    assert enc.input_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert enc.input_ids[-2] == tok.convert_tokens_to_ids("<|im_end|>") and enc.loss_mask[-2] == 1
    assert enc.loss_mask[-1] == 0  # the newline after <|im_end|>
    assert lengths([], tok).shape == (0,)


def test_normalize_turns():
    llava = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."},
             {"from": "human", "value": "Color?"}, {"from": "gpt", "value": "Red."}]
    out = normalize_turns(llava)
    assert out[0] == {"role": "user", "content": "<image>\nWhat is it?"} and out[3]["role"] == "assistant"
    assert normalize_turns({"conversations": llava}) == out
    assert normalize_turns(out) == out
    bad = {
        "empty": [],
        "unknown speaker": [{"from": "bot", "value": "x"}],
        "unknown role": [{"role": "robot", "content": "x"}],
        "no assistant": [{"role": "user", "content": "x"}],
        "must be a string": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}],
        "neither": [{"speaker": "user"}],
        "assistant turn": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "<image>"}],
    }
    for reason, obj in bad.items():
        with pytest.raises(ValueError, match=reason):
            normalize_turns(obj)
    with pytest.raises(ValueError, match="must be a list"):
        normalize_turns("hello")


def test_word_cache_reproduces_the_tokenizer(tok):
    """The fast path (ids per pre-token) must give exactly the tokenizer's own ids, or stay off."""
    from tokenizers import Tokenizer

    from ovpipe.packing.sequence import _encoder

    enc = _encoder(tok)
    assert enc.words.enabled, "our trained tokenizer should take the fast path"
    raw = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    raw.encode_special_tokens = True
    rng = random.Random(7)
    tails = ["", "  ", "\n\n", " 3.5%!", "—“x”"]
    texts = [" ".join(rng.choice(EN) for _ in range(rng.randint(1, 40))) + rng.choice(tails)
             + "".join(rng.choice(ZH) for _ in range(rng.randint(0, 20))) for _ in range(500)]
    texts += ["", " ", "\t\n ", "a  b   c", "<|im_end|>", "ｆｕｌｌ ｗｉｄｔｈ", "e\u0301", "x'll 'd 've"]
    direct = [e.ids for e in raw.encode_batch(texts, add_special_tokens=False)]
    assert enc.encode(texts) == direct
    assert list(enc.count(texts)) == [len(d) for d in direct]
