"""Caption backends for the "caption" step: one caption per image, per requested language.

`make_captioner(cfg)` picks a backend from `cfg.backend`:

* ``passthrough`` -- the source caption, unchanged, for every language (tiny recipes, tests).
* ``hf`` -- any transformers image-text-to-text model from a local weights folder, greedy decoding.
* ``vllm`` -- the same prompts through vLLM's offline ``LLM.chat`` (optional extra, GPU only).

Heavy imports (torch, transformers, vllm) happen inside the backends so that importing this module
stays cheap for the passthrough path and for processes that never caption.
"""
from __future__ import annotations

import base64
import io
import os
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image

    from ovpipe.config import CaptionConfig

VLLM_MISSING = ("caption.backend=vllm, but this environment has no vLLM: the caption step runs in the captioning "
                "image ovpipe-caption (images/gpu.Dockerfile built with REQUIREMENTS=images/caption-requirements.txt, "
                "vLLM on its own pins; images/README.md), or use caption.backend=hf in ovpipe-gpu")


def check_backend(cfg: CaptionConfig) -> None:
    """Before any shard: the backend the recipe names is in this image (a vLLM recipe in an image without
    vLLM fails here, naming the image to use, not in every shard's worker)."""
    import importlib.util

    from ovpipe.config import ConfigError

    if cfg.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(VLLM_MISSING)


@runtime_checkable
class Captioner(Protocol):
    name: str

    def caption(self, images: list[Image.Image], sources: list[str | None], lang: str) -> list[str]:
        """One caption per image, in language `lang`; `sources` are the images' source captions."""
        ...


def _check_lengths(images: list, sources: list) -> None:
    if len(images) != len(sources):
        raise ValueError(f"caption: got {len(images)} images but {len(sources)} source captions")


def _user_turn(prompt: str, image_part: dict) -> list[dict]:
    # Image first, then the instruction: the order most VLM chat templates were trained with.
    return [{"role": "user", "content": [image_part, {"type": "text", "text": prompt}]}]


class PassthroughCaptioner:
    """Returns the source caption for every language; a missing source is an error (the step rejects it)."""

    name = "passthrough"

    def caption(self, images: list[Image.Image], sources: list[str | None], lang: str) -> list[str]:
        _check_lengths(images, sources)
        missing = [i for i, s in enumerate(sources) if s is None]
        if missing:
            raise ValueError(
                f"caption.backend=passthrough: no source caption to pass through for {lang!r} "
                f"(items {missing[:10]} of {len(sources)} have none)")
        return list(sources)


class HFCaptioner:
    """transformers VLM (AutoProcessor + AutoModelForImageTextToText) with batched greedy generate."""

    name = "hf"

    def __init__(self, cfg: CaptionConfig, model_dir: str, seed: int = 0):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not os.path.isdir(model_dir):
            raise FileNotFoundError(f"caption.model: not a local weights folder: {model_dir}")
        self.cfg = cfg
        self.device = torch.device(_resolve_device(cfg.device))
        self.dtype = _resolve_dtype(cfg.dtype, self.device)
        self.processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        tok = self.processor.tokenizer
        # Left padding keeps every prompt's last token at the end, where generation continues.
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        torch.manual_seed(seed)  # any weights the checkpoint lacks get a reproducible init
        # device_map loads weights straight onto the device: no full CPU copy of a multi-GB model.
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_dir, local_files_only=True, dtype=self.dtype, device_map=str(self.device)).eval()
        self._prompts: dict[str, str] = {}

    def _prompt(self, lang: str) -> str:
        if lang not in self._prompts:
            if lang not in self.cfg.prompts:
                raise ValueError(f"caption.prompts: no prompt for language {lang!r}")
            self._prompts[lang] = self.processor.apply_chat_template(
                _user_turn(self.cfg.prompts[lang], {"type": "image"}),
                add_generation_prompt=True, tokenize=False)
        return self._prompts[lang]

    def caption(self, images: list[Image.Image], sources: list[str | None], lang: str) -> list[str]:
        import torch

        _check_lengths(images, sources)
        prompt = self._prompt(lang)
        tok = self.processor.tokenizer
        out: list[str] = []
        bs = self.cfg.batch_size
        for start in range(0, len(images), bs):
            batch = [im.convert("RGB") for im in images[start:start + bs]]
            inputs = self.processor(images=batch, text=[prompt] * len(batch),
                                    padding=True, return_tensors="pt")
            inputs = inputs.to(self.device, dtype=self.dtype)
            with torch.inference_mode():
                gen = self.model.generate(
                    **inputs, do_sample=False, num_beams=1, max_new_tokens=self.cfg.max_new_tokens,
                    pad_token_id=tok.pad_token_id)
            new_tokens = gen[:, inputs["input_ids"].shape[1]:]  # decoder-only: output = prompt + new
            out.extend(t.strip() for t in tok.batch_decode(new_tokens, skip_special_tokens=True))
        return out


class VLLMCaptioner:
    """vLLM offline engine; chat-style prompts so the model's own chat template places the image."""

    name = "vllm"

    def __init__(self, cfg: CaptionConfig, model_dir: str, seed: int = 0):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise ImportError(VLLM_MISSING) from exc
        self.cfg = cfg
        self.llm = LLM(model=model_dir, tensor_parallel_size=cfg.tensor_parallel, seed=seed,
                       dtype=cfg.dtype, limit_mm_per_prompt={"image": 1})
        self.params = SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens)

    def caption(self, images: list[Image.Image], sources: list[str | None], lang: str) -> list[str]:
        _check_lengths(images, sources)
        if lang not in self.cfg.prompts:
            raise ValueError(f"caption.prompts: no prompt for language {lang!r}")
        prompt = self.cfg.prompts[lang]
        conversations = [
            _user_turn(prompt, {"type": "image_url", "image_url": {"url": _data_url(im)}})
            for im in images]
        # vLLM schedules its own batches; outputs come back in request order.
        results = self.llm.chat(conversations, sampling_params=self.params, use_tqdm=False)
        return [r.outputs[0].text.strip() for r in results]


def _data_url(image: Image.Image) -> str:
    # PNG keeps pixels exact; a data URL is the image form every vLLM chat version accepts.
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str, device):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"caption.dtype: {dtype!r} is not one of auto, float32, bfloat16, float16") from None


def make_captioner(cfg: CaptionConfig, local_model_dir: str | None = None, seed: int = 0) -> Captioner:
    """Build the backend named by `cfg.backend`.

    `local_model_dir` is where the caller already copied `cfg.model` (object-store URIs); without it
    `cfg.model` must itself be a local path.
    """
    if cfg.backend == "passthrough":
        return PassthroughCaptioner()
    if cfg.backend not in ("hf", "vllm"):
        raise ValueError(f"caption.backend: {cfg.backend!r} is not one of hf, passthrough, vllm")
    model_dir = local_model_dir or cfg.model
    if not model_dir:
        raise ValueError(f"caption.model: required for backend {cfg.backend!r}")
    if "://" in model_dir:
        raise ValueError(f"caption.model: {model_dir} is remote; copy it locally and pass local_model_dir")
    if cfg.backend == "hf":
        return HFCaptioner(cfg, model_dir, seed)
    return VLLMCaptioner(cfg, model_dir, seed)
