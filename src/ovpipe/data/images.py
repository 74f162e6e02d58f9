"""Image decoding with reasons: every failure becomes a named reject, never an exception."""
from __future__ import annotations

import io
import warnings

from PIL import Image

Image.MAX_IMAGE_PIXELS = 300_000_000  # beyond this PIL's decompression-bomb guard rejects the image


def decode_image(data: bytes | None, min_side: int = 1) -> tuple[Image.Image | None, tuple[str, str] | None]:
    """(RGB image, None) or (None, (reason, detail)) with reason corrupt_image | truncated_image | too_small."""
    if not data:
        return None, ("corrupt_image", "empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            im.load()
    except OSError as exc:
        reason = "truncated_image" if "truncated" in str(exc).lower() else "corrupt_image"
        return None, (reason, f"{type(exc).__name__}: {exc}")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, ValueError, SyntaxError,
            EOFError) as exc:
        return None, ("corrupt_image", f"{type(exc).__name__}: {exc}")
    if min(im.size) < min_side:
        return None, ("too_small", f"{im.size[0]}x{im.size[1]} < min side {min_side}")
    return im.convert("RGB"), None
