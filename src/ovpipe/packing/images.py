"""Image sizes from headers (no decoding) and the RICE-ViT resize rule that turns a size into tokens.

Packing needs every sample's token count before training, for tens of millions of images: reading
the few header bytes that hold the size is ~1000x cheaper than decoding. Sizes are the *stored* ones
(as PIL reports them, EXIF orientation not applied); smart_resize treats both sides alike, so a
90-degree rotation swaps the resized sides and leaves the token count unchanged.
"""
from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

_U16BE = struct.Struct(">H").unpack_from
_U16LE = struct.Struct("<H").unpack_from
_U32BE = struct.Struct(">I").unpack_from
_U32LE = struct.Struct("<I").unpack_from
_I32LE = struct.Struct("<i").unpack_from
_SOF_HW = struct.Struct(">HH").unpack_from

# Start-of-frame markers carry the frame size: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8), 0xD8])


class HeaderError(ValueError):
    """A truncated, corrupt or unsupported image header; the message says what was wrong."""


def _jpeg(data: bytes) -> tuple[int, int]:
    n = len(data)
    i = 2  # after SOI
    while True:
        if i + 4 > n:
            raise HeaderError(f"truncated JPEG: no frame header (SOFn) in {n} bytes")
        if data[i] != 0xFF:  # junk between segments: skip to the next 0xff, as PIL does
            j = data.find(b"\xff", i) if hasattr(data, "find") else bytes(data).find(b"\xff", i)
            i = j if j >= 0 else n
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0x00:  # stuffed zero: junk too
            i += 2
            continue
        if marker < 0xC0 and marker != 0x01:  # 0x02-0xBF are no markers (PIL rejects them too)
            raise HeaderError(f"corrupt JPEG: invalid marker 0xff{marker:02x} at byte {i}")
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker in _JPEG_SOF:
            if i + 9 > n:
                raise HeaderError(f"truncated JPEG: frame header at byte {i} cut off ({n} bytes)")
            h, w = _SOF_HW(data, i + 5)  # length(2) precision(1) height(2) width(2)
            if w == 0 or h == 0:
                raise HeaderError(f"JPEG frame header has size {w}x{h} (zero side / DNL unsupported)")
            return w, h
        if marker in (0xDA, 0xD9):
            raise HeaderError(f"corrupt JPEG: {'scan' if marker == 0xDA else 'end'} marker before a frame header")
        seg = _U16BE(data, i + 2)[0]
        if seg < 2:
            raise HeaderError(f"corrupt JPEG: segment 0x{marker:02x} at byte {i} has length {seg}")
        i += 2 + seg


def _png(data: bytes) -> tuple[int, int]:
    if len(data) < 24:
        raise HeaderError(f"truncated PNG: {len(data)} bytes, IHDR needs 24")
    if data[12:16] != b"IHDR":
        raise HeaderError(f"corrupt PNG: first chunk is {data[12:16]!r}, not IHDR")
    w, h = struct.unpack_from(">II", data, 16)
    return w, h


def _webp(data: bytes) -> tuple[int, int]:
    if len(data) < 30:
        raise HeaderError(f"truncated WebP: {len(data)} bytes, the first chunk needs 30")
    kind = data[12:16]
    if kind == b"VP8 ":  # lossy: 3-byte frame tag, start code 9d 01 2a, 14-bit sides (+2 scale bits)
        if data[23:26] != b"\x9d\x01\x2a":
            raise HeaderError("corrupt WebP: VP8 start code missing")
        return _U16LE(data, 26)[0] & 0x3FFF, _U16LE(data, 28)[0] & 0x3FFF
    if kind == b"VP8L":  # lossless: signature 0x2f, then 14-bit width-1 and height-1
        if data[20] != 0x2F:
            raise HeaderError("corrupt WebP: VP8L signature missing")
        bits = _U32LE(data, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":  # extended: flags(1) reserved(3), 24-bit canvas width-1 and height-1
        w = data[24] | data[25] << 8 | data[26] << 16
        h = data[27] | data[28] << 8 | data[29] << 16
        return w + 1, h + 1
    raise HeaderError(f"corrupt WebP: unknown first chunk {kind!r}")


def _gif(data: bytes) -> tuple[int, int]:
    if len(data) < 10:
        raise HeaderError(f"truncated GIF: {len(data)} bytes, the screen descriptor needs 10")
    return _U16LE(data, 6)[0], _U16LE(data, 8)[0]  # logical screen size, as PIL reports it


def _bmp(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise HeaderError(f"truncated BMP: {len(data)} bytes, the info header needs 26")
    if _U32LE(data, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sides
        return _U16LE(data, 18)[0], _U16LE(data, 20)[0]
    w, h = struct.unpack_from("<ii", data, 18)
    return w, abs(h)  # negative height = top-down rows


def _pil(data: bytes) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:  # lazy: parses the header, decodes nothing
            return im.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError,
            struct.error) as exc:
        raise HeaderError(f"unreadable image header ({type(exc).__name__}: {exc})") from None


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the header only. Raises HeaderError for truncated/corrupt headers."""
    if len(data) < 2:
        raise HeaderError(f"truncated image: {len(data)} bytes")
    head = data[:4]
    try:
        if head[:2] == b"\xff\xd8":
            w, h = _jpeg(data)
        elif data[:8] == b"\x89PNG\r\n\x1a\n":
            w, h = _png(data)
        elif head == b"RIFF" and data[8:12] == b"WEBP":
            w, h = _webp(data)
        elif data[:6] in (b"GIF87a", b"GIF89a"):
            w, h = _gif(data)
        elif head[:2] == b"BM":
            w, h = _bmp(data)
        else:
            w, h = _pil(data)
    except struct.error as exc:
        raise HeaderError(f"truncated image header: {exc}") from None
    if w <= 0 or h <= 0:
        raise HeaderError(f"image header has size {w}x{h}")
    return w, h


# ---------------------------------------------------------------- resizing to the vision grid


@dataclass(frozen=True)
class VisionGeometry:
    """Default RICE-ViT geometry (any object with these attributes works as `cfg`)."""

    patch_size: int = 14
    merge_size: int = 2
    min_pixels: int = 3136
    max_pixels: int = 2_560_000
    max_aspect_ratio: float = 200.0


DEFAULT_GEOMETRY = VisionGeometry()


def _ceil_sqrt(p: int, q: int) -> int:
    """ceil(sqrt(p / q)) for positive integers, exactly."""
    n = math.isqrt(p // q)
    return n if n * n * q >= p else n + 1


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 3136,
                 max_pixels: int = 2_560_000, max_aspect: float = 200.0) -> tuple[int, int]:
    """(height', width'): both multiples of `factor`, area in [min_pixels, max_pixels], aspect kept.

    Each side is rounded to the nearest multiple of `factor` (at least `factor`). If that area is
    above max_pixels, both sides are scaled by the same factor and floored; below min_pixels, scaled
    and ceiled. Sides are handled identically, so smart_resize(w, h) is smart_resize(h, w) swapped.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not factor * factor <= max_pixels or min_pixels > max_pixels:
        raise ValueError(f"need factor^2 <= max_pixels and min_pixels <= max_pixels "
                         f"(factor={factor}, min={min_pixels}, max={max_pixels})")
    if max(height, width) / min(height, width) > max_aspect:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} of {width}x{height} "
                         f"exceeds {max_aspect}")
    h = max(factor, round(height / factor) * factor)  # round() = half to even
    w = max(factor, round(width / factor) * factor)
    f2 = factor * factor
    if h * w > max_pixels:
        # side / sqrt(area / max_pixels) / factor = sqrt(side^2 * max_pixels / area / factor^2):
        # floored exactly in integers (isqrt(floor(x)) == floor(sqrt(x))), no float edge cases
        h = factor * max(1, math.isqrt(height * max_pixels // (width * f2)))
        w = factor * max(1, math.isqrt(width * max_pixels // (height * f2)))
    elif h * w < min_pixels:
        h = factor * _ceil_sqrt(height * min_pixels, width * f2)
        w = factor * _ceil_sqrt(width * min_pixels, height * f2)
    return h, w


def image_tokens(width: int, height: int, cfg=DEFAULT_GEOMETRY) -> int:
    """Vision tokens after the merge for a stored image of width x height (ValueError if unusable)."""
    factor = cfg.patch_size * cfg.merge_size
    h, w = smart_resize(height, width, factor, cfg.min_pixels, cfg.max_pixels, cfg.max_aspect_ratio)
    return (h // factor) * (w // factor)
