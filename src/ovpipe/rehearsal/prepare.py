"""What a cluster run finds in its object store before it starts, written where the recipe names it.

The rehearsal recipe (configs/recipes/rehearsal.yaml) keeps ov15-4b's URIs, so this writes, in the
formats users download, at that recipe's widths (random init, seeded):
  embed.weights        MetaCLIP-H/14 (depth cut) as an open_clip `.bin` state dict
  concepts.vocab       the concept list, one per line
  model.vision.weights an MLCD (RICE-ViT) folder: config.json + model.safetensors
  model.llm.weights    a Qwen3 folder written by save_pretrained with a small max_shard_size (sharded
                       safetensors + index) holding Qwen3's 151,936 embedding rows, its tokenizer beside it
                       (a byte-level BPE with every Qwen3 special token, far fewer tokens than rows)
  caption.model        a small random transformers VLM (the `hf` backend)
  data.input, packing.{stage1,sft}.input   webdataset shards of the synthetic corpora
Each input gets a marker `<uri>.rehearsal.json` written after it; a rerun skips what is marked.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable

import torch

from ovpipe import storage
from ovpipe.config import Recipe
from ovpipe.sharded import shard_name

QWEN3_ROWS = 151_936  # embedding rows of every published Qwen3 checkpoint
SHARDS = 4  # save_pretrained's max_shard_size is set for about this many files: an index, as published


def _marker(uri: str) -> str:
    return uri.rstrip("/") + ".rehearsal.json"


def _once(uri: str, what: dict, write: Callable[[str], None], log) -> bool:
    """write(local_path) into a temporary folder, uploaded to `uri` (a file or a folder), then the marker."""
    marker = _marker(uri)
    if storage.exists(marker) and storage.read_json(marker) == what:
        return False
    with tempfile.TemporaryDirectory(prefix="ovpipe-rehearsal-") as tmp:
        local = os.path.join(tmp, os.path.basename(uri.rstrip("/")) or "out")
        write(local)
        (storage.put_file if os.path.isfile(local) else storage.put_tree)(local, uri.rstrip("/"))
    storage.write_json(marker, what)
    log(f"[rehearsal] wrote {what['kind']} -> {uri}")
    return True


def write_metaclip(recipe: Recipe, path: str) -> None:
    from ovpipe.models.clip import _register, import_open_clip

    cfg = recipe.embed
    open_clip = import_open_clip()
    if cfg.model_config is not None:
        _register(cfg.arch, cfg.model_config)
    torch.manual_seed(recipe.seed)
    model = open_clip.create_model(cfg.arch, pretrained=None)
    torch.save(model.state_dict(), path)  # MetaCLIP's released files are plain state dicts


def write_mlcd(recipe: Recipe, path: str) -> None:
    from transformers import MLCDVisionModel

    from ovpipe.models.vision import mlcd_config

    torch.manual_seed(recipe.seed)
    MLCDVisionModel(mlcd_config(recipe.model.vision, recipe.packing.patch_size)).save_pretrained(path)


def write_qwen3(recipe: Recipe, path: str, rows: int = QWEN3_ROWS) -> None:
    """Qwen3ForCausalLM in bf16 (as published) with `rows` embedding rows and the Qwen3-special tokenizer."""
    from transformers import Qwen3ForCausalLM

    from ovpipe.models.convert import qwen3_hf_config
    from ovpipe.packing.lengths import synthetic_texts
    from ovpipe.packing.tokenizer import QWEN3_SPECIAL, load_tokenizer, train_tokenizer

    train_tokenizer(synthetic_texts(recipe), path, recipe.packing.tokenizer_vocab, specials=QWEN3_SPECIAL)
    tok = load_tokenizer(path)
    if len(tok) >= rows:
        raise ValueError(f"the tokenizer has {len(tok)} tokens, not fewer than the checkpoint's {rows} rows")
    torch.manual_seed(recipe.seed)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(qwen3_hf_config(recipe.model.llm, rows, tok))
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    std = recipe.model.init_std
    for name, p in model.named_parameters():  # normal(0, std) matrices, unit norms: the random init
        with torch.no_grad():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.randn_like(p, dtype=torch.float32) * std)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(path, max_shard_size=max(size // SHARDS, 1 << 20))


def write_captioner(recipe: Recipe, path: str) -> None:
    from ovpipe.packing.lengths import synthetic_texts
    from ovpipe.rehearsal.captioner import build_tiny_vlm

    build_tiny_vlm(path, list(synthetic_texts(recipe, 300)))


def write_dataset(recipe: Recipe, dataset: str, path: str) -> None:
    """The synthetic corpus of `dataset` (mid | stage1 | sft) as webdataset shards under the folder `path`."""
    from ovpipe.data.corpus import n_shards, samples
    from ovpipe.data.tarwriter import TarWriter
    from ovpipe.sharded import Context

    ctx = Context(recipe, "unused", "rehearsal")
    os.makedirs(path)
    for index in range(n_shards(ctx, dataset)):
        writer = TarWriter(os.path.join(path, f"{shard_name(index)}.tar"))
        for sample in samples(ctx, index, dataset):
            writer.write(sample.pop("__key__"), sample)
        writer.close()


def prepare(recipe: Recipe, log=print) -> dict[str, str]:
    """Write every input the recipe names that is not there yet; {what: uri}."""
    r = dataclasses.asdict(recipe)
    jobs = {  # kind: (where, writer, the settings it depends on)
        "metaclip": (recipe.embed.weights, lambda p: write_metaclip(recipe, p), r["embed"]),
        "concepts": (recipe.concepts.vocab, lambda p: storage.write_text(p, storage.read_text(recipe.synth.vocab)),
                     r["synth"]["vocab"]),
        "mlcd": (recipe.model.vision.weights, lambda p: write_mlcd(recipe, p),
                 [r["model"]["vision"], recipe.packing.patch_size]),
        "qwen3": (recipe.model.llm.weights, lambda p: write_qwen3(recipe, p),
                  [r["model"]["llm"], recipe.model.init_std, recipe.packing.tokenizer_vocab, r["synth"]["vocab"]]),
        "captioner": (recipe.caption.model, lambda p: write_captioner(recipe, p), r["synth"]["vocab"]),
        "mid": (recipe.data.input, lambda p: write_dataset(recipe, "mid", p), r["synth"]),
        "stage1": (recipe.packing.stage1.input, lambda p: write_dataset(recipe, "stage1", p), r["packing"]["stage1"]),
        "sft": (recipe.packing.sft.input, lambda p: write_dataset(recipe, "sft", p), r["packing"]["sft"]),
    }
    missing = [k for k, (uri, _, _) in jobs.items() if not uri]
    if missing:
        raise ValueError(f"the rehearsal writes its inputs where the recipe names them; these have no URI: {missing}")
    if recipe.packing.tokenizer != recipe.model.llm.weights:
        raise ValueError("packing.tokenizer must be model.llm.weights (the tokenizer ships in the Qwen3 folder)")
    for kind, (uri, write, settings) in jobs.items():
        what = {"kind": kind, "seed": recipe.seed, "settings": settings}
        _once(uri, json.loads(json.dumps(what)), write, log)
    return {k: uri for k, (uri, _, _) in jobs.items()}
