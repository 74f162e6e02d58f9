"""Vision side: a RICE-ViT-compatible encoder (Hugging Face MLCD) and the projector to the LLM width.

MLCD adds its CLS token inside the ViT (with its own rotary angle); like the reference we drop it and
pass only the patch features on. Images keep their native size (resized onto the patch × merge grid
by the same `smart_resize` the packer counts with); same-size images run as one batch.
The projector: LayerNorm → 2×2 spatial merge of neighbouring patches → Linear → GELU → Linear.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ovpipe.packing.images import VisionGeometry, smart_resize

# CLIP normalization, which RICE-ViT/MLCD were trained with
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def mlcd_config(cfg, patch_size: int):
    """MLCDVisionConfig from the recipe's model.vision section (random init)."""
    from transformers import MLCDVisionConfig

    return MLCDVisionConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                            num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
                            initializer_range=cfg.initializer_range, patch_size=patch_size, image_size=patch_size * 16)


def load_image(blob: bytes, geometry: VisionGeometry) -> torch.Tensor:
    """Decoded, resized onto the token grid, normalized: float32 [3, H', W']."""
    from PIL import Image

    from ovpipe.data.images import open_rgb

    im = open_rgb(blob)  # the decoder `lengths` vetted every image with
    h, w = smart_resize(im.height, im.width, geometry.patch_size * geometry.merge_size, geometry.min_pixels,
                        geometry.max_pixels, geometry.max_aspect_ratio)
    if (h, w) != (im.height, im.width):
        im = im.resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    x = (arr - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def merge_windows(patches: torch.Tensor, grid_h: int, grid_w: int, merge: int) -> torch.Tensor:
    """[n, grid_h * grid_w, D] row-major patches -> [n, windows, merge * merge, D]: the patches of each
    merge x merge window (one LLM token each), windows in row-major order."""
    n, _, d = patches.shape
    m = merge
    x = patches.view(n, grid_h // m, m, grid_w // m, m, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (grid_h // m) * (grid_w // m), m * m, d)


class Projector(nn.Module):
    def __init__(self, vision_dim: int, llm_dim: int, merge: int):
        super().__init__()
        self.merge = merge
        inner = vision_dim * merge * merge
        self.norm = nn.LayerNorm(vision_dim, eps=1e-6)
        self.fc1 = nn.Linear(inner, inner)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(inner, llm_dim)

    def forward(self, patches: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """patches [n, grid_h * grid_w, D] (row-major) -> [n, grid_h/m * grid_w/m, llm_dim]."""
        x = merge_windows(self.norm(patches), grid_h, grid_w, self.merge).flatten(2)
        return self.fc2(self.act(self.fc1(x)))


class VisionTower(nn.Module):
    """MLCD encoder + projector: images -> LLM-width embeddings, one row per image token."""

    def __init__(self, encoder: nn.Module, projector: Projector):
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.patch = encoder.config.patch_size

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        """images: [3, H, W] tensors in sequence order -> [sum of image tokens, llm_dim], in the same order."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(tuple(im.shape[-2:]), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(images)
        dtype = next(self.encoder.parameters()).dtype
        for (h, w), idx in by_size.items():
            batch = torch.stack([images[i] for i in idx]).to(dtype)
            feats = self.encoder(pixel_values=batch).last_hidden_state[:, 1:]  # drop CLS
            tokens = self.projector(feats, h // self.patch, w // self.patch)
            for j, i in enumerate(idx):
                out[i] = tokens[j]
        return torch.cat(out, dim=0)
