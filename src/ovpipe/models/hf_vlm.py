"""The HF export read back with plain transformers: MLCD + projector + Qwen3ForCausalLM.

What evaluation (lmms-eval) and users outside Megatron load. `token_losses` gives per-token
cross-entropy of one sequence (the check that the export equals the trained megatron model);
`generate` does greedy decoding from a chat prompt with images.
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

from ovpipe import storage
from ovpipe.models.convert import EXPORT_FORMAT
from ovpipe.models.vision import Projector, VisionTower
from ovpipe.packing.images import VisionGeometry


class HFVisionLanguageModel(torch.nn.Module):
    def __init__(self, vision: VisionTower, llm, meta: dict):
        super().__init__()
        self.vision, self.llm, self.meta = vision, llm, meta
        self.image_pad_id = meta["image_pad_id"]
        self.geometry = VisionGeometry(patch_size=meta["patch_size"], merge_size=meta["merge_size"],
                                       min_pixels=meta["min_pixels"], max_pixels=meta["max_pixels"],
                                       max_aspect_ratio=meta["max_aspect_ratio"])

    @classmethod
    def from_export(cls, uri: str, dtype=torch.float32) -> HFVisionLanguageModel:
        from safetensors.torch import load_file
        from transformers import MLCDVisionModel, Qwen3ForCausalLM

        path = storage.localize(uri)
        meta_path = os.path.join(path, "ovpipe.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{uri}: not an ovpipe export (no ovpipe.json)")
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{uri}: export format {meta.get('format')!r}, expected {EXPORT_FORMAT!r}")
        encoder = MLCDVisionModel.from_pretrained(os.path.join(path, "vision"), local_files_only=True, dtype=dtype)
        llm = Qwen3ForCausalLM.from_pretrained(os.path.join(path, "llm"), local_files_only=True, dtype=dtype)
        projector = Projector(meta["vision_hidden_size"], meta["llm_hidden_size"], meta["merge_size"])
        projector.load_state_dict(load_file(os.path.join(path, "projector.safetensors")))
        model = cls(VisionTower(encoder, projector.to(dtype)), llm, meta)
        model.path = path
        return model.eval()

    def embed(self, input_ids: torch.Tensor, images: list[torch.Tensor]) -> torch.Tensor:
        """input_ids [b, s] -> [b, s, hidden] with image features in the image-pad slots (row-major order)."""
        emb = self.llm.get_input_embeddings()(input_ids)
        slots = input_ids == self.image_pad_id
        if images:
            feats = self.vision(images).to(emb.dtype)
            if feats.shape[0] != int(slots.sum()):
                raise ValueError(f"images give {feats.shape[0]} tokens for {int(slots.sum())} image-pad slots")
            emb = emb.masked_scatter(slots.unsqueeze(-1), feats)
        return emb

    @torch.no_grad()
    def token_losses(self, input_ids: torch.Tensor, labels: torch.Tensor, images: list[torch.Tensor]) -> torch.Tensor:
        """Per-token cross-entropy [s] of one sequence (input_ids, labels: [s])."""
        emb = self.embed(input_ids[None], images)
        logits = self.llm(inputs_embeds=emb).logits[0].float()
        return F.cross_entropy(logits, labels, reduction="none")

    @torch.no_grad()
    def generate(self, input_ids: list[list[int]], images: list[list[torch.Tensor]], max_new_tokens: int = 16,
                 eos_id: int | None = None) -> list[list[int]]:
        """Greedy continuation of each prompt (left-padded batch, on the model's device); stops at eos_id."""
        pad = self.llm.config.pad_token_id or 0
        device = next(self.llm.parameters()).device
        width = max(len(x) for x in input_ids)
        ids = torch.tensor([[pad] * (width - len(x)) + x for x in input_ids], device=device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in input_ids], device=device)
        emb = self.embed(ids, [im for ims in images for im in ims])
        out = self.llm.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=eos_id, pad_token_id=pad)
        results = []
        for row in out.tolist():
            if eos_id is not None and eos_id in row:
                row = row[:row.index(eos_id)]
            results.append(row)
        return results


def prompt_ids(turns: list[dict], image_tokens: list[int], tok) -> list[int]:
    """Token ids of a conversation ending with a user turn, plus the assistant header to generate after:
    the training layout (sequence.encode) so the model sees prompts exactly as it was trained."""
    from ovpipe.packing import sequence

    if not turns or turns[-1]["role"] != "user":
        raise ValueError("a prompt ends with a user turn")
    ids = sequence.encode(turns, image_tokens, tok).input_ids.tolist()
    opening = sequence._encoder(tok).frames["assistant"][0][1]  # <|im_start|> "assistant\n"
    return ids + list(opening)


def image_tensor(image, geometry: VisionGeometry) -> torch.Tensor:
    """A PIL image (or encoded bytes) -> the normalized [3, H', W'] tensor training used."""
    import io

    from ovpipe.models.vision import load_image

    if not isinstance(image, (bytes, bytearray)):
        buf = io.BytesIO()
        image.convert("RGB").save(buf, "PNG")
        image = buf.getvalue()
    return load_image(bytes(image), geometry)
