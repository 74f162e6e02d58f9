"""Weights between Hugging Face and our model: Qwen3ForCausalLM <-> megatron GPTModel, and the HF export.

Megatron fuses q/k/v into one matrix laid out per query group ([q heads of the group, k, v] rows)
and gate/up into linear_fc1 ([gate; up]); the Transformer Engine spec also folds the input and
pre-MLP norms into those linears (`layer_norm_weight`). Both specs are handled by name. The conversion
works on full (unsharded) tensors, one at a time; `ovpipe.models.sharding` cuts each into this rank's
tensor-parallel slice on load and gathers the slices back for the export.

Vocabulary rows: a published Qwen3 checkpoint has more embedding rows (151,936) than its tokenizer has
tokens (151,669). The model keeps the checkpoint's rows, padded only to a multiple of tensor_parallel
(by repeating the last row, an unused token), and the export writes back exactly the rows it loaded.
Without LLM weights the rows are the tokenizer's length padded to 128 × tensor_parallel.

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


def hf_to_megatron_items(hf, cfg, mcore_keys):
    """(GPTModel name, full tensor) pairs from a Qwen3ForCausalLM state (a dict or a lazy `HFWeights`),
    one layer at a time; names in `mcore_keys` decide the spec."""
    heads, groups, d = cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim
    yield "embedding.word_embeddings.weight", hf["model.embed_tokens.weight"]
    yield "decoder.final_layernorm.weight", hf["model.norm.weight"]
    if not cfg.tie_embeddings:
        yield "output_layer.weight", hf["lm_head.weight"]
    for i in range(cfg.num_layers):
        h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        in_norm, mlp_norm = _norm_names(mcore_keys, i)
        yield in_norm, hf[h + "input_layernorm.weight"]
        yield mlp_norm, hf[h + "post_attention_layernorm.weight"]
        yield m + "self_attention.linear_qkv.weight", _qkv_to_megatron(
            hf[h + "self_attn.q_proj.weight"], hf[h + "self_attn.k_proj.weight"], hf[h + "self_attn.v_proj.weight"],
            heads, groups, d)
        yield m + "self_attention.q_layernorm.weight", hf[h + "self_attn.q_norm.weight"]
        yield m + "self_attention.k_layernorm.weight", hf[h + "self_attn.k_norm.weight"]
        yield m + "self_attention.linear_proj.weight", hf[h + "self_attn.o_proj.weight"]
        yield m + "mlp.linear_fc1.weight", torch.cat([hf[h + "mlp.gate_proj.weight"], hf[h + "mlp.up_proj.weight"]])
        yield m + "mlp.linear_fc2.weight", hf[h + "mlp.down_proj.weight"]


def hf_to_megatron(hf: dict, cfg, mcore_keys) -> dict:
    """Qwen3ForCausalLM state dict -> full GPTModel state dict."""
    return dict(hf_to_megatron_items(hf, cfg, mcore_keys))


def megatron_to_hf(sd: dict, cfg, rows: int | None = None) -> dict:
    """Full GPTModel state -> Qwen3ForCausalLM state, with `rows` embedding rows (default: all)."""
    heads, groups, d = cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim
    emb = sd["embedding.word_embeddings.weight"]
    rows = rows or emb.shape[0]
    out = {"model.embed_tokens.weight": emb[:rows], "model.norm.weight": sd["decoder.final_layernorm.weight"]}
    out["lm_head.weight"] = emb[:rows] if cfg.tie_embeddings else sd["output_layer.weight"][:rows]
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


class HFWeights:
    """A Hugging Face checkpoint folder read lazily, tensor by tensor: one `model.safetensors` or sharded
    `model-0000N-of-0000M.safetensors` with their `model.safetensors.index.json` (what `save_pretrained`
    writes above `max_shard_size`). Rank r never holds more than one full tensor besides its slices."""

    def __init__(self, folder: str):
        from safetensors import safe_open

        index = os.path.join(folder, "model.safetensors.index.json")
        single = os.path.join(folder, "model.safetensors")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        elif os.path.exists(single):
            weight_map = None
        else:
            raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json "
                                    "(save the checkpoint with save_pretrained(..., safe_serialization=True))")
        files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
        self._open = {name: safe_open(os.path.join(folder, name), framework="pt") for name in files}
        self._where = weight_map or {k: "model.safetensors" for k in self._open["model.safetensors"].keys()}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        return self._open[self._where[name]].get_tensor(name)

    def keys(self):
        return self._where.keys()


def checkpoint_rows(weights: str) -> int:
    """Embedding rows of a Qwen3 checkpoint (path/URI), from its config.json."""
    from ovpipe import storage

    config = storage.read_json(storage.join(weights, "config.json"))
    return int(config.get("vocab_size") or config["text_config"]["vocab_size"])


def vocab_rows(recipe, n_tokens: int) -> tuple[int, int]:
    """(the model's embedding rows, the rows its export writes) for a tokenizer of n_tokens."""
    from ovpipe.models.llm import padded_vocab

    tp = recipe.train.tensor_parallel
    if not recipe.model.llm.weights:
        rows = padded_vocab(n_tokens, tp)
        return rows, rows
    rows = checkpoint_rows(recipe.model.llm.weights)
    if rows < n_tokens:
        raise ValueError(f"model.llm.weights {recipe.model.llm.weights}: {rows} embedding rows for a tokenizer of "
                         f"{n_tokens} tokens (packing.tokenizer): the tokenizer and the LLM weights do not belong "
                         "together")
    return padded_vocab(rows, tp, multiple=1), rows


def _fit_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] >= rows:
        return t[:rows]
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], -1)])


def _local_language_state(model) -> dict:
    """This rank's LLM tensors (Transformer Engine's `_extra_state` entries are not weights)."""
    return {k: v for k, v in model.language.state_dict().items() if not k.endswith("_extra_state")}


def language_state(model) -> dict | None:
    """The LLM's full (unsharded) state on the first rank of each tensor-parallel group, None on the
    others: a collective, so every rank of the group calls it."""
    from ovpipe.models import sharding

    return sharding.gather(_local_language_state(model))


def load_pretrained(model, recipe, vision: str | None) -> list[str]:
    """Load HF weights into a fresh model: the tower from `vision` (train.vit.vision_weights: the recipe's
    model.vision.weights or the vit step's output), the LLM from model.llm.weights, each rank taking its
    tensor-parallel slice."""
    from megatron.core import parallel_state
    from transformers import MLCDVisionModel

    from ovpipe import storage
    from ovpipe.models import sharding

    loaded = []
    if vision:
        src = MLCDVisionModel.from_pretrained(storage.localize(vision), local_files_only=True)
        model.vision.encoder.load_state_dict(src.state_dict(), strict=True)
        loaded.append(vision)
    weights = recipe.model.llm.weights
    if weights:
        tp = parallel_state.get_tensor_model_parallel_world_size()
        rank = parallel_state.get_tensor_model_parallel_rank()
        target = _local_language_state(model)
        rows = model.language.embedding.word_embeddings.weight.shape[0] * tp  # vocab-parallel: this rank's share
        hf = HFWeights(storage.localize(weights))
        sd = {}
        try:
            for name, full in hf_to_megatron_items(hf, recipe.model.llm, target.keys()):
                if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
                    full = _fit_rows(full, rows)
                sd[name] = sharding.shard_tensor(name, full, tp, rank).clone()
        except KeyError as exc:
            raise ValueError(f"model.llm.weights {weights}: not a Qwen3 checkpoint of this recipe's shape "
                             f"({exc.args[0]})") from exc
        unexpected, missing = set(sd) - set(target), set(target) - set(sd)
        wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(target[k].shape)}" for k in sorted(set(sd) & set(target))
                 if sd[k].shape != target[k].shape]
        if unexpected or missing or wrong:
            raise ValueError(f"model.llm.weights {weights} do not fit model.llm: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}, shapes {wrong[:3]}")
        model.language.load_state_dict(sd, strict=False)
        loaded.append(weights)
    return loaded


def export_hf(model, recipe, tokenizer_dir: str, out_dir: str, vocab_size: int, language: dict | None = None) -> str:
    """Write the HF export of `model` (unwrapped) into out_dir (a local folder), with `vocab_size` embedding
    rows. `language`: the LLM's full state from `language_state` (gathered from the tensor-parallel ranks);
    None reads it from the model itself (tensor_parallel 1)."""
    from safetensors.torch import save_file
    from transformers import Qwen3ForCausalLM

    from ovpipe.packing.tokenizer import load_tokenizer

    os.makedirs(out_dir, exist_ok=True)
    tok = load_tokenizer(tokenizer_dir)
    model.vision.encoder.save_pretrained(os.path.join(out_dir, "vision"), safe_serialization=True)
    with torch.device("meta"):
        qwen = Qwen3ForCausalLM(qwen3_hf_config(recipe.model.llm, vocab_size, tok))
    if language is None:
        language = _local_language_state(model)
    qwen.load_state_dict(megatron_to_hf(language, recipe.model.llm, vocab_size), assign=True, strict=True)
    if recipe.model.llm.tie_embeddings:
        qwen.tie_weights()  # assign=True replaced both tensors: tie them again, so lm_head is not written twice
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
