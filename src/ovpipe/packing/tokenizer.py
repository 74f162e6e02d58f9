"""Chat/vision special tokens, and a small byte-level BPE tokenizer trained locally (tests, tiny recipe).

Real recipes load the Qwen3 tokenizer folder from a path; both go through load_tokenizer, which checks
that the special tokens the sequence builder relies on exist.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

SPECIAL = {
    "pad": "<|endoftext|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "vision_start": "<|vision_start|>",
    "image_pad": "<|image_pad|>",
    "vision_end": "<|vision_end|>",
}

# Qwen3's added tokens, in its order (ids 151643-151668 in the published tokenizer): a tokenizer trained
# here with these (train_tokenizer(specials=QWEN3_SPECIAL)) carries every token a Qwen3 folder has.
QWEN3_SPECIAL = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)

# Qwen-style template; `<image>` in a string content (or an {"type": "image"} part) becomes one
# vision block with a single <|image_pad|>; the processor/loader expands it to the image's tokens.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] | replace('<image>', '<|vision_start|><|image_pad|><|vision_end|>') -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def train_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 2000,
                    specials: Iterable[str] = tuple(SPECIAL.values())) -> str:
    """Train a deterministic byte-level BPE on `texts` and save it as a HF fast-tokenizer folder; `specials`
    (which must hold SPECIAL's) come first, then the learnt tokens (vocab_size counts all)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys(specials))
    missing = [t for t in SPECIAL.values() if t not in specials]
    if missing:
        raise ValueError(f"specials lack {missing}: the sequence builder needs them")
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size {vocab_size} < 256 bytes + {len(specials)} special tokens")
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer=trainer)  # counts then merges: deterministic given the texts

    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=SPECIAL["pad"], eos_token=SPECIAL["im_end"],
                                   model_max_length=1 << 20, clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)  # transformers 5 writes the template to chat_template.jinja ...
    cfg_path = Path(out_dir) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE  # ... and readers that look in the config find it there too
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return out_dir


def load_tokenizer(path: str):
    """A transformers fast tokenizer from a local folder; ValueError if a SPECIAL token is missing."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(path)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path!r} (tokenizers load from a local folder only)")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise ValueError(f"{path!r} did not load as a fast tokenizer (got {type(tok).__name__})")
    added = {t.content for t in tok.backend_tokenizer.get_added_tokens_decoder().values()}
    missing = [s for s in SPECIAL.values() if s not in added]
    if missing:
        raise ValueError(f"tokenizer at {path!r} lacks special tokens {missing}: chat/vision sequences "
                         f"need all of {list(SPECIAL.values())}")
    return tok
