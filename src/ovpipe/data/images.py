"""Image decoding with reasons: every failure becomes a named reject, never an exception.

One decoder for every step that looks at pixels (embed, lengths, the trainer's loader), so an image
that passes `lengths` cannot fail in training. The pixel limit is checked on the header's size before
any pixel is decoded, the same way in every thread (PIL's own guard works through `warnings`, whose
filters are process-wide and not thread-safe).
"""
from __future__ import annotations

import contextlib
import io
import struct
import warnings

from PIL import Image

MAX_PIXELS = 300_000_000  # larger images are rejected as decompression bombs before decoding
Image.MAX_IMAGE_PIXELS = None  # our check below decides, deterministically; PIL's would warn or raise by size
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@contextlib.contextmanager
def decoding_errors():
    """What PIL raises on malformed data, as ImageError with a reason (truncated_image | corrupt_image)."""
    try:
        yield
    except ImageError:
        raise
    except OSError as exc:
        reason = "truncated_image" if "truncated" in str(exc).lower() else "corrupt_image"
        raise ImageError(reason, f"{type(exc).__name__}: {exc}") from None
    except (ValueError, SyntaxError, EOFError, TypeError, KeyError, IndexError, ZeroDivisionError,
            MemoryError, struct.error) as exc:  # what PIL's plugins raise on malformed data
        raise ImageError("corrupt_image", f"{type(exc).__name__}: {exc}") from None


def open_checked(data: bytes | None, min_side: int, max_pixels: int) -> Image.Image:
    """The image opened (header only) once its size passes the checks (call inside decoding_errors)."""
    if not data:
        raise ImageError("corrupt_image", "empty image bytes")
    im = Image.open(io.BytesIO(data))
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError("decompression_bomb", f"{w}x{h} = {w * h} pixels > {max_pixels}")
    if min(w, h) < min_side:
        raise ImageError("too_small", f"{w}x{h} < min side {min_side}")
    return im


def open_rgb(data: bytes | None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image fully decoded (first frame of an animation) as RGB; ImageError with a reason
    (corrupt_image | truncated_image | decompression_bomb) otherwise."""
    with decoding_errors():
        im = open_checked(data, 0, max_pixels)
        im.load()
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB from any mode (alpha dropped); 16-bit and float gray scaled to 8 bits, not clipped at 255."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def decode_image(data: bytes | None, min_side: int = 1) -> tuple[Image.Image | None, tuple[str, str] | None]:
    """(RGB image, None) or (None, (reason, detail)) with reason corrupt_image | truncated_image |
    decompression_bomb | too_small."""
    try:
        im = open_rgb(data)
    except ImageError as exc:
        return None, (exc.reason, exc.detail)
    if min(im.size) < min_side:
        return None, ("too_small", f"{im.size[0]}x{im.size[1]} < min side {min_side}")
    return im, None
