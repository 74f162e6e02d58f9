"""Offline lmms-eval tasks built from the synthetic held-out split (synth_stages.eval_items).

`write_tasks(out_dir)` writes an lmms-eval include folder (pass it with `--include_path`):

    out_dir/
      images/eval-{task}-{lang}-{i:06d}.png     the held-out images (never seen in training)
      data/{task_name}.jsonl                    one record per item; `image` is an absolute path
      {task_name}.yaml                          dataset_path: json + dataset_kwargs.data_files
      ovpipe_local.yaml                         the group of all tasks below
      utils.py                                  re-exports this module's functions for `!function utils.X`
      tasks.json                                {task_name: {chance, metric, task, lang, format}}

Tasks, for task in color/shape/count and lang in en/zh:
  ovpipe_{task}_{lang}      short answer: the training question; `exact_match` after `normalize`.
  ovpipe_{task}_mc_{lang}   generated multiple choice: the question + "Options: a, b, ..." ("选项：a、b…");
                            `accuracy` = the generated text equals the right option after `normalize`.
  ovpipe_{task}_ll_{lang}   likelihood multiple choice (output_type multiple_choice): the option with the
                            lowest negative log-likelihood as the answer turn wins; `accuracy`.
  ovpipe_caption_en         "Describe the image."; `caption_f1` = F1 of content words (colours, shapes,
                            numbers) against a caption of the scene's shapes (`reference_caption`).
All metrics are in [0, 1], higher is better. Every task lists its chance level in tasks.json: 1/len(choices)
for the QA tasks, and for captioning the mean F1 of another item's reference caption used as the prediction.
"""
from __future__ import annotations

import ast
import json
import os
import re
from collections import Counter

from ovpipe.data.synth import COLORS, NUMBER_WORDS, PLURAL, SHAPES, _an, _join
from ovpipe.data.synth_stages import TASKS, _ask, eval_items, with_options

GROUP = "ovpipe_local"
UNTIL = ["<|im_end|>", "\n"]
SHORT_TOKENS, CAPTION_TOKENS = 8, 48
_PUNCT = ".,!?;:。，！？；：、'\"“”‘’`)( "
_METRIC = {"short": "exact_match", "mc": "accuracy", "mc_ll": "accuracy", "caption": "caption_f1"}
_PROCESS = {"short": "process_short", "mc": "process_mc", "mc_ll": "process_mc_ll", "caption": "process_caption"}

# Caption content words: colour, shape (plural -> singular) and number words; "a"/"an" count as "one".
_CONTENT = {**{c: c for c in COLORS}, **{s: s for s in SHAPES}, **{p: s for s, p in PLURAL.items()},
            **{w: w for w in NUMBER_WORDS.values()}, "a": "one", "an": "one"}
# Clauses about other things than the shapes, which training captions add at random: dropped before counting.
_NOT_SHAPES = re.compile(r"\bon (?:a|an|the) [a-z]+ background\b|\b(?:and |with )?the (?:word|text) \S+")

_UTILS = '''"""Written by ovpipe.evaluate.local_tasks.write_tasks: lmms-eval resolves `!function utils.NAME`
relative to the task YAML, so the functions live in ovpipe and are re-exported here."""
from ovpipe.evaluate.local_tasks import (  # noqa: F401
    doc_to_visual,
    process_caption,
    process_mc,
    process_mc_ll,
    process_short,
)
'''


# ---------------------------------------------------------------- metrics

def normalize(text: str) -> str:
    """strip, lowercase, drop trailing (and leading) punctuation incl. Chinese "。", collapse inner spaces."""
    return " ".join(str(text).strip().lower().strip(_PUNCT).split())


def exact_match(prediction: str, answer: str) -> float:
    return float(normalize(prediction) == normalize(answer))


def content_words(text: str) -> Counter:
    """The multiset of colour / shape / number words of an English caption (see _CONTENT, _NOT_SHAPES)."""
    words = re.findall(r"[a-z]+", _NOT_SHAPES.sub(" ", str(text).lower()))
    return Counter(_CONTENT[w] for w in words if w in _CONTENT)


def caption_f1(prediction: str, reference: str) -> float:
    """F1 of the content-word multisets of prediction and reference (0 when either has none)."""
    pred, ref = content_words(prediction), content_words(reference)
    overlap = sum((pred & ref).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(pred.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def reference_caption(scene: dict) -> str:
    """The shapes of a scene as a training-style caption: "two red circles and a blue star"."""
    groups = sorted(Counter((s["color"], s["shape"]) for s in scene["shapes"]).items(),
                    key=lambda g: (-g[1], g[0]))
    return _join([f"{_an(c)} {c} {s}" if n == 1 else f"{NUMBER_WORDS[n]} {c} {PLURAL[s]}"
                  for (c, s), n in groups], ", ", " and ")


def caption_chance(references: list[str], shifts: int = 5) -> float:
    """Expected caption_f1 of a caption of a random other scene: each reference scored as the prediction
    for the items 1..shifts places further on (cyclically)."""
    n = len(references)
    if n < 2:
        return 0.0
    pairs = [(references[(i + k) % n], references[i]) for k in range(1, min(shifts, n - 1) + 1) for i in range(n)]
    return sum(caption_f1(p, r) for p, r in pairs) / len(pairs)


# ---------------------------------------------------------------- lmms-eval hooks (YAML `!function utils.X`)

def doc_to_visual(doc: dict) -> list:
    from PIL import Image

    with Image.open(doc["image"]) as im:
        return [im.convert("RGB")]


def _first(results) -> str:
    return results[0] if results else ""


def process_short(doc: dict, results: list[str]) -> dict:
    return {"exact_match": exact_match(_first(results), doc["answer"])}


def process_mc(doc: dict, results: list[str]) -> dict:
    return {"accuracy": exact_match(_first(results), doc["answer"])}


def _pair(result) -> tuple[float, bool]:
    # lmms-eval 0.7.3's evaluator stores every model output through unwrap_generation_output, which turns
    # a loglikelihood (float, bool) tuple into its str(): read that back.
    if isinstance(result, str):
        result = ast.literal_eval(result)
    return float(result[0]), bool(result[1])


def process_mc_ll(doc: dict, results: list) -> dict:
    """results: one (negative log-likelihood, is_greedy) per choice, in doc["choices"] order (OvpipeLMM
    returns the NLL, as lmms-eval's own multiple_choice scoring assumes: it takes the argmin)."""
    nll = [_pair(r)[0] for r in results]
    if len(nll) != len(doc["choices"]):
        raise ValueError(f"{len(nll)} likelihoods for {len(doc['choices'])} choices")
    best = min(range(len(nll)), key=nll.__getitem__)
    return {"accuracy": float(doc["choices"][best] == doc["answer"])}


def process_caption(doc: dict, results: list[str]) -> dict:
    return {"caption_f1": caption_f1(_first(results), doc["answer"])}


# ---------------------------------------------------------------- writing the include folder

def _q(value) -> str:
    """A YAML scalar/flow value (JSON is valid YAML flow syntax; ASCII-escaped for safety)."""
    return json.dumps(value, ensure_ascii=True)


def _yaml(name: str, fmt: str, data_file: str) -> str:
    metric = _METRIC[fmt]
    lines = [f"task: {name}",
             "dataset_path: json",
             "dataset_kwargs:",
             f"  data_files: {{test: {_q(data_file)}}}",
             "test_split: test",
             "doc_to_visual: !function utils.doc_to_visual",
             "doc_to_text: prompt",
             "doc_to_target: answer"]
    if fmt == "mc_ll":
        lines += ["output_type: multiple_choice",
                  "doc_to_choice: choices",
                  'target_delimiter: ""']
    else:
        tokens = CAPTION_TOKENS if fmt == "caption" else SHORT_TOKENS
        lines += ["output_type: generate_until",
                  "generation_kwargs:",
                  f"  max_new_tokens: {tokens}",
                  f"  until: {_q(UNTIL)}",
                  "  temperature: 0",
                  "  do_sample: false"]
    lines += [f"process_results: !function utils.{_PROCESS[fmt]}",
              "metric_list:",
              f"  - metric: {metric}",
              "    aggregation: mean",
              "    higher_is_better: true",
              "metadata:",
              "  version: 1.0"]
    return "\n".join(lines) + "\n"


def _write_jsonl(path: str, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")


def _save_image(images_dir: str, item: dict) -> str:
    path = os.path.join(images_dir, f"{item['id']}.png")
    with open(path, "wb") as f:
        f.write(item["image"])
    return path


def write_tasks(out_dir: str, *, seed: int = 7, count: int = 100, size: int = 64, langs=("en", "zh"),
                vocab: list[str] | None = None) -> dict[str, dict]:
    """Write the include folder described in the module docstring; returns (and writes as tasks.json)
    {task_name: {"chance", "metric", "task", "lang", "format"}}.

    `vocab` is only validated by eval_items (held-out items carry no concept indices); the default
    stands in for configs/vocab/tiny-concepts.txt, which an installed package may not ship.
    """
    out_dir = os.path.abspath(out_dir)
    images_dir, data_dir = os.path.join(out_dir, "images"), os.path.join(out_dir, "data")
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(data_dir, exist_ok=True)
    vocab = list(vocab) if vocab else list(SHAPES)
    tasks: dict[str, dict] = {}

    def emit(name: str, fmt: str, task: str, lang: str, records: list[dict], chance: float) -> None:
        data_file = os.path.join(data_dir, f"{name}.jsonl")
        _write_jsonl(data_file, records)
        with open(os.path.join(out_dir, f"{name}.yaml"), "w", encoding="utf-8") as f:
            f.write(_yaml(name, fmt, data_file))
        tasks[name] = {"chance": chance, "metric": _METRIC[fmt], "task": task, "lang": lang, "format": fmt}

    for task in TASKS:
        for lang in langs:
            items = list(eval_items(seed, count, vocab, task=task, size=size, lang=lang))
            base = [{"id": it["id"], "image": _save_image(images_dir, it), "question": it["question"],
                     "answer": it["answer"], "choices": list(it["choices"]), "task": task, "lang": lang,
                     "scene": json.dumps(it["scene"], ensure_ascii=False, sort_keys=True)} for it in items]
            chance = 1 / len(items[0]["choices"]) if items else 0.0
            emit(f"ovpipe_{task}_{lang}", "short", task, lang, [{**r, "prompt": r["question"]} for r in base], chance)
            emit(f"ovpipe_{task}_mc_{lang}", "mc", task, lang,
                 [{**r, "prompt": with_options(r["question"], task, lang)} for r in base], chance)
            emit(f"ovpipe_{task}_ll_{lang}", "mc_ll", task, lang, [{**r, "prompt": r["question"]} for r in base],
                 chance)

    if "en" in langs:  # the count items: 1-4 shapes, balanced
        items = list(eval_items(seed, count, vocab, task="count", size=size, lang="en"))
        records = [{"id": it["id"], "image": _save_image(images_dir, it), "question": _ask("caption", "en"),
                    "prompt": _ask("caption", "en"), "answer": reference_caption(it["scene"]), "choices": [],
                    "task": "caption", "lang": "en",
                    "scene": json.dumps(it["scene"], ensure_ascii=False, sort_keys=True)} for it in items]
        emit("ovpipe_caption_en", "caption", "caption", "en", records,
             caption_chance([r["answer"] for r in records]))

    with open(os.path.join(out_dir, f"{GROUP}.yaml"), "w", encoding="utf-8") as f:
        f.write(f"group: {GROUP}\ntask:\n" + "".join(f"  - {name}\n" for name in tasks))
    with open(os.path.join(out_dir, "utils.py"), "w", encoding="utf-8") as f:
        f.write(_UTILS)
    with open(os.path.join(out_dir, "tasks.json"), "w", encoding="utf-8") as f:
        json.dump(tasks, f, indent=2, sort_keys=True)
        f.write("\n")
    return tasks
