"""data/jpegscans.py: a progressive JPEG without its unread AC scans decodes at 1/8 to the same pixels."""
import io

import numpy as np
import pytest
from PIL import Image

from ovpipe.data.decode import square_pixels
from ovpipe.data.jpegscans import dc_scans_only


def _photo(w, h, seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
    im = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    return Image.fromarray(np.clip(im + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8))


def _jpeg(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _draft(data, request):
    im = Image.open(io.BytesIO(data))
    im.draft(im.mode, request)
    im.load()
    return im


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
@pytest.mark.parametrize("gray", [False, True])
@pytest.mark.parametrize("size", [(1810, 1795), (2003, 1800), (1800, 2411)])
def test_pruned_file_decodes_at_one_eighth_to_the_same_pixels(subsampling, gray, size):
    im = _photo(*size, seed=size[0] + subsampling)
    data = _jpeg(im.convert("L") if gray else im, quality=int(70 + 5 * subsampling), progressive=True,
                 subsampling=subsampling)
    pruned = dc_scans_only(data)
    assert pruned is not None and len(pruned) < 0.6 * len(data)
    a, b = _draft(data, (224, 224)), _draft(pruned, (224, 224))
    assert a.size == b.size == tuple((s + 7) // 8 for s in size)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_square_path_is_unchanged_by_the_pruning(monkeypatch):
    data = _jpeg(_photo(2400, 1800, seed=3), quality=88, progressive=True)
    assert dc_scans_only(data) is not None
    got, size = square_pixels(data, 224)
    monkeypatch.setattr("ovpipe.data.decode.dc_scans_only", lambda data: None)
    ref, ref_size = square_pixels(data, 224)
    assert size == ref_size == (2400, 1800) and np.array_equal(got, ref)


def test_files_it_cannot_vouch_for_are_left_alone():
    im = _photo(1700, 1700, seed=1)
    assert dc_scans_only(_jpeg(im, quality=85)) is None  # baseline: every scan is the only scan
    data = _jpeg(im, quality=85, progressive=True)
    assert dc_scans_only(data[: len(data) * 2 // 3]) is None  # cut short: the decoder decides its reason
    assert dc_scans_only(data[:-2] + b"garbage") is None  # no EOI
    assert dc_scans_only(b"") is None and dc_scans_only(b"\xff\xd8") is None
    assert dc_scans_only(_jpeg(im, quality=85)[:300]) is None


def test_random_damage_never_raises():
    rng = np.random.default_rng(0)
    data = bytearray(_jpeg(_photo(900, 700, seed=2), quality=80, progressive=True))
    for _ in range(300):
        bad = bytearray(data)
        for pos in rng.integers(0, len(bad), rng.integers(1, 6)):
            bad[pos] = int(rng.integers(0, 256))
        out = dc_scans_only(bytes(bad))
        assert out is None or out[:2] == b"\xff\xd8" and out.endswith(b"\xff\xd9")
