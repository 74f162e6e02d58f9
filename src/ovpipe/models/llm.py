"""The language model: Qwen3 as a megatron-core GPTModel, and the one place the layer spec is chosen.

Qwen3 = GQA + SwiGLU + RMSNorm + RoPE (rotate-half, theta from the recipe) + RMSNorm on each head's
query and key (qk-layernorm), no biases. On GPU the Transformer Engine spec (fused kernels, THD
attention); on CPU the local spec with `PackedCausalAttention` in the core-attention slot, since the
stock local attention refuses packed sequences.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def transformer_engine_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def use_gpu() -> bool:
    return torch.cuda.is_available()


def qwen3_config(cfg, *, params_dtype=torch.float32, tensor_parallel: int = 1, pipeline_parallel: int = 1,
                 init_std: float = 0.02, recompute: str = "none"):
    from megatron.core.transformer.transformer_config import TransformerConfig

    bf16 = params_dtype == torch.bfloat16
    return TransformerConfig(
        num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads, num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.head_dim, normalization="RMSNorm", layernorm_epsilon=cfg.norm_eps, qk_layernorm=True,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, add_qkv_bias=False,
        hidden_dropout=0.0, attention_dropout=0.0, init_method_std=init_std,
        tensor_model_parallel_size=tensor_parallel, pipeline_model_parallel_size=pipeline_parallel,
        params_dtype=params_dtype, bf16=bf16, pipeline_dtype=params_dtype,
        bias_activation_fusion=False, bias_dropout_fusion=False, apply_rope_fusion=False,
        masked_softmax_fusion=False, persist_layer_norm=False, gradient_accumulation_fusion=False,
        calculate_per_token_loss=True,  # the loss is a mean over the global batch's loss tokens
        use_cpu_initialization=not use_gpu(),
        # full: keep each layer's input and recompute the layer in backward (8k sequences at 8B, see train.memory)
        **({"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
           if recompute == "full" else {}),
    )


def layer_spec(on_gpu: bool):
    """Transformer Engine spec on GPU, local spec + packed CPU attention otherwise."""
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if on_gpu:
        if not transformer_engine_available():
            raise RuntimeError("GPU training needs Transformer Engine (the ovpipe-gpu image has it: the `train` extra)")
        return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    from ovpipe.models.attention import PackedCausalAttention

    spec = specs.get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = PackedCausalAttention
    return spec


def build_gpt(cfg, config, vocab_size: int, *, pre_process: bool = True, post_process: bool = True):
    from megatron.core.models.gpt import GPTModel

    return GPTModel(config=config, transformer_layer_spec=layer_spec(use_gpu()), vocab_size=vocab_size,
                    max_sequence_length=cfg.max_position_embeddings, pre_process=pre_process,
                    post_process=post_process, share_embeddings_and_output_weights=cfg.tie_embeddings,
                    position_embedding_type="rope", rotary_base=int(cfg.rope_theta))


def padded_vocab(n: int, tensor_parallel: int = 1, multiple: int = 128) -> int:
    step = multiple * tensor_parallel
    return -(-n // step) * step
