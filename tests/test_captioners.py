"""Caption backends: passthrough, hf (tiny random-init VLM built locally), vllm's missing-extra error."""
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may reach a model hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest
from PIL import Image

from ovpipe.config import CaptionConfig
from ovpipe.curation.captioners import VLLM_MISSING, Captioner, make_captioner
from ovpipe.rehearsal.captioner import build_tiny_vlm

SOURCES = ["a red square on grass", "一只猫坐在垫子上", "two dogs in the snow"]


def _images() -> list[Image.Image]:
    # Different sizes and aspect ratios so a dynamic-resolution model gets different token counts
    # (and so batches need padding); one grayscale and one RGBA image exercise the RGB conversion.
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (64, 17), dtype=np.uint8), mode="L"),
        Image.fromarray(rng.integers(0, 256, (100, 100, 4), dtype=np.uint8), mode="RGBA"),
    ]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # A 32-wide model gains nothing from threads; on a busy CI box they only contend (seconds vs 0.3 s).
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"), SOURCES)


def _hf_cfg(model: str, batch_size: int) -> CaptionConfig:
    return CaptionConfig(backend="hf", model=model, languages=["en", "zh"], max_new_tokens=8,
                         batch_size=batch_size, device="cpu")


def _caption_all(captioner: Captioner) -> dict[str, list[str]]:
    return {lang: captioner.caption(_images(), SOURCES, lang) for lang in ("en", "zh")}


def test_hf_captions_deterministic_and_batch_invariant(tiny_vlm):
    captioner = make_captioner(_hf_cfg(tiny_vlm, batch_size=2))
    assert isinstance(captioner, Captioner) and captioner.name == "hf"
    first = _caption_all(captioner)
    for caps in first.values():
        assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
        # Only the new tokens are decoded: the prompt and chat scaffolding never leak into captions.
        assert not any("assistant" in c or "Describe" in c or "描述" in c for c in caps), caps
    assert any(c for caps in first.values() for c in caps)  # the random model does emit something

    # The batch of two really is padded (different image token counts), so invariance means something.
    prompt = captioner._prompt("en")
    enc = captioner.processor(images=_images()[:2], text=[prompt] * 2, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()

    # A fresh load (weights via local_model_dir, as the step passes for s3:// models) gives the same text.
    remote = _hf_cfg("s3://bucket/captioner", batch_size=2)
    assert _caption_all(make_captioner(remote, local_model_dir=tiny_vlm, seed=0)) == first
    # Batch size does not change greedy results.
    assert _caption_all(make_captioner(_hf_cfg(tiny_vlm, batch_size=1))) == first
    assert _caption_all(make_captioner(_hf_cfg(tiny_vlm, batch_size=3))) == first


def test_hf_errors(tiny_vlm, tmp_path):
    captioner = make_captioner(_hf_cfg(tiny_vlm, batch_size=2))
    with pytest.raises(ValueError, match="no prompt for language 'fr'"):
        captioner.caption(_images(), SOURCES, "fr")
    with pytest.raises(ValueError, match="3 images but 2 source"):
        captioner.caption(_images(), SOURCES[:2], "en")
    with pytest.raises(FileNotFoundError, match="not a local weights folder"):
        make_captioner(_hf_cfg(str(tmp_path / "missing"), batch_size=2))
    with pytest.raises(ValueError, match="copy it locally"):
        make_captioner(_hf_cfg("s3://bucket/captioner", batch_size=2))


def test_passthrough_returns_sources_for_every_language():
    captioner = make_captioner(CaptionConfig(languages=["en", "zh"]))
    assert isinstance(captioner, Captioner) and captioner.name == "passthrough"
    for lang in ("en", "zh"):
        assert captioner.caption(_images(), SOURCES, lang) == SOURCES
    assert captioner.caption([], [], "en") == []


def test_passthrough_missing_source_is_a_clear_error():
    captioner = make_captioner(CaptionConfig())
    with pytest.raises(ValueError, match=r"no source caption.*items \[1\]"):
        captioner.caption(_images(), [SOURCES[0], None, SOURCES[2]], "en")
    with pytest.raises(ValueError, match="3 images but 1 source"):
        captioner.caption(_images(), SOURCES[:1], "en")


def test_vllm_missing_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails whether or not vllm is installed
    with pytest.raises(ImportError) as info:
        make_captioner(CaptionConfig(backend="vllm", model=str(tmp_path)))
    assert str(info.value) == VLLM_MISSING
    assert "backend=hf" in VLLM_MISSING and "images/README.md" in VLLM_MISSING


def test_caption_step_refuses_a_backend_its_image_lacks(monkeypatch, tmp_path):
    """A vLLM recipe in an image without vLLM fails before any shard, naming the image to use."""
    import importlib.util

    from ovpipe.config import ConfigError, load_recipe
    from ovpipe.curation import caption
    from ovpipe.sharded import Context

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    recipe = load_recipe("configs/recipes/tiny.yaml", ["caption.backend=vllm", f"caption.model={tmp_path}"])
    with pytest.raises(ConfigError, match="ovpipe-caption"):
        caption.process(Context(recipe, str(tmp_path / "store"), "r"))
