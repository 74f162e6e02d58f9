"""Weights between Hugging Face and our model: Qwen3ForCausalLM <-> megatron GPTModel, and the HF export.

Megatron fuses q/k/v into one matrix laid out per query group ([q heads of the group, k, v] rows)
and gate/up into linear_fc1 ([gate; up]); the Transformer Engine spec also folds the input and
pre-MLP norms into those linears (`layer_norm_weight`). Both specs are handled by name. Tensor
parallel > 1 is not converted here (full, unsharded state dicts only).

The export is a folder any transformers install reads: `vision/` (MLCDVisionModel), `llm/`
(Qwen3ForCausalLM), `projector.safetensors`, `ovpipe.json` (how they connect) and the tokenizer.
"""
from __future__ import annotations

import json
import os

import torch

EXPORT_FORMAT = "ovpipe-vlm-v1"


def _qkv_to_megatron(q, k, v, heads: int, groups: int, head_dim: int):
    hidden = q.shape[1]
    q = q.view(groups, heads // groups * head_dim, hidden)
    k, v = k.view(groups, head_dim, hidden), v.view(groups, head_dim, hidden)
    return torch.cat([q, k, v], dim=1).reshape(-1, hidden)


def _qkv_from_megatron(qkv, heads: int, groups: int, head_dim: int):
    hidden = qkv.shape[1]
    per = heads // groups * head_dim
    x = qkv.view(groups, per + 2 * head_dim, hidden)
    q, k, v = x[:, :per], x[:, per:per + head_dim], x[:, per + head_dim:]
    return q.reshape(-1, hidden), k.reshape(-1, hidden), v.reshape(-1, hidden)


def _norm_names(mcore_keys, i: int) -> tuple[str, str]:
    """(input norm, pre-MLP norm) parameter names of layer i, local or Transformer Engine spec."""
    te = f"decoder.layers.{i}.self_attention.linear_qkv.layer_norm_weight" in mcore_keys
    if te:
        return (f"decoder.layers.{i}.self_attention.linear_qkv.layer_norm_weight",
                f"decoder.layers.{i}.mlp.linear_fc1.layer_norm_weight")
    return f"decoder.layers.{i}.input_layernorm.weight", f"decoder.layers.{i}.pre_mlp_layernorm.weight"


def hf_to_megatron(hf: dict, cfg, mcore_keys) -> dict:
    """Qwen3ForCausalLM state dict -> GPTModel state dict (names in `mcore_keys` decide the spec)."""
    heads, groups, d = cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim
    out = {"embedding.word_embeddings.weight": hf["model.embed_tokens.weight"],
           "decoder.final_layernorm.weight": hf["model.norm.weight"]}
    if not cfg.tie_embeddings:
        out["output_layer.weight"] = hf["lm_head.weight"]
    for i in range(cfg.num_layers):
        h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        in_norm, mlp_norm = _norm_names(mcore_keys, i)
        out[in_norm] = hf[h + "input_layernorm.weight"]
        out[mlp_norm] = hf[h + "post_attention_layernorm.weight"]
        out[m + "self_attention.linear_qkv.weight"] = _qkv_to_megatron(
            hf[h + "self_attn.q_proj.weight"], hf[h + "self_attn.k_proj.weight"], hf[h + "self_attn.v_proj.weight"],
            heads, groups, d)
        out[m + "self_attention.q_layernorm.weight"] = hf[h + "self_attn.q_norm.weight"]
        out[m + "self_attention.k_layernorm.weight"] = hf[h + "self_attn.k_norm.weight"]
        out[m + "self_attention.linear_proj.weight"] = hf[h + "self_attn.o_proj.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat([hf[h + "mlp.gate_proj.weight"], hf[h + "mlp.up_proj.weight"]])
        out[m + "mlp.linear_fc2.weight"] = hf[h + "mlp.down_proj.weight"]
    return out


def megatron_to_hf(sd: dict, cfg) -> dict:
    heads, groups, d = cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
           "model.norm.weight": sd["decoder.final_layernorm.weight"]}
    out["lm_head.weight"] = sd["embedding.word_embeddings.weight" if cfg.tie_embeddings else "output_layer.weight"]
    for i in range(cfg.num_layers):
        h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        in_norm, mlp_norm = _norm_names(sd.keys(), i)
        out[h + "input_layernorm.weight"] = sd[in_norm]
        out[h + "post_attention_layernorm.weight"] = sd[mlp_norm]
        q, k, v = _qkv_from_megatron(sd[m + "self_attention.linear_qkv.weight"], heads, groups, d)
        out[h + "self_attn.q_proj.weight"], out[h + "self_attn.k_proj.weight"] = q, k
        out[h + "self_attn.v_proj.weight"] = v
        out[h + "self_attn.q_norm.weight"] = sd[m + "self_attention.q_layernorm.weight"]
        out[h + "self_attn.k_norm.weight"] = sd[m + "self_attention.k_layernorm.weight"]
        out[h + "self_attn.o_proj.weight"] = sd[m + "self_attention.linear_proj.weight"]
        gate, up = sd[m + "mlp.linear_fc1.weight"].chunk(2)
        out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"] = gate, up
        out[h + "mlp.down_proj.weight"] = sd[m + "mlp.linear_fc2.weight"]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def qwen3_hf_config(cfg, vocab_size: int, tokenizer=None):
    from transformers import Qwen3Config

    ids = {}
    if tokenizer is not None:
        ids = {"eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
               "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    return Qwen3Config(vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
                       num_key_value_heads=cfg.num_query_groups, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
                       rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                       max_position_embeddings=cfg.max_position_embeddings,
                       tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, **ids)


def _language_state(model) -> dict:
    return {k: v for k, v in model.language.state_dict().items() if not k.endswith("_extra_state")}


def load_pretrained(model, recipe, vision: str | None) -> list[str]:
    """Load HF weights into a fresh model: the tower from `vision` (train.vit.vision_weights: the recipe's
    model.vision.weights or the vit step's output), the LLM from model.llm.weights."""
    from transformers import MLCDVisionModel, Qwen3ForCausalLM

    from ovpipe import storage

    loaded = []
    if vision:
        src = MLCDVisionModel.from_pretrained(storage.localize(vision), local_files_only=True)
        model.vision.encoder.load_state_dict(src.state_dict(), strict=True)
        loaded.append(vision)
    if recipe.model.llm.weights:
        src = Qwen3ForCausalLM.from_pretrained(storage.localize(recipe.model.llm.weights), local_files_only=True)
        target = _language_state(model)
        sd = hf_to_megatron(src.state_dict(), recipe.model.llm, target.keys())
        vocab = model.language.embedding.word_embeddings.weight.shape[0]
        emb = sd["embedding.word_embeddings.weight"]
        if emb.shape[0] != vocab:
            raise ValueError(f"{recipe.model.llm.weights}: vocabulary {emb.shape[0]} != model's {vocab} "
                             "(the tokenizer and the LLM weights do not belong together)")
        model.language.load_state_dict(sd, strict=False)
        unexpected = set(sd) - set(target)
        missing = set(target) - set(sd)
        if unexpected or missing:
            raise ValueError(f"LLM weights do not fit: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        loaded.append(recipe.model.llm.weights)
    return loaded


def export_hf(model, recipe, tokenizer_dir: str, out_dir: str, vocab_size: int) -> str:
    """Write the HF export of `model` (unwrapped, full state) into out_dir (a local folder)."""
    from safetensors.torch import save_file
    from transformers import Qwen3ForCausalLM

    from ovpipe.packing.tokenizer import load_tokenizer

    os.makedirs(out_dir, exist_ok=True)
    tok = load_tokenizer(tokenizer_dir)
    model.vision.encoder.save_pretrained(os.path.join(out_dir, "vision"), safe_serialization=True)
    with torch.device("meta"):
        qwen = Qwen3ForCausalLM(qwen3_hf_config(recipe.model.llm, vocab_size, tok))
    qwen.load_state_dict(megatron_to_hf(_language_state(model), recipe.model.llm), assign=True, strict=True)
    qwen.save_pretrained(os.path.join(out_dir, "llm"), safe_serialization=True)
    proj = {k: v.detach().contiguous() for k, v in model.vision.projector.state_dict().items()}
    save_file(proj, os.path.join(out_dir, "projector.safetensors"))
    tok.save_pretrained(out_dir)
    meta = {"format": EXPORT_FORMAT, "merge_size": recipe.packing.merge_size, "patch_size": recipe.packing.patch_size,
            "min_pixels": recipe.packing.min_pixels, "max_pixels": recipe.packing.max_pixels,
            "max_aspect_ratio": recipe.packing.max_aspect_ratio, "vision_hidden_size": recipe.model.vision.hidden_size,
            "llm_hidden_size": recipe.model.llm.hidden_size,
            "image_pad_id": tok.convert_tokens_to_ids("<|image_pad|>")}
    with open(os.path.join(out_dir, "ovpipe.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    return out_dir
