import dataclasses

import pytest

from ovpipe.config import FilterConfig
from ovpipe.curation.caption_rules import REASONS, check_caption, normalize, script_ratio, word_count

CFG = FilterConfig()
EN_OK = "A brown dog runs along the beach while waves break behind it."
ZH_OK = "一只棕色的小狗在海滩上奔跑，身后是翻滚的海浪。"


def reason(text, lang, cfg=CFG):
    result = check_caption(text, lang, cfg)
    return result and result[0]


def test_good_captions_pass():
    assert check_caption(EN_OK, "en", CFG) is None
    assert check_caption(ZH_OK, "zh", CFG) is None


def test_reasons_are_the_documented_ones():
    assert REASONS == ("caption_empty", "control_chars", "too_short", "too_long", "wrong_language", "repetition",
                       "refusal")


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty(text, lang):
    assert reason(text, lang) == "caption_empty"


@pytest.mark.parametrize("text", [EN_OK[:20] + "\x00" + EN_OK[20:], EN_OK + "\x1b[31m", EN_OK + "\ud800",
                                  EN_OK + "\U000e0fff"])
def test_control_characters(text):
    assert reason(text, "en") == "control_chars"
    assert reason(EN_OK.replace(" ", "\t", 2) + "\n", "en") is None  # tabs and newlines are whitespace


def test_word_count():
    assert word_count("a cat on a mat", "en") == 5
    assert word_count("一只猫", "zh") == 2  # 3 characters / 2, rounded up
    assert word_count("一只猫在看iPhone 15", "zh") == 5  # 5 chars -> 3, plus "iphone" and "15"
    assert word_count("一只猫坐在桌子上", "en") == 4  # ideographs count the zh way even for en


def test_too_short_en_and_zh():
    assert check_caption("a cat", "en", CFG) == ("too_short", "2 words < min_words 3")
    assert reason("a small cat", "en") is None
    assert check_caption("一只猫", "zh", CFG) == ("too_short", "2 words < min_words 3")
    assert reason("一只小猫咪", "zh") is None  # 5 characters -> 3 words


def test_too_long_en_and_zh():
    cfg = dataclasses.replace(CFG, max_words=10)
    en = " ".join(f"word{i}" for i in range(11))
    assert check_caption(en, "en", cfg) == ("too_long", "11 words > max_words 10")
    assert reason(" ".join(f"word{i}" for i in range(10)), "en", cfg) is None
    zh = "一只棕色的小狗在海滩上奔跑身后是翻滚的海浪天空"  # 23 characters -> 12 words
    assert reason(zh, "zh", cfg) == "too_long"
    assert reason(zh[:20], "zh", cfg) is None


def test_script_ratio():
    assert script_ratio(EN_OK, "en") == 1.0
    assert script_ratio(EN_OK, "zh") == 0.0
    assert script_ratio(ZH_OK, "zh") == 1.0
    assert script_ratio("一只猫 cat", "zh") == pytest.approx(3 / 6)
    assert script_ratio("123, 456!", "en") == 0.0  # no letters at all
    assert script_ratio("ＡＢＣ café", "en") == 1.0  # full-width and accented Latin count
    with pytest.raises(ValueError, match="unsupported caption language"):
        script_ratio("bonjour", "fr")


def test_wrong_language_en_and_zh():
    assert check_caption(ZH_OK, "en", CFG) == (
        "wrong_language", "script ratio 0.00 < 0.5 for en (share of letters that are Latin)")
    got = check_caption(EN_OK, "zh", CFG)
    assert got[0] == "wrong_language" and got[1].startswith("script ratio 0.00 < 0.5 for zh")
    assert reason("This is mostly English with 一点 Chinese words mixed in.", "en") is None
    assert reason("这张图片展示了一辆红色的 Tesla 汽车停在路边。", "zh") is None


def test_same_word_run_of_eight():
    sky = "The sky above the old harbor town is {} blue today, with a few thin clouds near the hills."
    assert check_caption(sky.format(" ".join(["very"] * 8)), "en", CFG) == (
        "repetition", "same word 'very' 8 times in a row (max_same_word_run 8)")
    assert reason(sky.format(" ".join(["very"] * 7)), "en") is None
    assert reason("Go, go, GO go go go go go!", "en") == "repetition"  # case and punctuation folded
    kids = "图片里的孩子们笑着喊{}，看起来非常开心，背景是一片绿色的草地。"
    assert check_caption(kids.format("哈" * 8), "zh", CFG) == (
        "repetition", "same character '哈' 8 times in a row (max_same_word_run 8)")
    assert reason(kids.format("哈" * 7), "zh") is None


def test_ngram_repetition_en_and_zh():
    looped = "The image shows a cat. The image shows a cat. The image shows a cat."
    r = check_caption(looped, "en", CFG)
    assert r[0] == "repetition" and "'the image shows'" in r[1] and "max_ngram_repeat 0.3" in r[1]
    zh_looped = "图片中有一只猫。图片中有一只猫。图片中有一只猫。"
    r = check_caption(zh_looped, "zh", CFG)
    assert r[0] == "repetition" and "char 3-grams" in r[1] and "'图片中'" in r[1]
    assert reason("一只黑色的猫和一只白色的猫坐在一起晒太阳。", "zh") is None


def test_ngram_rule_needs_six_words():
    cfg = dataclasses.replace(CFG, max_ngram_repeat=0.0)
    assert reason("red car red car red", "en", cfg) is None  # 5 words: not judged
    assert reason("red car red car red car", "en", cfg) == "repetition"


def test_refusal_en_and_zh():
    assert check_caption("I'm sorry, but I cannot describe this image.", "en", CFG) == (
        "refusal", 'matched refusal phrase "i\'m sorry"')
    assert reason("I’M SORRY, I can’t see the picture clearly.", "en") == "refusal"  # curly quote, caps
    assert check_caption("抱歉，我不能描述这张图片的内容。", "zh", CFG) == ("refusal", 'matched refusal phrase "抱歉"')
    assert reason("作为一个AI模型，我不能识别图中人物。", "zh") == "refusal"
    assert reason("A sorry-looking dog sits in the rain.", "en") is None


def test_order_of_checks():
    # Each caption breaks several rules; the earliest in REASONS order is reported.
    assert reason("I cannot", "en") == "too_short"  # short before refusal
    cfg = dataclasses.replace(CFG, max_words=5)
    assert reason("这 是 一 个 很 长 的 中 文 句 子", "en", cfg) == "too_long"  # long before language
    assert reason("抱歉 抱歉 抱歉 抱歉 抱歉 抱歉 抱歉 抱歉", "en") == "wrong_language"  # language before repetition
    assert reason("sorry " * 9 + "i cannot", "en") == "repetition"  # repetition before refusal


def test_normalize():
    assert normalize("  Héllo,   WORLD!!\n") == "héllo world"
    assert normalize("ＡＢＣ") == "abc"  # NFKC folds full-width forms
    assert normalize("cat,dog") == normalize("cat, dog") == "cat dog"
    assert normalize("一只猫。") == "一只猫"
    assert normalize("") == ""
