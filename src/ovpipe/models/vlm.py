"""The whole model: vision tower (MLCD + projector) feeding a megatron-core Qwen3 GPTModel.

Input ids hold one <|image_pad|> per image token (the packing layout); their embeddings are replaced,
in order, by the projected image features, and the LLM runs on the packed THD stream. Given a loss
mask, the output layer runs on the loss positions only: a vocabulary-wide matmul on image and prompt
tokens that never enter the loss was a third of a tiny-recipe sft step.
"""
from __future__ import annotations

from functools import partial

import torch
from megatron.core.transformer.module import MegatronModule

from ovpipe.models import llm as llm_lib
from ovpipe.models.vision import Projector, VisionTower, mlcd_config

TRAINABLE = {"projector": ("vision.projector.",), "projector+llm": ("vision.projector.", "language."), "all": ("",)}


class VisionLanguageModel(MegatronModule):
    def __init__(self, config, vision: VisionTower, language, image_pad_id: int):
        super().__init__(config=config)
        self.vision = vision
        self.language = language
        self.image_pad_id = image_pad_id
        self.model_type = language.model_type  # megatron's schedules look it up on the wrapped model
        self._rows = None  # loss positions for the output layer, set for one forward
        if getattr(language, "post_process", False):
            language.output_layer.register_forward_pre_hook(self._select_rows, with_kwargs=True)

    def _select_rows(self, _module, args, kwargs):
        if self._rows is None:
            return None
        return (args[0][self._rows],) + tuple(args[1:]), kwargs

    def set_input_tensor(self, input_tensor):  # pipeline-parallel hook, for the LLM's stages
        self.language.set_input_tensor(input_tensor)

    def embed(self, input_ids, position_ids, images):
        """[T, 1, hidden] input embeddings with the image features in the image-pad slots."""
        if input_ids.shape[0] != 1:
            raise ValueError(f"packed input is one THD row, got a batch of {input_ids.shape[0]}")
        emb = self.language.embedding(input_ids=input_ids, position_ids=position_ids)
        slots = input_ids[0] == self.image_pad_id
        n_slots = int(slots.sum())
        if not images:
            if n_slots:
                raise ValueError(f"{n_slots} image-pad tokens but no images")
            return emb
        feats = self.vision(images).to(emb.dtype)
        if feats.shape[0] != n_slots:
            raise ValueError(f"images give {feats.shape[0]} tokens for {n_slots} image-pad slots")
        index = slots.nonzero().squeeze(1)
        return emb.index_put((index, torch.zeros_like(index)), feats)  # out of place: autograd-safe

    def forward(self, input_ids, position_ids, labels=None, images=(), packed_seq_params=None, loss_mask=None):
        """Per-token losses [1, T] given labels (0 where loss_mask is 0, when given), else logits."""
        emb = self.embed(input_ids, position_ids, list(images))
        run = partial(self.language, input_ids=None, position_ids=position_ids, attention_mask=None,
                      decoder_input=emb, packed_seq_params=packed_seq_params)
        c = self.config
        if labels is None or loss_mask is None or c.sequence_parallel or c.context_parallel_size > 1:
            return run(labels=labels)  # hidden states split across ranks: select after, not before
        rows = loss_mask[0].nonzero().squeeze(1)
        self._rows = rows
        try:
            losses = run(labels=labels[:, rows])
        finally:
            self._rows = None
        return losses.new_zeros(labels.shape).index_put((torch.zeros_like(rows), rows), losses[0])


def build_model(recipe, vocab_size: int, *, params_dtype=torch.float32, image_pad_id: int):
    """Random-init model from the recipe (weights load separately: ovpipe.models.convert)."""
    from transformers import MLCDVisionModel

    m = recipe.model
    config = llm_lib.qwen3_config(m.llm, params_dtype=params_dtype, tensor_parallel=recipe.train.tensor_parallel,
                                  pipeline_parallel=recipe.train.pipeline_parallel, init_std=m.init_std,
                                  recompute=recipe.train.recompute)
    language = llm_lib.build_gpt(m.llm, config, vocab_size)
    encoder = MLCDVisionModel(mlcd_config(m.vision, recipe.packing.patch_size))
    projector = Projector(m.vision.hidden_size, m.llm.hidden_size, recipe.packing.merge_size)
    model = VisionLanguageModel(config, VisionTower(encoder, projector), language, image_pad_id)
    return model.to(params_dtype)


def set_trainable(model: torch.nn.Module, which: str) -> int:
    """Freeze everything but `which` (projector | projector+llm | all); returns the number of trainable
    parameters."""
    prefixes = TRAINABLE[which]
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        n += p.numel() if p.requires_grad else 0
    return n
