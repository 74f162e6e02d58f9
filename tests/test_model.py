"""The model on CPU: the megatron-core workarounds, THD attention, Qwen3 parity, the HF export."""
import dataclasses
import io

import numpy as np
import pytest
import torch

from ovpipe.config import load_recipe
from ovpipe.models import cpu_compat, llm

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("configs/recipes/tiny.yaml")


@pytest.fixture(scope="module")
def distributed(recipe):
    from ovpipe.train.loop import init_distributed

    return init_distributed(recipe)


def test_cpu_workarounds_still_fit_megatron():
    """Fails loudly when a megatron-core upgrade moves what cpu_compat patches."""
    assert cpu_compat.check() == []


def test_megatron_optimizer_steps_on_cpu(recipe, distributed):
    """DDP grad buffers, the megatron optimizer (plain and distributed) and grad clipping run on CPU."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    for distributed_optimizer in (False, True):
        cfg = recipe.model.llm
        torch.manual_seed(0)
        model = llm.build_gpt(cfg, llm.qwen3_config(cfg), 256)
        ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, use_distributed_optimizer=distributed_optimizer), model)
        opt_cfg = OptimizerConfig(optimizer="adam", lr=1e-3, clip_grad=0.5, params_dtype=torch.float32,
                                  use_distributed_optimizer=distributed_optimizer)
        opt = get_megatron_optimizer(opt_cfg, [ddp])
        ids = torch.randint(0, 256, (1, 32))
        pos = torch.arange(32)[None]
        losses = []
        for _ in range(6):
            ddp.zero_grad_buffer()
            opt.zero_grad()
            loss = ddp(input_ids=ids, position_ids=pos, attention_mask=None, labels=ids).mean()
            loss.backward()
            ddp.finish_grad_sync()
            ok, norm, _ = opt.step()
            assert ok and norm > 0
            losses.append(float(loss))
        assert losses[-1] < losses[0], losses


def _packed(lengths):
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    return pos, PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max(lengths),
                                max_seqlen_kv=max(lengths))


def test_packed_attention_never_crosses_sub_samples(recipe, distributed):
    from ovpipe.models.attention import PackedCausalAttention

    cfg = llm.qwen3_config(recipe.model.llm)
    att = PackedCausalAttention(cfg, 1, None, "self")
    lengths = [5, 9, 3]
    _, psp = _packed(lengths)
    q, k, v = torch.randn(17, 4, 32), torch.randn(17, 2, 32), torch.randn(17, 2, 32)
    out = att(q, k, v, None, packed_seq_params=psp)
    k2, v2 = k.clone(), v.clone()
    k2[5:14] += 1.0  # change only the second sub-sample
    v2[5:14] -= 1.0
    out2 = att(q, k2, v2, None, packed_seq_params=psp)
    assert torch.equal(out[:5], out2[:5]) and torch.equal(out[14:], out2[14:])
    assert not torch.allclose(out[5:14], out2[5:14])
    # each segment equals plain causal attention over it alone
    ref = torch.nn.functional.scaled_dot_product_attention(
        q[5:14].transpose(0, 1), k[5:14].repeat_interleave(2, 1).transpose(0, 1),
        v[5:14].repeat_interleave(2, 1).transpose(0, 1), is_causal=True)
    assert torch.allclose(out[5:14], ref.transpose(0, 1).reshape(9, -1), atol=1e-6)


def test_qwen3_parity_on_a_packed_batch(recipe, distributed):
    """megatron GPTModel with converted Qwen3ForCausalLM weights: the same per-token loss on packed THD
    input as HF on each sub-sample alone."""
    from transformers import Qwen3ForCausalLM

    from ovpipe.models.convert import hf_to_megatron, megatron_to_hf, qwen3_hf_config

    for tie in (True, False):
        cfg = dataclasses.replace(recipe.model.llm, tie_embeddings=tie)
        torch.manual_seed(1)
        hf = Qwen3ForCausalLM(qwen3_hf_config(cfg, 256)).eval()
        mc = llm.build_gpt(cfg, llm.qwen3_config(cfg), 256).eval()
        target = {k for k in mc.state_dict() if not k.endswith("_extra_state")}
        sd = hf_to_megatron(hf.state_dict(), cfg, target)
        assert set(sd) == target
        mc.load_state_dict(sd, strict=False)
        lengths = [7, 12, 5]
        ids = torch.randint(0, 256, (1, sum(lengths)))
        labels = torch.randint(0, 256, (1, sum(lengths)))
        pos, psp = _packed(lengths)
        with torch.no_grad():
            ours = mc(input_ids=ids, position_ids=pos, attention_mask=None, labels=labels, packed_seq_params=psp)[0]
            ref = []
            for a, b in zip(psp.cu_seqlens_q[:-1].tolist(), psp.cu_seqlens_q[1:].tolist()):
                logits = hf(input_ids=ids[:, a:b]).logits[0]
                ref.append(torch.nn.functional.cross_entropy(logits, labels[0, a:b], reduction="none"))
        assert torch.allclose(ours, torch.cat(ref), atol=1e-5), (ours - torch.cat(ref)).abs().max()
        back = megatron_to_hf({k: v for k, v in mc.state_dict().items() if k in target}, cfg)
        for k, v in hf.state_dict().items():
            assert torch.equal(back[k], v), k


def _png(w, h, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_hf_export_reloads_with_the_same_loss(recipe, distributed, tmp_path, tok_dir):
    """The HF export (MLCD + projector + Qwen3 safetensors) read back with transformers gives the
    megatron model's per-token losses on a packed batch with images; so does training's loss-rows path."""
    from ovpipe.models.convert import export_hf
    from ovpipe.models.hf_vlm import HFVisionLanguageModel
    from ovpipe.models.vlm import build_model
    from ovpipe.packing.images import image_size, image_tokens
    from ovpipe.packing.sequence import caption_turns
    from ovpipe.packing.tokenizer import load_tokenizer
    from ovpipe.train.data import build_micro_batch

    tok = load_tokenizer(tok_dir)
    torch.manual_seed(2)
    vocab = llm.padded_vocab(len(tok))
    model = build_model(recipe, vocab, image_pad_id=tok.convert_tokens_to_ids("<|image_pad|>")).eval()
    blobs = [_png(64, 48, 0), _png(40, 64, 1), _png(64, 64, 2)]
    subs, images = [], []
    from ovpipe.packing.sequence import lengths as seq_lengths

    for i, blob in enumerate(blobs):
        turns = caption_turns(f"a red circle number {i} on a gray ground")
        n_tok = [image_tokens(*image_size(blob), recipe.packing)]
        n = int(seq_lengths([(turns, n_tok)], tok)[0])
        subs.append({"id": str(i), "length": n, "turns": turns, "image_tokens": n_tok, "images": [f"{i}.png"]})
        images.append([blob])
    mb = build_micro_batch([{"json": {"subsamples": subs}, "images": images}], tok, recipe.packing)
    from megatron.core.packed_seq_params import PackedSeqParams

    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=mb.cu_seqlens, cu_seqlens_kv=mb.cu_seqlens,
                          max_seqlen_q=mb.max_seqlen, max_seqlen_kv=mb.max_seqlen)
    labels = mb.labels.clamp(min=0)
    with torch.no_grad():
        ours = model(mb.input_ids, mb.position_ids, labels=labels, images=mb.images, packed_seq_params=psp)[0]
        # training's path: the output layer on the loss positions only, the same losses there
        masked = model(mb.input_ids, mb.position_ids, labels=labels, images=mb.images, packed_seq_params=psp,
                       loss_mask=mb.loss_mask)[0]
    keep = mb.loss_mask[0]
    assert 0 < keep.sum() < len(keep)
    assert torch.allclose(masked, ours * keep, atol=1e-6), (masked - ours * keep).abs().max()
    out = export_hf(model, recipe, tok_dir, str(tmp_path / "hf"), vocab)
    hf = HFVisionLanguageModel.from_export(out)
    cu = mb.cu_seqlens.tolist()
    ref = [hf.token_losses(mb.input_ids[0, a:b], labels[0, a:b], [mb.images[i]])
           for i, (a, b) in enumerate(zip(cu[:-1], cu[1:]))]
    assert torch.allclose(ours, torch.cat(ref), atol=1e-5), (ours - torch.cat(ref)).abs().max()


def test_random_init_scales_come_from_the_recipe(recipe, distributed):
    """model.init_std (the LLM) and model.vision.initializer_range (the patch embedding) set the init."""
    from ovpipe.models.vlm import build_model

    model = build_model(dataclasses.replace(recipe, model=dataclasses.replace(
        recipe.model, init_std=0.1, vision=dataclasses.replace(recipe.model.vision, initializer_range=0.3))),
        vocab_size=256, image_pad_id=4)
    patch = model.vision.encoder.embeddings.patch_embedding.weight
    qkv = model.language.decoder.layers[0].self_attention.linear_qkv.weight
    assert patch.std().item() == pytest.approx(0.3, rel=0.1)
    assert qkv.std().item() == pytest.approx(0.1, rel=0.1)


ENC, PROJ, LLM = "vision.encoder.", "vision.projector.", "language."


@pytest.mark.parametrize("which, frozen, trained", [("projector", (ENC, LLM), (PROJ,)),
                                                    ("projector+llm", (ENC,), (PROJ, LLM)),
                                                    ("all", (), (ENC, PROJ, LLM))])
def test_trainable_freezes_the_rest(recipe, distributed, which, frozen, trained):
    from ovpipe.models.vlm import build_model, set_trainable

    model = build_model(recipe, vocab_size=256, image_pad_id=4)
    n = set_trainable(model, which)
    params = dict(model.named_parameters())
    assert n == sum(p.numel() for p in params.values() if p.requires_grad) > 0
    for prefix in frozen:
        assert not any(p.requires_grad for k, p in params.items() if k.startswith(prefix)), prefix
    for prefix in trained:
        assert all(p.requires_grad for k, p in params.items() if k.startswith(prefix)), prefix
