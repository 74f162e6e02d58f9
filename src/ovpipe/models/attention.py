"""Core attention over packed (THD) sequences for CPU, where Transformer Engine is absent.

megatron-core's local DotProductAttention refuses packed sequences. This module takes its place in
the layer spec: the same constructor and forward signature, THD inputs [tokens, heads, head_dim]
with cu_seqlens, and causal scaled dot-product attention over the segments padded into one batch
(one call, not one per sub-sample: a packed row holds a dozen), so no token attends across
sub-samples. Without packed_seq_params (a plain [s, b, h, d] batch) it is causal attention over
each sequence.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule


class PackedCausalAttention(MegatronModule):
    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config=config)
        if attention_type != "self":
            raise ValueError(f"PackedCausalAttention supports self-attention only, got {attention_type!r}")
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        head_dim = config.kv_channels
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)

    def _attend(self, q, k, v):
        """q [heads, s, d], k/v [groups, s, d] -> [s, heads * d]; GQA without copying key/value groups."""
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                             enable_gqa=k.shape[0] != q.shape[0],
                                             dropout_p=self.dropout if self.training else 0.0)
        return out.transpose(0, 1).reshape(q.shape[1], -1)

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if attention_bias is not None:
            raise ValueError("attention_bias is not supported")
        if packed_seq_params is None:  # [s, b, heads, d] -> [s, b, heads * d]
            outs = [self._attend(query[:, b].transpose(0, 1), key[:, b].transpose(0, 1), value[:, b].transpose(0, 1))
                    for b in range(query.shape[1])]
            return torch.stack(outs, dim=1)
        if packed_seq_params.qkv_format != "thd":
            raise ValueError(f"packed sequences must be THD, got {packed_seq_params.qkv_format!r}")
        cu_q = packed_seq_params.cu_seqlens_q.tolist()
        if cu_q[-1] != query.shape[0]:
            raise ValueError(f"cu_seqlens cover {cu_q[-1]} tokens of {query.shape[0]}")
        cu_kv = packed_seq_params.cu_seqlens_kv.tolist()
        if cu_q != cu_kv:
            raise ValueError("self-attention over packed sequences needs cu_seqlens_q == cu_seqlens_kv")
        cu = packed_seq_params.cu_seqlens_q.to(device=query.device, dtype=torch.long)
        starts, lens = cu[:-1], cu[1:] - cu[:-1]
        starts, lens = starts[lens > 0], lens[lens > 0]  # an empty segment would be an all-masked row: NaN
        span = torch.arange(int(lens.max()), device=query.device)
        valid = span[None] < lens[:, None]  # [segments, L]
        index = (starts[:, None] + span[None]).clamp(max=query.shape[0] - 1)
        q, k, v = (x[index].permute(0, 2, 1, 3) for x in (query, key, value))  # [segments, heads, L, d]
        mask = torch.tril(torch.ones(len(span), len(span), dtype=torch.bool, device=query.device))
        mask = (mask[None] & valid[:, None, :])[:, None]  # causal, and no padded key
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                             enable_gqa=k.shape[1] != q.shape[1],
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.permute(0, 2, 1, 3)[valid]  # real tokens, in stream order: [t, heads, d]
        return out.reshape(out.shape[0], -1)  # [t, heads * d]; megatron reshapes it to [t, 1, h]
