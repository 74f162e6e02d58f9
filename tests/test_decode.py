"""data/decode.py: the square model-input path against open_clip's preprocessing of a full decode."""
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ovpipe.data.decode import SquareInput, square_pixels
from ovpipe.data.images import ImageError, decode_image
from ovpipe.models.clip import import_open_clip
from ovpipe.verify import badinput


@pytest.fixture(scope="module")
def preprocess():
    _, _, pre = import_open_clip().create_model_and_transforms("ViT-B-32", pretrained=None)
    return pre


def _photo(w, h, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)  # smooth, photo-like
    return Image.fromarray(np.clip(np.asarray(im) + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8))


def _bytes(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _reference(data, pre):
    im, err = decode_image(data)
    assert err is None
    return pre(im)


def test_reads_open_clips_standard_transform(preprocess):
    sq = SquareInput.of(preprocess)
    assert sq.size == 224 and sq.mean[0] == pytest.approx(0.48145466)
    from torchvision import transforms as T
    assert SquareInput.of(T.Compose([T.Resize((224, 224)), T.ToTensor()])) is None  # squash resize
    assert SquareInput.of(T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BILINEAR),
                                     T.CenterCrop(224), T.ToTensor(), T.Normalize([0] * 3, [1] * 3)])) is None
    assert SquareInput.of(lambda im: im) is None


@pytest.mark.parametrize("w,h", [(640, 480), (300, 900), (224, 224), (1000, 250)])
def test_lossless_inputs_match_the_reference(preprocess, w, h):
    """No DCT scaling for PNG: one box resize equals resize-then-crop to float rounding."""
    sq = SquareInput.of(preprocess)
    data = _bytes(_photo(w, h), "PNG")
    ours = sq.batch([square_pixels(data, sq.size)[0]])[0]
    assert (ours - _reference(data, preprocess)).abs().max() < 0.02  # < 1.5/255 before normalization


@pytest.mark.parametrize("w,h", [(1600, 1200), (4000, 3000), (500, 2000)])
def test_scaled_jpeg_decoding_stays_close(preprocess, w, h):
    sq = SquareInput.of(preprocess)
    data = _bytes(_photo(w, h, seed=w), "JPEG", quality=90)
    ours = sq.batch([square_pixels(data, sq.size)[0]])[0]
    ref = _reference(data, preprocess)
    assert (ours - ref).abs().mean() < 0.05
    assert torch.nn.functional.cosine_similarity(ours.flatten(), ref.flatten(), dim=0) > 0.995


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(preprocess, orientation):
    sq = SquareInput.of(preprocess)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im = _photo(900, 400, seed=orientation)
    data = _bytes(im, "JPEG", quality=95, exif=exif.tobytes())
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    pixels, size = square_pixels(data, sq.size)
    assert size == (900, 400)  # the stored size, as the embed table has always recorded
    ref = _reference(_bytes(upright, "PNG"), preprocess)
    assert (sq.batch([pixels])[0] - ref).abs().mean() < 0.05
    unturned = _reference(_bytes(Image.open(io.BytesIO(data)).convert("RGB"), "PNG"), preprocess)
    assert (sq.batch([pixels])[0] - unturned).abs().mean() > 0.1


def test_every_bad_image_kind_gets_the_reason_of_the_full_decoder():
    """The fast path rejects exactly what the full decoder rejects, with the same reason."""
    kinds = badinput.image_kinds(np.random.default_rng(0))
    kinds["bomb_png"] = ("png", badinput.bomb_png())
    assert len(kinds) > 10
    for name, (_, data) in kinds.items():
        _, err = decode_image(data, 8)
        try:
            square_pixels(data, 64, 8)
            ours = None
        except ImageError as exc:
            ours = exc.reason
        assert ours == (err[0] if err else None), name


def test_batch_normalizes_like_torchvision(preprocess):
    sq = SquareInput.of(preprocess)
    arr = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    from torchvision.transforms import functional as TF
    ref = TF.normalize(TF.to_tensor(Image.fromarray(arr)), sq.mean, sq.std)
    assert torch.allclose(sq.batch([arr, arr])[1], ref, atol=1e-5)


def test_device_batch_decides_like_the_cpu_path(preprocess):
    """The GPU route (run here on the CPU): JPEGs through torchvision's decoder, the rest and the failures
    through square_pixels; every image is a row or a reject with a reason of the CPU path."""
    from ovpipe.data.decode import device_batch, header_size

    sq = SquareInput.of(preprocess)
    kinds = badinput.image_kinds(np.random.default_rng(0))
    datas, names = [], []
    for name, (_, data) in kinds.items():
        try:
            header_size(data, 8)  # what embed's reader threads check before the batch
        except ImageError:
            continue
        datas.append(data)
        names.append(name)
    datas += [_bytes(_photo(900, 600, seed=5), "JPEG", quality=90), _bytes(_photo(300, 500), "PNG")]
    pixels, ok, rejects = device_batch(datas, sq, "cpu")
    assert sorted(ok + list(rejects)) == list(range(len(datas))) and pixels.shape == (len(ok), 3, 224, 224)
    assert {r for r, _ in rejects.values()} <= {"corrupt_image", "truncated_image"}
    for row, i in zip(pixels, ok):
        try:
            ref = sq.batch([square_pixels(datas[i], sq.size)[0]])[0]
        except ImageError:
            continue  # torchvision's decoder is more lenient than PIL's with some broken bodies
        assert (row - ref).abs().mean() < 0.1, names[i] if i < len(names) else i
    assert len(datas) - 1 in ok and len(datas) - 2 in ok
