"""The one token-sequence builder: what the training loader encodes and what packing counts.

A sample = turns (Qwen chat roles) + tokens per image. Each turn is laid out as

    <|im_start|> "{role}\\n" content <|im_end|> "\\n"

where every `<image>` in the content becomes <|vision_start|> <|image_pad|>*n <|vision_end|>.
Text pieces (the role header, the content between images, the trailing newline) are tokenized one by
one, never merged across a special token or an image, so

    length = sum(len(piece tokens)) + special tokens + sum(n_i + 2)

exactly, and `lengths()` can batch-encode the pieces of many samples at once. Both `encode` and
`lengths` go through `_layout`, so they cannot disagree. Special-token strings inside text are
tokenized as plain text (no injection of <|im_end|> etc. from data). The loss mask is 1 on the
assistant's content tokens and its <|im_end|>.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from ovpipe.packing.tokenizer import SPECIAL
from ovpipe.packing.wordcache import WordCache

PLACEHOLDER = "<image>"
ROLES = ("system", "user", "assistant")
_LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "system": "system"}
IDS, TEXT, IMAGE = "ids", "text", "image"  # segment kinds
_CHUNK = 8192  # texts per batch-encode call (bounds the memory of Encoding objects)


@dataclass
class Encoded:
    input_ids: np.ndarray  # int32
    loss_mask: np.ndarray  # uint8
    image_token_counts: list[int]


class _Encoder:
    """A tokenizer's text path with special tokens disabled, plus the token ids the layout needs."""

    def __init__(self, tok):
        from tokenizers import Tokenizer

        backend = tok if isinstance(tok, Tokenizer) else tok.backend_tokenizer
        ids = {k: backend.token_to_id(v) for k, v in SPECIAL.items()}
        missing = [SPECIAL[k] for k, v in ids.items() if v is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing} (load it with load_tokenizer)")
        self.ids = ids
        self.text = Tokenizer.from_str(backend.to_str())  # a copy: we change its settings
        self.text.encode_special_tokens = True
        self.text.no_padding()
        self.text.no_truncation()
        self.words = WordCache(self.text)
        newline = self.encode(["\n"])[0]
        self.frames = {}  # role -> (opening segment, closing segment, newline segment, their length, mask)
        for role in ROLES:
            mask = 1 if role == "assistant" else 0
            opening = [ids["im_start"], *self.encode([f"{role}\n"])[0]]
            self.frames[role] = ((IDS, opening, 0), (IDS, [ids["im_end"]], mask), (IDS, newline, 0),
                                 len(opening) + 1 + len(newline), mask)

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        out: list[list[int]] = []
        for i in range(0, len(texts), _CHUNK):
            out += [e.ids for e in self.text.encode_batch_fast(texts[i:i + _CHUNK], add_special_tokens=False)]
        return out

    def encode(self, texts: list[str]) -> list[list[int]]:
        if not self.words.enabled:
            return self._tokenize(texts)
        return self.words.encode(texts)

    def count(self, texts: list[str]) -> np.ndarray:
        if not self.words.enabled:
            return np.array([len(ids) for ids in self._tokenize(texts)], np.int64)
        return np.array(self.words.count(texts), np.int64)


_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per tokenizer object (add no tokens later)


def _encoder(tok) -> _Encoder:
    enc = _ENCODERS.get(tok)
    if enc is None:
        enc = _ENCODERS[tok] = _Encoder(tok)
    return enc


def _layout(turns, image_tokens, enc: _Encoder, texts: list[str], index: dict[str, int]):
    """Segments of one sample and its number of tokens outside the variable text pieces.

    A segment is (kind, value, mask): IDS = a list of token ids, TEXT = an index into `texts`
    (deduplicated through `index`), IMAGE = n pad tokens framed by vision start/end.
    """
    segs: list[tuple] = []
    fixed = 0
    n_images = len(image_tokens)
    img = 0
    for turn in turns:
        try:
            role, content = turn["role"], turn["content"]
        except (TypeError, KeyError):
            raise ValueError(f"a turn must be a dict with 'role' and 'content', got {turn!r:.80}") from None
        frame = enc.frames.get(role)
        if frame is None:
            raise ValueError(f"unknown role {role!r} (expected one of {ROLES}; see normalize_turns)")
        if not isinstance(content, str):
            raise ValueError(f"turn content must be a string, got {type(content).__name__}")
        opening, closing, newline, n_frame, mask = frame
        segs.append(opening)
        fixed += n_frame
        parts = content.split(PLACEHOLDER) if PLACEHOLDER in content else (content,)
        if mask and len(parts) > 1:
            raise ValueError("<image> placeholder in an assistant turn")
        for k, part in enumerate(parts):
            if k:
                if img < n_images:
                    n = image_tokens[img]
                    if n <= 0:
                        raise ValueError(f"image {img} has {n} tokens")
                    segs.append((IMAGE, n, 0))
                    fixed += n + 2
                img += 1
            if part:
                j = index.get(part)
                if j is None:
                    j = index[part] = len(texts)
                    texts.append(part)
                segs.append((TEXT, j, mask))
        segs.append(closing)
        segs.append(newline)
    if img != n_images:
        raise ValueError(f"{img} <image> placeholders but {n_images} images")
    return segs, fixed


def encode(turns, image_tokens, tok) -> Encoded:
    """Token ids + loss mask of one sample; len(input_ids) == lengths([(turns, image_tokens)])[0]."""
    enc = _encoder(tok)
    texts: list[str] = []
    image_tokens = list(image_tokens)
    segs, fixed = _layout(turns, image_tokens, enc, texts, {})
    piece_ids = enc.encode(texts)
    total = fixed + sum(len(piece_ids[v]) for kind, v, _ in segs if kind is TEXT)  # what lengths() reports
    ids = np.empty(total, np.int32)
    mask = np.zeros(total, np.uint8)
    pos = 0
    for kind, value, m in segs:
        if kind is IMAGE:
            ids[pos] = enc.ids["vision_start"]
            ids[pos + 1:pos + 1 + value] = enc.ids["image_pad"]
            ids[pos + 1 + value] = enc.ids["vision_end"]
            pos += value + 2
            continue
        seg = value if kind is IDS else piece_ids[value]
        ids[pos:pos + len(seg)] = seg
        if m:
            mask[pos:pos + len(seg)] = 1
        pos += len(seg)
    if pos != total:  # cannot happen: both come from the same layout
        raise RuntimeError(f"sequence layout ({pos} tokens) and length ({total}) disagree")
    return Encoded(ids, mask, image_tokens)


def lengths(samples, tok) -> np.ndarray:
    """int64 token count per (turns, image_tokens) sample, equal to len(encode(...).input_ids).

    All text pieces of all samples are deduplicated and batch-encoded in one pass.
    """
    enc = _encoder(tok)
    texts: list[str] = []
    index: dict[str, int] = {}
    fixed = np.empty(len(samples), np.int64)
    piece_sample: list[int] = []
    piece_text: list[int] = []
    for s, (turns, image_tokens) in enumerate(samples):
        segs, fixed[s] = _layout(turns, image_tokens, enc, texts, index)
        for kind, value, _ in segs:
            if kind is TEXT:
                piece_sample.append(s)
                piece_text.append(value)
    counts = enc.count(texts)
    if piece_text:
        fixed += np.bincount(np.asarray(piece_sample), weights=counts[np.asarray(piece_text)],
                             minlength=len(samples)).astype(np.int64)
    return fixed


def caption_turns(caption: str, prompt: str = "") -> list[dict]:
    """Stage 1 / 1.5 sample: one image (+ optional prompt) from the user, the caption as the answer."""
    return [{"role": "user", "content": PLACEHOLDER + prompt}, {"role": "assistant", "content": caption}]


def normalize_turns(obj) -> list[dict]:
    """Our [{"role", "content"}] or LLaVA's [{"from", "value"}] (also under "conversations"/"messages")."""
    if isinstance(obj, dict):
        obj = obj.get("conversations", obj.get("messages"))
    if not isinstance(obj, (list, tuple)) or not obj:
        raise ValueError("empty conversation" if isinstance(obj, (list, tuple)) or obj is None
                         else f"a conversation must be a list of turns, got {type(obj).__name__}")
    out = []
    for i, turn in enumerate(obj):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {i} is a {type(turn).__name__}, not a dict")
        if "role" in turn:
            role, content = turn["role"], turn.get("content")
            if not isinstance(role, str) or role not in ROLES:
                raise ValueError(f"turn {i}: unknown role {role!r} (expected one of {ROLES})")
        elif "from" in turn:
            role = _LLAVA_ROLES.get(turn["from"]) if isinstance(turn["from"], str) else None
            content = turn.get("value")
            if role is None:
                raise ValueError(f"turn {i}: unknown speaker {turn['from']!r} (expected human, gpt or system)")
        else:
            raise ValueError(f"turn {i} has neither 'role' nor 'from': keys {sorted(turn)}")
        if not isinstance(content, str):
            raise ValueError(f"turn {i}: content must be a string, got {type(content).__name__}")
        if role == "assistant" and PLACEHOLDER in content:
            raise ValueError(f"turn {i}: <image> placeholder in an assistant turn")
        out.append({"role": role, "content": content})
    if not any(t["role"] == "assistant" for t in out):
        raise ValueError("no assistant turn (nothing to train on)")
    return out
