"""open_clip image/text towers, loaded from a weights path or object-store URI (never a hub)."""
from __future__ import annotations

import functools
import json
import os
import tempfile

import numpy as np
import torch

from ovpipe import storage
from ovpipe.config import EmbedConfig


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("embed.device=cuda but no GPU is visible; use auto or cpu")
    return device


def import_open_clip():
    """Import open_clip without letting timm import wandb (7 s of a 2-core start, unused here)."""
    import sys

    if "open_clip" in sys.modules or "wandb" in sys.modules:
        import open_clip
        return open_clip
    sys.modules["wandb"] = None  # makes timm's optional `import wandb` fail fast
    try:
        import open_clip
    finally:
        del sys.modules["wandb"]
    return open_clip


def _register(arch: str, model_config: dict) -> None:
    open_clip = import_open_clip()
    with tempfile.TemporaryDirectory(prefix="ovpipe-clip-") as folder:  # open_clip reads it at once
        with open(os.path.join(folder, f"{arch}.json"), "w") as f:
            json.dump(model_config, f)
        open_clip.add_model_config(folder)


@functools.lru_cache(maxsize=2)
def _load(arch: str, model_config_json: str, weights: str | None, precision: str, device: str, seed: int):
    open_clip = import_open_clip()
    if model_config_json != "null":
        _register(arch, json.loads(model_config_json))
    if arch not in open_clip.list_models():
        raise ValueError(f"embed.arch={arch!r}: unknown open_clip model; give embed.model_config "
                         "or one of open_clip.list_models()")
    local = storage.localize(weights) if weights else None
    torch.manual_seed(seed)  # random init (no weights) is seeded, so runs repeat
    model, _, preprocess = open_clip.create_model_and_transforms(
        arch, pretrained=local, precision=precision, device=device, weights_only=True)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(arch)


def load_clip(cfg: EmbedConfig, seed: int):
    """(model, preprocess, tokenizer, device) for the recipe's embed section; cached per process."""
    device = resolve_device(cfg.device)
    precision = cfg.precision if device == "cuda" else "fp32"
    model, preprocess, tokenizer = _load(cfg.arch, json.dumps(cfg.model_config, sort_keys=True), cfg.weights,
                                         precision, device, seed)
    return model, preprocess, tokenizer, device


@torch.no_grad()
def encode_images(model, pixels: torch.Tensor, device: str) -> np.ndarray:
    # open_clip's fp16/bf16 towers hold low-precision weights and take inputs of the same type
    dtype = next(model.visual.parameters()).dtype
    out = model.encode_image(pixels.to(device=device, dtype=dtype), normalize=True)
    return out.float().cpu().numpy()


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], device: str, batch_size: int = 256) -> np.ndarray:
    """L2-normalized float32 text embeddings, batched."""
    chunks = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[i:i + batch_size]).to(device)
        chunks.append(model.encode_text(tokens, normalize=True).float().cpu().numpy())
    dim = model.text_projection.shape[-1] if getattr(model, "text_projection", None) is not None else 0
    return np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
