"""A bad-input corpus, generated (never checked in): every kind of broken or odd sample we can think of, in
every input format the README accepts (webdataset tars, parquet), for each dataset (curated, stage 1, sft).

    python -m ovpipe.verify.badinput OUT [--seed N] [--good N]

writes OUT/{curated,stage1,sft}/ (shards) and OUT/expected.json: per dataset, every key a reader can see
(`keys`), what was done to each bad one (`kinds`), and the keys that sit after the cut of a shard that ends
early (`unreadable`: no reader can name them; the shard is reported instead). Good samples are mixed in
(`--good` per shard) so every stage still has something to train on.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import struct
import tarfile
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

WORDS = ("red", "blue", "green", "circle", "square", "triangle", "small", "large", "two", "three", "left", "right")


# ---------------------------------------------------------------- images

def _pixels(rng, w: int, h: int) -> np.ndarray:
    base = rng.integers(0, 255, 3)
    img = np.broadcast_to(base, (h, w, 3)).astype(np.int16) + rng.integers(-30, 30, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def good_image(rng, fmt: str = "jpg", w: int = 64, h: int = 64) -> bytes:
    return _save(Image.fromarray(_pixels(rng, w, h)), {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 20000) -> bytes:
    """A 1-bit gray PNG of side × side pixels (400M at the default) that compresses to ~50 KB."""
    row = b"\0" + b"\0" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _broken_body(data: bytes, keep: int, rng) -> bytes:
    """The first `keep` bytes (the header) intact, the rest overwritten with noise, length unchanged."""
    return data[:keep] + rng.integers(0, 256, len(data) - keep, dtype=np.uint8).tobytes()


def image_kinds(rng) -> dict[str, tuple[str, bytes]]:
    """kind -> (member extension, bytes). The decoders must reject, or accept and convert, every one."""
    jpg, png, webp = good_image(rng, "jpg", 96, 64), good_image(rng, "png", 64, 96), good_image(rng, "webp", 80, 80)
    sos = jpg.index(b"\xff\xda")
    out = {
        "corrupt_bytes": ("jpg", rng.integers(0, 256, 700, dtype=np.uint8).tobytes()),
        "empty_image": ("jpg", b""),
        "jpg_truncated": ("jpg", jpg[: len(jpg) // 2]),
        "png_truncated": ("png", png[: len(png) // 2]),
        "webp_truncated": ("webp", webp[: len(webp) // 2]),
        "jpg_body_broken": ("jpg", _broken_body(jpg, sos + 14, rng)),
        "png_body_broken": ("png", _broken_body(png, 41, rng)),  # IHDR whole, IDAT garbage
        "webp_body_broken": ("webp", _broken_body(webp, 30, rng)),
        "jpg_header_only": ("jpg", jpg[: sos + 14]),
        "decompression_bomb": ("png", bomb_png()),
        "png_as_jpg": ("jpg", png),  # the member's name lies about the format
        "one_pixel": ("png", good_image(rng, "png", 1, 1)),
        "extreme_wide": ("png", good_image(rng, "png", 4000, 8)),
        "extreme_tall": ("png", good_image(rng, "png", 8, 4000)),
    }
    im = Image.fromarray(_pixels(rng, 96, 48))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° on display
    out["exif_rotated"] = ("jpg", _save(im, "JPEG", exif=exif.tobytes()))
    out["cmyk_jpg"] = ("jpg", _save(im.convert("CMYK"), "JPEG"))
    out["gray16_png"] = ("png", _save(Image.fromarray((rng.integers(0, 65535, (40, 40))).astype(np.uint16)), "PNG"))
    pal = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out["palette_transparency_png"] = ("png", _save(pal, "PNG", transparency=0))
    out["rgba_webp"] = ("webp", _save(im.convert("RGBA"), "WEBP"))
    frames = [Image.fromarray(_pixels(rng, 48, 48)) for _ in range(3)]
    out["animated_png"] = ("png", _save(frames[0], "PNG", save_all=True, append_images=frames[1:]))
    out["animated_webp"] = ("webp", _save(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    out["gif_member"] = ("gif", _save(frames[0], "GIF"))  # not an accepted extension: no image
    return out


# ---------------------------------------------------------------- captions and conversations

def caption(rng, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS, n))


CAPTION_KINDS = {
    "caption_empty": b"",
    "caption_blank": b"   \n\t ",
    "caption_not_utf8": b"\xff\xfe a red \xc3\x28 circle",
    "caption_nul": "a red circle\x00 on the left side".encode(),
    "caption_200kb": ("red circle " * 19000).encode(),
    "caption_mixed_script": "A red 圆 круг دائرة on the left side".encode(),
    "caption_emoji_only": "🔴🟦🔺🎉🎉".encode(),
    "caption_control_chars": "a red\x1b[31m circle\x07 on the left".encode(),
    "caption_surrogate_escape": b"a red circle \xed\xa0\x80 left",
}


def conversation_kinds(rng) -> dict[str, tuple[object, int]]:
    """kind -> (json member value: bytes or a JSON-able object, number of images the sample carries)."""
    ans = caption(rng)
    ok = [{"role": "user", "content": "<image>\nWhat is shown?"}, {"role": "assistant", "content": ans}]
    return {
        "no_assistant_turn": ({"conversation": [{"role": "user", "content": "<image>\nhi"}]}, 1),
        "only_assistant": ({"conversation": [{"role": "assistant", "content": ans}]}, 1),
        "two_placeholders_one_image": ({"conversation": [{"role": "user", "content": "<image><image> compare"},
                                                         {"role": "assistant", "content": ans}]}, 1),
        "no_placeholder": ({"conversation": [{"role": "user", "content": "what?"},
                                             {"role": "assistant", "content": ans}]}, 1),
        "placeholder_no_image": ({"conversation": ok}, 0),
        "empty_conversation": ({"conversation": []}, 1),
        "no_conversation_key": ({"scene": "x"}, 1),
        "conversation_not_list": ({"conversation": "user: hi"}, 1),
        "turn_not_dict": ({"conversation": ["<image>", ans]}, 1),
        "unknown_role": ({"conversation": [{"role": "narrator", "content": "<image>"},
                                           {"role": "assistant", "content": ans}]}, 1),
        "content_not_text": ({"conversation": [{"role": "user", "content": ["<image>"]},
                                               {"role": "assistant", "content": 3}]}, 1),
        "assistant_empty": ({"conversation": [{"role": "user", "content": "<image>"},
                                              {"role": "assistant", "content": "  "}]}, 1),
        "json_invalid": (b"{\"conversation\": [", 1),
        "json_not_utf8": (b"{\"conversation\": \"\xff\"}", 1),
        "json_not_object": (b"[1, 2, 3]", 1),
        "llava_from_value": ({"conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                {"from": "gpt", "value": ans}]}, 1),
        "two_images": ({"conversation": [{"role": "user", "content": "<image> and <image>?"},
                                         {"role": "assistant", "content": ans}]}, 2),
        "long_answer": ({"conversation": [{"role": "user", "content": "<image>"},
                                          {"role": "assistant", "content": "red " * 5000}]}, 1),
        "emoji_mixed_script": ({"conversation": [{"role": "user", "content": "<image>\n这是什么? 🤔"},
                                                 {"role": "assistant", "content": "круг 🔴 circle"}]}, 1),
    }


def good_conversation(rng) -> dict:
    return {"conversation": [{"role": "user", "content": "<image>\nWhat is shown?"},
                             {"role": "assistant", "content": caption(rng)}]}


# ---------------------------------------------------------------- shard writers (deliberately raw: duplicates allowed)

def _tar(path: str, members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    return data


def _json_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value, ensure_ascii=False).encode()


class _Dataset:
    """Collects what a dataset's shards hold: keys readers can see, the kind of each bad one, cut keys."""

    def __init__(self, root: str, name: str):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)
        self.keys: list[str] = []
        self.kinds: dict[str, str] = {}
        self.unreadable: list[str] = []

    def add(self, key: str, kind: str = "good") -> str:
        if key not in self.keys:
            self.keys.append(key)
        if kind != "good":
            self.kinds[key] = kind
        return key

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def summary(self) -> dict:
        return {"keys": sorted(set(self.keys)), "kinds": dict(sorted(self.kinds.items())),
                "unreadable": sorted(self.unreadable)}


def _common_tar_shards(ds: _Dataset, rng, prefix: str, good_members, good: int) -> None:
    """Shards every dataset gets: one cut mid-member, one where nothing survives, an empty one, a
    zero-byte file, one with duplicate keys (within it, and of a key in shard 00000)."""
    cut: list[tuple[str, bytes]] = []
    keys = [f"{prefix}-cut-{i:03d}" for i in range(6)]
    for k in keys:
        cut += [(f"{k}.{ext}", data) for ext, data in good_members(rng)]
    data = _tar(ds.path("00002.tar"), cut)
    # Cut in the middle of the 4th sample's first member's data: samples 0-2 readable, 3 incomplete.
    offset = _member_offsets(data)[f"{keys[3]}.{good_members(rng)[0][0]}"]
    with open(ds.path("00002.tar"), "wb") as f:
        f.write(data[: offset + 700])
    for k in keys[:4]:
        ds.add(k, "good" if k != keys[3] else "cut_mid_member")
    ds.unreadable += keys[4:]
    _tar(ds.path("00003.tar"), [(f"{ds.add(f'{prefix}-dead-{i:03d}', 'corrupt_bytes')}.jpg",
                                 rng.integers(0, 256, 300, dtype=np.uint8).tobytes()) for i in range(5)])
    _tar(ds.path("00004.tar"), [])  # only the end-of-archive blocks
    open(ds.path("00005.tar"), "wb").close()  # zero bytes
    dup = [(f"{prefix}-good-000000.{ext}", data) for ext, data in good_members(rng)]  # also in shard 00000
    for i in range(good):
        dup += [(f"{ds.add(f'{prefix}-dupshard-{i:03d}')}.{ext}", data) for ext, data in good_members(rng)]
    dup += [(f"{prefix}-dupshard-000.{ext}", data) for ext, data in good_members(rng)]  # again, apart
    rep = f"{prefix}-repeat-member"
    ds.add(rep, "duplicate_member")
    dup += [(f"{rep}.{ext}", data) for ext, data in good_members(rng)] + [(f"{rep}.{good_members(rng)[0][0]}", b"x")]
    _tar(ds.path("00006.tar"), dup)
    ds.kinds[f"{prefix}-good-000000"] = "duplicate_across_shards"
    ds.kinds[f"{prefix}-dupshard-000"] = "duplicate_within_shard"


def _member_offsets(data: bytes) -> dict[str, int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m.offset_data for m in tar.getmembers()}


def write_curated(root: str, rng, good: int) -> dict:
    ds = _Dataset(root, "curated")

    def members(r):
        return [("jpg", good_image(r, "jpg")), ("txt", caption(r).encode()), ("json", b'{"src": "good"}')]

    m = [(f"{ds.add(f'cur-good-{i:06d}')}.{e}", d) for i in range(good) for e, d in members(rng)]
    for kind, (ext, data) in image_kinds(rng).items():
        m += [(f"{ds.add(f'cur-img-{kind}', kind)}.{ext}", data), (f"cur-img-{kind}.txt", caption(rng).encode())]
    for kind, text in CAPTION_KINDS.items():
        m += [(f"{ds.add(f'cur-cap-{kind}', kind)}.jpg", good_image(rng)), (f"cur-cap-{kind}.txt", text)]
    m += [(f"{ds.add('cur-no-image', 'missing_image')}.txt", caption(rng).encode())]
    m += [(f"{ds.add('cur-bad-json', 'bad_metadata')}.jpg", good_image(rng)), ("cur-bad-json.txt", b"red circle left"),
          ("cur-bad-json.json", b"{not json")]
    m += [(f"{ds.add('dir/cur-in-folder')}.jpg", good_image(rng)), ("dir/cur-in-folder.txt", caption(rng).encode())]
    _tar(ds.path("00000.tar"), m)
    _tar(ds.path("00001.tar"), [(f"{ds.add(f'cur-more-{i:06d}')}.{e}", d) for i in range(good)
                                for e, d in members(rng)])
    _common_tar_shards(ds, rng, "cur", members, good)
    # parquet: HF Image structs, nulls, wrong types, a missing column, not parquet at all, no rows
    ids = [ds.add(f"cur-pq-good-{i:04d}") for i in range(good)]
    rows = {"id": ids + [None, ds.add("cur-pq-null-image", "null_image"), ds.add("cur-pq-null-caption", "null_caption"),
                         ds.add("cur-pq-bmp", "unsupported_format"), ids[0]],
            "image": [{"bytes": good_image(rng, "png"), "path": None} for _ in ids]
            + [{"bytes": good_image(rng), "path": None}, None, {"bytes": good_image(rng), "path": None},
               {"bytes": _save(Image.fromarray(_pixels(rng, 20, 20)), "BMP"), "path": None},
               {"bytes": good_image(rng), "path": None}],
            "caption": [caption(rng) for _ in ids] + ["null id", "null image", None, "bmp image", "dup id"]}
    ds.add("row-%d" % good, "null_id")  # the reader names a row without an id by its position
    ds.kinds[ids[0]] = "duplicate_within_shard"
    pq.write_table(pa.table(rows), ds.path("00007.parquet"))
    pq.write_table(pa.table({"id": pa.array([ds.add(f"cur-pq-intcap-{i}", "caption_wrong_type") for i in range(3)]),
                             "image": [good_image(rng) for _ in range(3)], "caption": [1, 2, 3]}),
                   ds.path("00008.parquet"))
    pq.write_table(pa.table({"id": [ds.add(f"cur-pq-noimg-{i}", "missing_image_column") for i in range(3)],
                             "img": [good_image(rng) for _ in range(3)]}), ds.path("00009.parquet"))
    pq.write_table(pa.table({"id": pa.array([91, 92], pa.int64()), "image": [good_image(rng), good_image(rng)],
                             "caption": [caption(rng), caption(rng)]}), ds.path("00010.parquet"))
    ds.add("91")
    ds.add("92")
    with open(ds.path("00011.parquet"), "wb") as f:
        f.write(b"PAR1 this is not parquet" * 10)
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "image": pa.array([], pa.binary()),
                             "caption": pa.array([], pa.string())}), ds.path("00012.parquet"))
    return ds.summary()


def write_stage(root: str, name: str, rng, good: int) -> dict:
    """stage1 (alignment pairs) or sft (conversations): tars with `json` conversations, and parquet with a
    `json` column (one shard) and LLaVA's `conversations` column (another)."""
    ds = _Dataset(root, name)
    p = name

    def members(r):
        return [("jpg", good_image(r, "jpg")), ("json", _json_bytes(good_conversation(r)))]

    m = [(f"{ds.add(f'{p}-good-{i:06d}')}.{e}", d) for i in range(good) for e, d in members(rng)]
    for kind, (ext, data) in image_kinds(rng).items():
        if kind in ("extreme_wide", "extreme_tall", "one_pixel", "decompression_bomb", "jpg_body_broken",
                    "png_body_broken", "corrupt_bytes", "cmyk_jpg", "gray16_png", "animated_webp", "exif_rotated"):
            m += [(f"{ds.add(f'{p}-img-{kind}', kind)}.{ext}", data),
                  (f"{p}-img-{kind}.json", _json_bytes(good_conversation(rng)))]
    for kind, (value, n_images) in conversation_kinds(rng).items():
        key = ds.add(f"{p}-conv-{kind}", kind)
        imgs = [("jpg", good_image(rng))] if n_images == 1 else \
            [(f"{i}.{e}", good_image(rng, e)) for i, e in enumerate(("jpg", "png")[:n_images])]
        m += [(f"{key}.{e}", d) for e, d in imgs] + [(f"{key}.json", _json_bytes(value))]
    m += [(f"{ds.add(f'{p}-no-json', 'missing_json')}.jpg", good_image(rng))]
    _tar(ds.path("00000.tar"), m)
    _tar(ds.path("00001.tar"), [(f"{ds.add(f'{p}-more-{i:06d}')}.{e}", d) for i in range(good)
                                for e, d in members(rng)])
    _common_tar_shards(ds, rng, p, members, good)
    ids = [ds.add(f"{p}-pq-{i:04d}") for i in range(good)]
    pq.write_table(pa.table({"id": ids, "image": [good_image(rng, "png") for _ in ids],
                             "json": [json.dumps(good_conversation(rng)) for _ in ids]}), ds.path("00007.parquet"))
    ids = [ds.add(f"{p}-pqllava-{i:04d}") for i in range(good)] + [ds.add(f"{p}-pqllava-null", "null_conversation")]
    conv = [[{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": caption(rng)}] for _ in ids[:-1]]
    pq.write_table(pa.table({"id": ids, "image": [good_image(rng) for _ in ids], "conversations": conv + [None]}),
                   ds.path("00008.parquet"))
    return ds.summary()


def write(root: str, seed: int = 0, good: int = 12) -> dict:
    """Write all three datasets under `root`; returns (and writes) expected.json."""
    rng = np.random.default_rng(seed)
    expected = {"curated": write_curated(root, rng, good), "stage1": write_stage(root, "stage1", rng, good),
                "sft": write_stage(root, "sft", rng, good)}
    with open(os.path.join(root, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True, ensure_ascii=False)
    return expected


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ovpipe.verify.badinput", description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--good", type=int, default=12, help="good samples per shard (default 12)")
    args = ap.parse_args(argv)
    exp = write(args.out, args.seed, args.good)
    for name, d in exp.items():
        print(f"{name}: {len(d['keys'])} readable keys, {len(d['kinds'])} bad or odd, {len(d['unreadable'])} cut off")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
