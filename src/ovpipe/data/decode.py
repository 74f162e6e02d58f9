"""Images straight to a model's square input: decode no more pixels than the model will see.

open_clip's preprocessing (resize the short side to S with bicubic antialiasing, center-crop S×S,
normalize) run on a fully decoded photo spends most of its time decoding pixels it then averages
away. Here a JPEG is decoded by libjpeg's DCT scaling (`Image.draft`) at the smallest scale whose
short side is still ≥ S (a progressive one decoded at 1/8 first loses the AC scans it will not read:
`jpegscans`), the EXIF orientation is applied to that small image, and one resize with
`box=` makes the crop and the antialiased resize in a single pass (`reducing_gap` first box-averages
very large PNG/WebP images, which have no scaled decoding). Normalization is done per batch in torch.

The same checks and reasons as `images.open_rgb` (corrupt_image, truncated_image,
decompression_bomb) plus too_small, decided on the header before any pixel is decoded.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ovpipe.data.images import MAX_PIXELS, ImageError, decoding_errors, open_checked, to_rgb
from ovpipe.data.jpegscans import dc_scans_only

ORIENTATION = 0x0112
# EXIF orientation -> the transposition that shows the image upright (2..8; 1 is as stored)
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
REDUCING_GAP = 3.0  # box-average down to ≥ 3× the output before bicubic: indistinguishable, much faster


@dataclass(frozen=True)
class SquareInput:
    """open_clip's standard image preprocessing, as numbers."""
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, preprocess) -> "SquareInput | None":
        """The numbers of an open_clip/torchvision Compose of Resize(S, bicubic) → CenterCrop(S) →
        [mode/tensor steps] → Normalize; None for any other pipeline (callers then use it as it is)."""
        from torchvision import transforms as T

        steps = list(getattr(preprocess, "transforms", []))
        kinds = [type(t).__name__ for t in steps]
        if len(steps) < 3 or not isinstance(steps[0], T.Resize) or not isinstance(steps[1], T.CenterCrop) \
                or not isinstance(steps[-1], T.Normalize) \
                or any(k not in ("MaybeConvertMode", "MaybeToTensor", "ToTensor", "_convert_to_rgb", "function")
                       for k in kinds[2:-1]):
            return None
        resize, crop, norm = steps[0], steps[1], steps[-1]
        size = resize.size if isinstance(resize.size, int) else (resize.size[0] if len(resize.size) == 1 else None)
        crop_hw = tuple(crop.size) if not isinstance(crop.size, int) else (crop.size, crop.size)
        if size is None or resize.max_size is not None or crop_hw != (size, size) \
                or resize.interpolation != T.InterpolationMode.BICUBIC:
            return None
        return cls(size, tuple(float(x) for x in norm.mean), tuple(float(x) for x in norm.std))

    def batch(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """(N, 3, S, S) float32, normalized, from uint8 (S, S, 3) arrays."""
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.mean).view(1, 3, 1, 1) * 255.0
        inv = 1.0 / (torch.tensor(self.std).view(1, 3, 1, 1) * 255.0)
        return x.sub_(mean).mul_(inv)


def orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ORIENTATION, 1)
    except Exception:  # a malformed EXIF block is not a malformed image: show it as stored
        return 1
    return value if value in _TRANSPOSE else 1


def header_size(data: bytes | None, min_side: int = 1, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The stored (width, height) of an image that passes the size checks; ImageError otherwise."""
    with decoding_errors():
        return open_checked(data, min_side, max_pixels).size


def square_pixels(data: bytes | None, size: int, min_side: int = 1,
                  max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 (size, size, 3) array shown upright, stored (width, height)); ImageError otherwise."""
    with decoding_errors():
        im = open_checked(data, min_side, max_pixels)
        w, h = im.size
        # the short side resized to `size`, as torchvision does: the long side int(size * long / short)
        long_out = int(size * max(w, h) / min(w, h))
        if im.format == "JPEG" and im.mode in ("RGB", "YCbCr", "L"):
            request = (size, long_out) if w <= h else (long_out, size)
            if "progression" in im.info and min(w // request[0], h // request[1]) >= 8:
                pruned = dc_scans_only(data)  # draft decodes at 1/8: the AC scans are never read
                if pruned is not None:
                    im = Image.open(io.BytesIO(pruned))
            # draft picks the largest DCT reduction keeping both sides ≥ the request
            im.draft(im.mode, request)
        im.load()
        turn = orientation(im)  # after load: PNG may keep its EXIF behind the pixels
        im = to_rgb(im)
        if turn != 1:
            im = im.transpose(_TRANSPOSE[turn])
        out_w, out_h = (size, long_out) if im.size[0] <= im.size[1] else (long_out, size)
        # the center crop in resized coordinates (torchvision: round((out - size) / 2)), mapped back
        left, top = int(round((out_w - size) / 2.0)), int(round((out_h - size) / 2.0))
        sx, sy = im.size[0] / out_w, im.size[1] / out_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        im = im.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=REDUCING_GAP)
        return np.asarray(im), (w, h)


def device_batch(datas: list[bytes], square: SquareInput, device: str) -> tuple[torch.Tensor, list[int], dict]:
    """(pixels on `device` for the rows `ok`, ok, {index: (reason, detail)}) of images whose header
    checks passed (`header_size`): JPEGs decoded by nvjpeg on a GPU (`gpu_decode`), and whatever it
    cannot decode taken again by `square_pixels` on the CPU, which decides its reason."""
    from ovpipe.data.gpu_decode import decode_resize_batch

    dec = decode_resize_batch(datas, square.size, square.mean, square.std, device,
                              fallback=_no_fallback, max_pixels=MAX_PIXELS)
    rows = dict(zip(dec.ok, dec.pixels))
    rejects, again = {}, []
    for i in sorted(dec.failed):
        try:
            again.append((i, square_pixels(datas[i], square.size)[0]))
        except ImageError as exc:
            rejects[i] = (exc.reason, exc.detail)
    if again:
        cpu = square.batch([a for _, a in again]).to(device)
        rows.update((i, row) for (i, _), row in zip(again, cpu))
    ok = sorted(rows)
    pixels = torch.stack([rows[i] for i in ok]) if ok else torch.empty(0, 3, square.size, square.size)
    return pixels, ok, rejects


def _no_fallback(data: bytes) -> np.ndarray:
    raise ValueError("left to the CPU path")  # device_batch retries these with square_pixels
