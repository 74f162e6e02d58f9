"""Benchmark of text-token counting: ovpipe's counter (what `sequence.lengths` calls: the WordCache
behind `_Encoder.count`) against Hugging Face `tokenizers` (Tokenizer.encode_batch and, where this
version has it, encode_batch_fast), on the SAME texts, with counts checked equal for every text.

Cells: EN and ZH captions of ~20, ~150 and ~400 tokens (the paper's recaptions reach ~380 words).
EN is prose-like (a few hundred real caption words Zipf-weighted, a long tail of made-up names,
numbers, possessives, hyphens, commas and sentences); ZH is clauses of Zipf-drawn 1-3 character
words split by Chinese punctuation, with some digits and Latin words, so a CJK run (one pre-token
under both regexes) is 3-25 characters. Seeded. Word/character budgets are calibrated so that each
cell's mean token count hits its target with the GPT-2-shaped tokenizer.

Tokenizers, trained here on the same kind of text (vocab 8000): "gpt2" = train_tokenizer's (NFC,
ByteLevel with GPT-2's regex); "qwen" = NFC + Split(Qwen2's regex, isolated) + ByteLevel without
regex, the production shape (Qwen3).

Timing: one worker process pinned with taskset to core 0 (RAYON_NUM_THREADS=1,
TOKENIZERS_PARALLELISM=false). Per cell: a cold first batch (fresh counter, fresh tokenizer copy),
then --warm batches of the same distribution to warm both caches, then --repeats batches of unseen
texts, each counted by all three methods; the rate is text tokens per CPU second of the call, best
over the repeats. The tokenizers time is encode_batch alone (reading the counts out of the Encoding
objects is not charged to it).

    flock /tmp/ovpipe-cpu.lock python bench/tokens_bench.py
    python bench/tokens_bench.py --quick

Writes bench/results/tokens.json and tokens.png (tokens_quick.* with --quick).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402

TARGETS = (20, 150, 400)  # mean text tokens per caption
BATCH = {20: 4096, 150: 2048, 400: 1024}  # texts per count call (~80k-400k tokens)
VOCAB = 8000
GOAL = 2.0  # ours / the faster tokenizers call
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

EN_WORDS = """a the an of in on with and is are at to near two three its their his her this that from by
 under over behind next beside front top bottom left right side background foreground while as which
 man woman person people child boy girl dog cat bird horse car bus truck bicycle train plane boat street
 road building house window door table chair bed room kitchen wall floor sky cloud tree grass field water
 river lake sea beach mountain hill rock sand snow city park garden sign light lamp shirt jacket hat dress
 shoes bag plate bowl cup glass bottle food pizza sandwich cake fruit apple banana flower leaves group crowd
 image photo picture scene view area surface edge corner center pattern texture color shadow reflection
 red blue green yellow white black brown gray orange pink purple dark bright large small tall short long
 wide old young new wooden metal plastic stone glass-like colorful blurry sunny cloudy wet empty busy
 open closed round square striped detailed quiet modern ancient several many few some other each both
 sitting standing walking running holding wearing looking riding playing eating lying parked covered
 filled surrounded shown visible displayed placed hanging leaning facing smiling reading talking waiting
 appears shows features depicts contains includes has there it they he she be been being can seems
 also very slightly partly mostly clearly above below around through across along toward into out up
 down off far close together inside outside between among during before after against""".split()
ZH_PUNCT = ["，"] * 6 + ["、"] * 2 + ["；", "："]


def _pseudo_names(rng: random.Random, n: int) -> list[str]:
    syll = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "ee")]
    return sorted({"".join(rng.choice(syll) for _ in range(rng.choice([2, 2, 3, 4]))) for _ in range(n)})


def _zipf(rng: random.Random, items: list):
    cum = np.cumsum(1.0 / np.arange(1, len(items) + 1))
    cum /= cum[-1]
    gen = np.random.default_rng(rng.randrange(1 << 30))
    return lambda n: [items[i] for i in np.minimum(np.searchsorted(cum, gen.random(n)), len(items) - 1)]


class Captions:
    """Seeded EN / ZH caption generator; `make(lang, n, budget)` -> n texts of ~budget words / characters."""

    def __init__(self, seed: int):
        vrng = random.Random(0)  # one vocabulary for every generator
        names = _pseudo_names(vrng, 6000)
        vrng.shuffle(names)
        self.en = EN_WORDS + [w.capitalize() if i % 3 == 0 else w for i, w in enumerate(names)]
        pick_char = _zipf(vrng, [chr(0x4E00 + i) for i in vrng.sample(range(0x51A5), 3500)])
        self.zh = list(dict.fromkeys("".join(pick_char(vrng.choice([1, 2, 2, 2, 3]))) for _ in range(20000)))
        self.rng = random.Random(seed)
        self.pick_en, self.pick_zh = _zipf(self.rng, self.en), _zipf(self.rng, self.zh)

    def _en(self, budget: int) -> str:
        rng, out, n = self.rng, [], 0
        while n < budget:
            words = self.pick_en(min(rng.randint(5, 18), budget - n))
            words[0] = words[0].capitalize()
            for i in range(1, len(words)):
                r = rng.random()
                if r < 0.06:
                    words[i] += ","
                elif r < 0.08:
                    words[i] = str(rng.choice([2, 3, 4, 12, 1990, 2.5, 100])) + rng.choice(["", "s", "%"])
                elif r < 0.10:
                    words[i] += "'s"
                elif r < 0.11:
                    words[i] = f"\"{words[i]}\""
                elif r < 0.12:
                    words[i] += "-" + self.pick_en(1)[0]
            out.append(" ".join(words) + rng.choice([".", ".", ".", "!", ";"]))
            n += len(words)
        return " ".join(out)

    def _zh(self, budget: int) -> str:
        rng, out, n = self.rng, [], 0
        while n < budget:
            clause = "".join(self.pick_zh(max(1, min(rng.randint(2, 9), (budget - n) // 2))))
            r = rng.random()
            if r < 0.08:
                clause = str(rng.randint(2, 2024)) + rng.choice(["个", "年", "只", "%"]) + clause
            elif r < 0.12:
                clause += rng.choice(["LOGO", "T恤", " iPhone ", "“" + clause[:3] + "”", "（" + clause[:2] + "）"])
            out.append(clause + (rng.choice(ZH_PUNCT) if rng.random() < 0.8 else "。"))
            n += len(clause)
        return "".join(out)[:-1] + "。"

    def make(self, lang: str, n: int, budget: float) -> list[str]:
        gen = self._en if lang == "en" else self._zh
        return [gen(max(1, round(budget * self.rng.uniform(0.6, 1.4)))) for _ in range(n)]


def train(kind: str, texts: list[str], vocab: int):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    from ovpipe.packing.tokenizer import SPECIAL

    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False) if kind == "gpt2" else \
        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(SPECIAL.values()), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer=trainer)
    return tk


# ---------------------------------------------------------------- worker (pinned to one core)

def _timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - t0


def measure_cell(tok_json: str, batches: list[list[str]], warm: int) -> dict:
    """batches[0]: cold; [1:1+warm]: warm-up; the rest: measured, one repeat each."""
    from tokenizers import Tokenizer

    from ovpipe.packing import sequence

    enc = sequence._Encoder(Tokenizer.from_str(tok_json))
    assert enc.words.enabled, "the word cache's self-check failed: the counter would fall back to tokenizers"
    hf = Tokenizer.from_str(enc.text.to_str())  # same settings, its own (cold) cache
    hf.encode_special_tokens = True
    methods = {"ours": lambda b: enc.count(b),
               "encode_batch": lambda b: hf.encode_batch(b, add_special_tokens=False)}
    if hasattr(hf, "encode_batch_fast"):
        methods["encode_batch_fast"] = lambda b: hf.encode_batch_fast(b, add_special_tokens=False)
    runs = {m: [] for m in methods}
    for k, batch in enumerate(batches):
        res = {m: _timed(lambda f=f, b=batch: f(b)) for m, f in methods.items()}
        truth = [len(e.ids) for e in res["encode_batch"][0]]
        for m, (out, cpu, wall) in res.items():
            counts = out.tolist() if m == "ours" else [len(e.ids) for e in out]
            if counts != truth:
                bad = next(i for i, (a, b) in enumerate(zip(counts, truth)) if a != b)
                raise SystemExit(f"{m} count differs on text {bad}: {counts[bad]} != {truth[bad]}: {batch[bad]!r:.200}")
            if k == 0 or k > warm:
                runs[m].append({"tokens": sum(truth), "cpu_s": cpu, "wall_s": wall})
    out = {"texts_per_batch": len(batches[0]), "tokens_per_text": float(np.mean([r["tokens"] for r in runs["ours"]])
                                                                      / len(batches[0])), "methods": {}}
    for m, rs in runs.items():
        rates = [r["tokens"] / r["cpu_s"] for r in rs[1:]]
        out["methods"][m] = {"cold_tokens_per_cpu_s": rs[0]["tokens"] / rs[0]["cpu_s"],
                             "tokens_per_cpu_s": max(rates), "all_tokens_per_cpu_s": [round(r) for r in rates],
                             "best_wall_tokens_per_s": max(r["tokens"] / r["wall_s"] for r in rs[1:])}
    out["cache_words"] = len(enc.words.words.ids)
    return out


def worker(path: str) -> None:
    with open(path, "rb") as f:
        job = pickle.load(f)
    results = {}
    for (kind, lang, target), batches in job["cells"].items():
        results[f"{kind}/{lang}/{target}"] = measure_cell(job["tokenizers"][kind], batches, job["warm"])
    with open(path + ".out", "w") as f:
        json.dump(results, f)


# ---------------------------------------------------------------- driver

def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = result["tokenizers"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(7 * len(kinds), 4.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        cells = [c for c in result["cells"] if c.startswith(kind + "/")]
        methods = list(result["cells"][cells[0]]["methods"])
        x = np.arange(len(cells))
        for k, m in enumerate(methods):
            ax.bar(x + (k - (len(methods) - 1) / 2) * 0.8 / len(methods),
                   [result["cells"][c]["methods"][m]["tokens_per_cpu_s"] / 1e6 for c in cells],
                   width=0.8 / len(methods), label=m)
        for i, c in enumerate(cells):
            ax.annotate(f"{result['cells'][c]['ratio']:.1f}x", (i, 0), xytext=(0, -28),
                        textcoords="offset points", ha="center", fontsize=9)
        ax.set_xticks(x, [c.split("/", 1)[1].replace("/", " ~") + " tok" for c in cells])
        ax.set(ylabel="text tokens per core-second (M)", title=f"{kind}-shaped byte-level BPE, one core, warm "
               f"(ours / faster tokenizers below)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warm", type=int, default=3, help="warm-up batches per cell")
    ap.add_argument("--repeats", type=int, default=5, help="measured batches per cell (best is kept)")
    ap.add_argument("--vocab", type=int, default=VOCAB)
    ap.add_argument("--tokenizers", nargs="+", default=["gpt2", "qwen"], choices=["gpt2", "qwen"])
    ap.add_argument("--quick", action="store_true", help="1 warm-up, 2 repeats, quarter-size batches")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    if args.quick:
        args.warm, args.repeats = 1, 2
    import tokenizers

    t0 = time.perf_counter()
    gen = Captions(seed=4)
    corpus = [t for lang in ("en", "zh") for b in (12, 60, 200) for t in gen.make(lang, 4000, b)]
    toks = {kind: train(kind, corpus, args.vocab) for kind in args.tokenizers}
    ref = next(iter(toks.values()))
    gen = Captions(seed=1)
    cells = {}
    n_batches = 1 + args.warm + args.repeats
    for lang in ("en", "zh"):
        probe = gen.make(lang, 400, 100)  # tokens per word (EN) / character (ZH) of this tokenizer
        units = [len(t.split()) if lang == "en" else sum(not c.isascii() for c in t) for t in probe]
        per_unit = sum(len(e.ids) for e in ref.encode_batch(probe, add_special_tokens=False)) / sum(units)
        for target in TARGETS:
            size = BATCH[target] // (4 if args.quick else 1)
            batches = [gen.make(lang, size, target / per_unit) for _ in range(n_batches)]
            for kind in toks:
                cells[(kind, lang, target)] = batches
    print(f"inputs and tokenizers ready in {time.perf_counter() - t0:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        job = os.path.join(tmp, "job.pkl")
        with open(job, "wb") as f:
            pickle.dump({"cells": cells, "warm": args.warm, "tokenizers": {k: t.to_str() for k, t in toks.items()}}, f)
        env = dict(os.environ, RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")
        cmd = [sys.executable, __file__, "--worker", job]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", "0", *cmd]
        subprocess.run(cmd, env=env, check=True)
        with open(job + ".out") as f:
            measured = json.load(f)
    for name, cell in measured.items():
        ms = cell["methods"]
        best = max((m for m in ms if m != "ours"), key=lambda m: ms[m]["tokens_per_cpu_s"])
        cell["ratio_against"] = best
        cell["ratio"] = ms["ours"]["tokens_per_cpu_s"] / ms[best]["tokens_per_cpu_s"]
        cell["cold_ratio"] = ms["ours"]["cold_tokens_per_cpu_s"] / ms[best]["cold_tokens_per_cpu_s"]
        print(f"  {name:14s} {cell['tokens_per_text']:6.1f} tok/text  " + "  ".join(
            f"{m} {v['tokens_per_cpu_s'] / 1e6:6.2f}M" for m, v in ms.items())
            + f"  ratio {cell['ratio']:4.2f}x (cold {cell['cold_ratio']:4.2f}x)", flush=True)
    result = {
        "benchmark": "tokens", "goal_ratio": GOAL, "meets_goal": all(c["ratio"] >= GOAL for c in measured.values()),
        "unit": "text tokens per CPU second, one pinned core, best of repeats (cold: the first batch)",
        "tokenizers": args.tokenizers, "vocab": args.vocab, "warm_batches": args.warm, "repeats": args.repeats,
        "tokenizers_version": tokenizers.__version__, "cells": measured,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "taskset": bool(shutil.which("taskset")), "load_avg_at_end": os.getloadavg()},
    }
    stem = "tokens_quick" if args.quick else "tokens"
    out = ROOT / "bench" / "results" / f"{stem}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
