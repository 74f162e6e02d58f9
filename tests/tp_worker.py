"""Run under torchrun by tests/test_tensor_parallel.py: load HF weights into the model at the recipe's
tensor_parallel, compute per-token losses on a fixed packed batch, export (gathered on rank 0).

    python -m torch.distributed.run --nproc-per-node N tests/tp_worker.py OUT_DIR --set k=v ...
"""
import argparse
import json
import os

import torch
import torch.distributed as dist


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()

    from megatron.core.packed_seq_params import PackedSeqParams

    from ovpipe.config import load_recipe
    from ovpipe.models.convert import export_hf, language_state, load_pretrained, vocab_rows
    from ovpipe.models.vlm import build_model
    from ovpipe.packing.tokenizer import load_tokenizer
    from ovpipe.train.loop import init_distributed

    recipe = load_recipe("configs/recipes/tiny.yaml", args.set)
    init_distributed(recipe)
    tok = load_tokenizer(recipe.packing.tokenizer)
    vocab, rows = vocab_rows(recipe, len(tok))
    model = build_model(recipe, vocab, image_pad_id=tok.convert_tokens_to_ids("<|image_pad|>")).eval()
    load_pretrained(model, recipe, recipe.model.vision.weights)

    g = torch.Generator().manual_seed(0)
    lengths = [9, 14, 6]
    ids = torch.randint(0, len(tok), (1, sum(lengths)), generator=g)
    labels = torch.randint(0, len(tok), (1, sum(lengths)), generator=g)
    cu = torch.tensor([0, 9, 23, 29], dtype=torch.int32)
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max(lengths),
                          max_seqlen_kv=max(lengths))
    with torch.no_grad():
        losses = model(ids, pos, labels=labels, packed_seq_params=psp)[0]
    full = language_state(model)
    if dist.get_rank() == 0:
        export_hf(model, recipe, recipe.packing.tokenizer, os.path.join(args.out, "hf"), rows, full)
        with open(os.path.join(args.out, "losses.json"), "w") as f:
            json.dump({"ids": ids[0].tolist(), "labels": labels[0].tolist(), "lengths": lengths,
                       "losses": losses.tolist(), "vocab": vocab, "rows": rows,
                       "local_rows": model.language.embedding.word_embeddings.weight.shape[0],
                       "local_params": sum(p.numel() for p in model.parameters())}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
