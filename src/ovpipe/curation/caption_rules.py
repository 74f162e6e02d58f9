"""Rule checks for pseudo-captions: each rejected caption gets one reason and a readable detail.

Only "en" and "zh" are supported; any other language raises ValueError rather than silently passing
the language-specific rules. Checks are pure functions of (text, lang, cfg), so they run per shard.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only attributes are read, so any object with FilterConfig's fields works
    from ovpipe.config import FilterConfig

REASONS = ("caption_empty", "control_chars", "too_short", "too_long", "wrong_language", "repetition", "refusal")
LANGUAGES = ("en", "zh")

# CJK unified ideographs: Ext A, base block, compatibility, and the supplementary planes (Ext B..H).
_CJK_CLASS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U000323af"
_CJK = re.compile(f"[{_CJK_CLASS}]")
# Latin letters: ASCII, Latin-1, Extended-A/B, Extended Additional/C/D/E and full-width forms (common
# inside Chinese text). The lookahead keeps only letters, dropping e.g. the × and ÷ in Latin-1.
_LATIN = re.compile(
    "(?=[^\\W\\d_])[A-Za-z\u00aa\u00ba\u00c0-\u024f\u1e00-\u1eff\u2c60-\u2c7f\ua720-\ua7ff"
    "\uab30-\uab6f\uff21-\uff3a\uff41-\uff5a]"
)
_LETTER = re.compile(r"[^\W\d_]")  # alphabetic characters (str.isalpha, plus a few numeric letters)
# zh tokens: one token per ideograph, or a run of other letters/digits (a "Latin word").
_ZH_TOKEN = re.compile(f"[{_CJK_CLASS}]|(?:(?![{_CJK_CLASS}])[^\\W_])+")
# Stripped from the ends of English tokens so "cat," and "cat" repeat as the same word.
_EDGE_PUNCT = ("".join(chr(c) for c in range(0x21, 0x7F) if not chr(c).isalnum())
               + "“”‘’«»…—–·，。！？；：、（）《》「」")
_SCRIPT = {"en": _LATIN, "zh": _CJK}
_SCRIPT_NAME = {"en": "Latin", "zh": "CJK"}
_NGRAM = {"en": "word", "zh": "char"}
_MIN_WORDS_FOR_NGRAMS = 6  # shorter captions repeat 3-grams by chance too often to judge


def _check_lang(lang: str) -> None:
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported caption language {lang!r} (supported: {', '.join(LANGUAGES)})")


def script_ratio(text: str, lang: str) -> float:
    """Share of letters in `lang`'s script (zh: CJK ideographs, en: Latin); 0.0 without letters."""
    _check_lang(lang)
    letters = len(_LETTER.findall(text))
    if letters == 0:
        return 0.0
    return min(1.0, len(_SCRIPT[lang].findall(text)) / letters)


def word_count(text: str, lang: str) -> int:
    """en: whitespace tokens; zh: ceil(CJK characters / 2) + Latin words.

    For en, ideographs are counted the zh way too (a run of them has no spaces to split on), so a
    Chinese caption checked as English reaches the wrong_language check instead of reading as
    "1 word" and being reported as too_short. Pure English text is unaffected.
    """
    _check_lang(lang)
    n_cjk = len(_CJK.findall(text))
    rest = _CJK.sub(" ", text) if n_cjk else text
    if lang == "en":
        other = len(rest.split())
    else:
        other = sum(1 for m in _ZH_TOKEN.finditer(rest))
    return math.ceil(n_cjk / 2) + other


def _tokens(text: str, lang: str) -> list[str]:
    """Units for the repetition rules: en words (case/punctuation folded), zh characters + Latin words."""
    low = text.lower()
    if lang == "zh":
        return _ZH_TOKEN.findall(low)
    return [t for t in (w.strip(_EDGE_PUNCT) for w in low.split()) if t]


def _longest_run(tokens: list[str]) -> tuple[str, int]:
    best_tok, best, run = "", 0, 0
    for i, tok in enumerate(tokens):
        run = run + 1 if i and tok == tokens[i - 1] else 1
        if run > best:
            best_tok, best = tok, run
    return best_tok, best


def _repetition(tokens: list[str], n_words: int, lang: str, cfg: FilterConfig) -> str | None:
    tok, run = _longest_run(tokens)
    if run >= cfg.max_same_word_run:
        unit = "character" if lang == "zh" and _CJK.fullmatch(tok) else "word"
        return f"same {unit} {tok!r} {run} times in a row (max_same_word_run {cfg.max_same_word_run})"
    if n_words < _MIN_WORDS_FOR_NGRAMS or len(tokens) < 3:
        return None
    grams = list(zip(tokens, tokens[1:], tokens[2:]))
    counts = Counter(grams)
    share = 1.0 - len(counts) / len(grams)  # occurrences that repeat an earlier 3-gram
    if share > cfg.max_ngram_repeat:
        gram, times = counts.most_common(1)[0]
        shown = ("" if lang == "zh" and all(_CJK.fullmatch(t) for t in gram) else " ").join(gram)
        return (f"{share:.2f} of {_NGRAM[lang]} 3-grams are repeats > max_ngram_repeat "
                f"{cfg.max_ngram_repeat} (most frequent {shown!r} x{times})")
    return None


def _fold(text: str) -> str:
    """Case/width folding for phrase matching; curly apostrophes match the straight ones in phrases."""
    return unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'").replace("\u2018", "'")


def check_caption(text: str, lang: str, cfg: FilterConfig) -> tuple[str, str] | None:
    """None if the caption passes, else (reason, detail); the first failing check in REASONS order wins."""
    _check_lang(lang)
    if text is None or not text.strip():
        return "caption_empty", "caption is empty after stripping whitespace"
    text = text.strip()
    bad = [c for c in text if c not in "\t\n\r" and unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn")]
    if bad:  # NUL, escape sequences, lone surrogates, unassigned code points: never part of a caption
        return "control_chars", f"{len(bad)} control or unassigned code points (first U+{ord(bad[0]):04X})"
    n = word_count(text, lang)
    if n < cfg.min_words:
        return "too_short", f"{n} words < min_words {cfg.min_words}"
    if n > cfg.max_words:
        return "too_long", f"{n} words > max_words {cfg.max_words}"
    ratio = script_ratio(text, lang)
    if ratio < cfg.min_script_ratio:
        detail = (f"script ratio {ratio:.2f} < {cfg.min_script_ratio} for {lang} "
                  f"(share of letters that are {_SCRIPT_NAME[lang]})")
        return "wrong_language", detail
    detail = _repetition(_tokens(text, lang), n, lang, cfg)
    if detail:
        return "repetition", detail
    folded = _fold(text)
    for phrase in cfg.refusal_phrases:
        if phrase and _fold(phrase) in folded:
            return "refusal", f"matched refusal phrase \"{phrase}\""
    return None


# Punctuation (P*) and symbols (S*) are dropped by normalize(); the table is built on first use
# because scanning all code points costs a fraction of a second.
_STRIP_TABLE: dict[int, str] | None = None


def _strip_table() -> dict[int, str]:
    global _STRIP_TABLE
    if _STRIP_TABLE is None:
        _STRIP_TABLE = {c: " " for c in range(0x110000) if unicodedata.category(chr(c))[0] in "PS"}
    return _STRIP_TABLE


def normalize(text: str) -> str:
    """Dedup form: NFKC, lowercase, punctuation/symbols removed, whitespace collapsed to single spaces.

    Punctuation becomes a space (then collapses) so "cat,dog" and "cat, dog" normalize alike.
    """
    text = unicodedata.normalize("NFKC", text or "").lower().translate(_strip_table())
    return " ".join(text.split())
