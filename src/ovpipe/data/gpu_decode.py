"""Batched JPEG decode + CLIP preprocessing on the device that runs the model (nvjpeg on a GPU).

`decode_resize_batch` turns a list of encoded images into normalized [n, 3, size, size] pixels, the
open_clip eval transform (shortest side resized to `size` with antialiased bicubic, centre crop,
mean/std), without a CPU thread pool: on CUDA, torchvision's batched nvjpeg decode takes the work
a ~16-core decode pool would do for one GPU's worth of MetaCLIP-H/14 (see bench/gpu_embed.py).

What the batched GPU decoder does not do, done here:
  * EXIF orientation: torchvision applies it on CPU only, so the orientation tag is read from the
    header (PIL parses headers without decoding) and applied to the decoded tensor, on either device
    (one code path, so CPU tests cover what runs on the GPU).
  * failure isolation: nvjpeg's batch call fails as a whole on one bad image; then each image is
    retried alone, and what still fails (or is not a JPEG nvjpeg takes: PNG, WebP, CMYK JPEG) goes
    to a CPU decoder (`fallback`, PIL by default). An image nothing can decode is reported in
    `failed` with its reason; the rest of the batch is returned.
"""
from __future__ import annotations

import io
import re
import warnings
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# torchvision 0.29 deprecates its image codecs for TorchCodec, which has no batched nvjpeg call yet
# and is not in our images; the warning would repeat on every batch.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

JPEG_MAGIC = b"\xff\xd8\xff"
_GPU_MODES = {"L", "RGB", "YCbCr"}  # JPEG colour modes nvjpeg decodes to RGB (CMYK/YCCK go to the fallback)


class Decoded(NamedTuple):
    pixels: torch.Tensor  # [len(ok), 3, size, size], in the order of `ok`
    ok: list[int]  # input indices of the rows of `pixels`
    failed: dict[int, str]  # input index -> why it could not be decoded


def pil_decode(data: bytes) -> np.ndarray:
    """Default CPU fallback: any format PIL reads, upright (EXIF applied), RGB, [h, w, 3] uint8."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"))


def _probe(data: bytes) -> tuple[str, str, int, int, int]:
    """(format, mode, width, height, EXIF orientation) from the header alone."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.format, im.mode, im.width, im.height, int(im.getexif().get(0x0112, 1) or 1)


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to a [c, h, w] tensor, as PIL's ImageOps.exif_transpose does."""
    ops = {
        2: lambda x: x.flip(-1),
        3: lambda x: x.flip(-2, -1),
        4: lambda x: x.flip(-2),
        5: lambda x: x.transpose(-2, -1),
        6: lambda x: torch.rot90(x, -1, (-2, -1)),  # stored rotated: turn 90 degrees clockwise
        7: lambda x: x.flip(-2, -1).transpose(-2, -1),
        8: lambda x: torch.rot90(x, 1, (-2, -1)),
    }
    return ops[orientation](img) if orientation in ops else img


def resize_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """[3, h, w] uint8 -> [3, size, size] float in [0, 255]: torchvision Resize(size) + CenterCrop(size)."""
    h, w = img.shape[-2:]
    if h <= w:
        nh, nw = size, max(size, int(size * w / h))
    else:
        nh, nw = max(size, int(size * h / w)), size
    x = img[None].float()
    if (nh, nw) != (h, w):
        # bicubic + antialias is what PIL (open_clip's CPU transform) does; clamp its overshoot
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 255)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return x[0, :, top:top + size, left:left + size]


def _decode_jpegs(datas: list[bytes], device: torch.device) -> list[torch.Tensor | Exception]:
    """nvjpeg in one batch call on CUDA (each image alone if the batch fails); libjpeg per image on CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    if device.type == "cuda":
        try:
            return list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass  # one bad image fails the whole call: find it below
    out: list[torch.Tensor | Exception] = []
    for r in raw:
        try:
            out.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as exc:
            out.append(exc)
    return out


def _why(exc: BaseException) -> str:
    text = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc).strip()).splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def decode_resize_batch(datas: Sequence[bytes], size: int, mean: Sequence[float], std: Sequence[float],
                        device: str | torch.device = "cpu", *, dtype: torch.dtype = torch.float32,
                        fallback: Callable[[bytes], np.ndarray] | None = None,
                        max_pixels: int | None = None) -> Decoded:
    """Decode, orient, resize (shortest side), centre-crop and normalize a batch of encoded images.

    JPEGs are decoded on `device` (nvjpeg on CUDA); other formats, and JPEGs that fail there, by
    `fallback(bytes) -> upright RGB [h, w, 3] uint8` on the CPU (PIL when None). Images over
    `max_pixels` (PIL's decompression-bomb limit when None) are refused from the header, undecoded.
    Returns `Decoded(pixels, ok, failed)`; `pixels` is [len(ok), 3, size, size] in `dtype`.
    """
    from PIL import Image

    device = torch.device(device)
    fallback = fallback or pil_decode
    limit = max_pixels if max_pixels is not None else (Image.MAX_IMAGE_PIXELS or 0)
    images: dict[int, torch.Tensor] = {}
    failed: dict[int, str] = {}
    jpeg_idx, orientations, cpu_idx, reasons = [], [], [], {}
    for i, data in enumerate(datas):
        try:
            fmt, mode, w, h, orientation = _probe(data)
        except Exception as exc:  # noqa: BLE001 -- not an image PIL knows: the fallback may still read it
            cpu_idx.append(i)
            reasons[i] = _why(exc)
            continue
        if limit and w * h > limit:
            failed[i] = f"too large: {w}x{h} = {w * h:,} pixels > {limit:,}"
        elif fmt == "JPEG" and mode in _GPU_MODES and bytes(data[:3]) == JPEG_MAGIC:
            jpeg_idx.append(i)
            orientations.append(orientation)
        else:
            cpu_idx.append(i)
    if jpeg_idx:
        for i, o, img in zip(jpeg_idx, orientations, _decode_jpegs([datas[i] for i in jpeg_idx], device)):
            if isinstance(img, Exception):
                cpu_idx.append(i)
                reasons[i] = _why(img)
            else:
                images[i] = orient(img, o)
    for i in sorted(cpu_idx):
        try:
            arr = np.require(fallback(datas[i]), requirements=["C", "W"])
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                raise ValueError(f"fallback returned {arr.dtype} {arr.shape}, not [h, w, 3] uint8")
            images[i] = torch.from_numpy(arr).permute(2, 0, 1).to(device, non_blocking=True)
        except Exception as exc:  # noqa: BLE001 -- one undecodable image must not fail the batch
            why = _why(exc)
            failed[i] = f"{reasons[i]}; then {why}" if reasons.get(i, why) != why else why
    ok = sorted(images)
    if not ok:
        return Decoded(torch.empty(0, 3, size, size, dtype=dtype, device=device), ok, failed)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
    pixels = torch.stack([resize_crop(images[i], size) for i in ok])
    return Decoded(((pixels - m) / s).to(dtype), ok, failed)
