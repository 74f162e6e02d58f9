"""ovpipe.data.gpu_decode on the CPU (the same code path as on CUDA, minus nvjpeg's batch call)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ovpipe.data.gpu_decode import decode_resize_batch, orient, pil_decode

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # open_clip's OpenAI


def picture(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth, asymmetric content (upsampled noise + a bright top-left block), so that a resize compares
    well across implementations and a wrong orientation does not."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.array(im)
    arr[: h // 3, : w // 4] = (250, 240, 10)
    return Image.fromarray(arr)


def encode(im: Image.Image, fmt: str = "JPEG", orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    kw = {"quality": 95} if fmt == "JPEG" else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def reference(data: bytes, size: int) -> torch.Tensor:
    """open_clip's eval transform with PIL: upright RGB, Resize(size, bicubic), CenterCrop, normalize."""
    im = Image.fromarray(pil_decode(data))
    w, h = im.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def to_255(x: torch.Tensor) -> torch.Tensor:
    """Normalized pixels back to 0-255 units, to state tolerances in grey levels."""
    return (x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)) * 255.0


def test_shape_dtype_and_match_with_pil():
    sizes = [(320, 200), (150, 400), (64, 64), (1000, 750), (40, 30)]  # landscape, portrait, exact, big, upscale
    datas = [encode(picture(w, h, i)) for i, (w, h) in enumerate(sizes)]
    out = decode_resize_batch(datas, 64, MEAN, STD, "cpu")
    assert out.pixels.shape == (5, 3, 64, 64) and out.pixels.dtype == torch.float32
    assert out.ok == [0, 1, 2, 3, 4] and out.failed == {}
    for i, d in enumerate(datas):
        diff = (to_255(out.pixels[i]) - to_255(reference(d, 64))).abs()
        assert diff.mean() < 0.6 and diff.max() < 4, (sizes[i], float(diff.mean()), float(diff.max()))
    half = decode_resize_batch(datas[:1], 64, MEAN, STD, "cpu", dtype=torch.bfloat16)
    assert half.pixels.dtype == torch.bfloat16
    assert torch.allclose(half.pixels.float(), out.pixels[:1], atol=0.05)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pil_exif_transpose(orientation):
    raw = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)  # lossless: exact
    data = encode(Image.fromarray(raw), "PNG", orientation)
    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif().get(0x0112) == orientation
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = orient(torch.from_numpy(raw).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied_to_jpegs(orientation):
    data = encode(picture(240, 120, orientation), orientation=orientation)
    out = decode_resize_batch([data], 48, MEAN, STD, "cpu")
    assert out.ok == [0]
    right = (to_255(out.pixels[0]) - to_255(reference(data, 48))).abs().mean()
    plain = encode(picture(240, 120, orientation))  # the same pixels, no EXIF: what ignoring the tag gives
    wrong = (to_255(out.pixels[0]) - to_255(reference(plain, 48))).abs().mean()
    assert right < 0.6 and wrong > 40 * right, (float(right), float(wrong))


def test_non_jpeg_and_cmyk_go_to_the_fallback():
    im = picture(90, 60)
    datas = [encode(im, "PNG"), encode(im), encode(im, "WEBP"), encode(im.convert("CMYK"))]
    seen = []

    def fallback(data: bytes) -> np.ndarray:
        seen.append(data[:4])
        return pil_decode(data)

    out = decode_resize_batch(datas, 32, MEAN, STD, "cpu", fallback=fallback)
    assert out.ok == [0, 1, 2, 3] and not out.failed
    assert len(seen) == 3 and all(not s.startswith(b"\xff\xd8\xff") for s in seen[:2])  # PNG, WebP, CMYK JPEG
    for i, d in enumerate(datas):
        tol = 3.0 if i == 2 else 1.5  # WebP is lossy where PNG is not
        assert (to_255(out.pixels[i]) - to_255(reference(d, 32))).abs().mean() < tol


def test_corrupt_images_are_reported_per_index():
    good = encode(picture(80, 60))
    datas = [good, b"\xff\xd8\xff" + bytes(range(200)), b"not an image at all", b"", good, good[:40]]
    out = decode_resize_batch(datas, 32, MEAN, STD, "cpu")
    assert out.ok == [0, 4] and out.pixels.shape == (2, 3, 32, 32)
    assert set(out.failed) == {1, 2, 3, 5}
    assert all(isinstance(v, str) and v for v in out.failed.values())
    assert torch.equal(out.pixels[0], out.pixels[1])


def test_fallback_errors_and_bad_outputs_are_reported():
    png = encode(picture(50, 40), "PNG")

    def broken(data: bytes):
        raise OSError("codec missing")

    out = decode_resize_batch([png, encode(picture(50, 40))], 16, MEAN, STD, "cpu", fallback=broken)
    assert out.ok == [1] and "codec missing" in out.failed[0]
    flat = decode_resize_batch([png], 16, MEAN, STD, "cpu", fallback=lambda d: np.zeros((4, 4), np.uint8))
    assert flat.ok == [] and "[h, w, 3] uint8" in flat.failed[0]
    assert flat.pixels.shape == (0, 3, 16, 16)


def test_images_over_max_pixels_are_refused_undecoded():
    datas = [encode(picture(200, 100)), encode(picture(20, 10))]
    out = decode_resize_batch(datas, 8, MEAN, STD, "cpu", max_pixels=10_000)
    assert out.ok == [1] and out.failed[0].startswith("too large: 200x100")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvjpeg needs a GPU")
def test_cuda_matches_cpu():
    datas = [encode(picture(w, h, i), orientation=o) for i, (w, h, o) in enumerate([(300, 200, 1), (120, 260, 6)])]
    datas += [encode(picture(60, 60), "PNG"), b"\xff\xd8\xff broken"]
    cpu = decode_resize_batch(datas, 64, MEAN, STD, "cpu")
    gpu = decode_resize_batch(datas, 64, MEAN, STD, "cuda")
    assert gpu.ok == cpu.ok == [0, 1, 2] and set(gpu.failed) == {3}
    assert gpu.pixels.device.type == "cuda"
    assert (to_255(gpu.pixels.cpu()) - to_255(cpu.pixels)).abs().mean() < 1.0  # nvjpeg vs libjpeg IDCT
