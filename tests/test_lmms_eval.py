"""lmms-eval on an ovpipe HF export: the `ovpipe` model adapter, the offline local tasks, their metrics,
and the real `python -m lmms_eval` CLI end to end on a tiny random-init export."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from ovpipe.config import load_recipe
from ovpipe.evaluate import local_tasks
from ovpipe.evaluate.local_tasks import caption_f1, content_words, normalize, write_tasks

pytestmark = pytest.mark.timeout(300)

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
CLI_TASKS = ("ovpipe_color_en", "ovpipe_shape_mc_en", "ovpipe_caption_en", "ovpipe_color_ll_en")


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("configs/recipes/tiny.yaml")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    return str(out), write_tasks(str(out), count=10)


@pytest.fixture(scope="module")
def export(recipe, tmp_path_factory, tok_dir):
    """A random-init tiny model written by export_hf (as tests/test_model.py does)."""
    from ovpipe.models import llm
    from ovpipe.models.convert import export_hf
    from ovpipe.models.vlm import build_model
    from ovpipe.packing.tokenizer import load_tokenizer
    from ovpipe.train.loop import init_distributed

    init_distributed(recipe)
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(3)
    vocab = llm.padded_vocab(len(tok))
    model = build_model(recipe, vocab, image_pad_id=tok.convert_tokens_to_ids("<|image_pad|>")).eval()
    return export_hf(model, recipe, tok_dir, str(tmp_path_factory.mktemp("export") / "hf"), vocab)


def _docs(task_dir: str, name: str) -> list[dict]:
    with open(os.path.join(task_dir, "data", f"{name}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _adapter(export, docs: dict, **kw):
    from ovpipe.evaluate.lmms_model import OvpipeLMM

    lm = OvpipeLMM(pretrained=export, **kw)
    lm.task_dict = {name: {"test": rows} for name, rows in docs.items()}
    return lm


def _requests(kind: str, name: str, docs: list[dict], second):
    from lmms_eval.api.instance import Instance

    return [Instance(request_type=kind, arguments=(d["prompt"], second(d), local_tasks.doc_to_visual, i, name, "test"),
                     idx=0, metadata={"task": name, "doc_id": i, "repeats": 1}) for i, d in enumerate(docs)]


# ---------------------------------------------------------------- the task folder and its metrics

def test_write_tasks_layout(task_dir):
    out, tasks = task_dir
    names = {f"ovpipe_{t}{f}_{lang}" for t in ("color", "shape", "count") for f in ("", "_mc", "_ll")
             for lang in ("en", "zh")} | {"ovpipe_caption_en"}
    assert set(tasks) == names
    assert json.load(open(os.path.join(out, "tasks.json"))) == tasks
    assert tasks["ovpipe_color_en"] == {"chance": 1 / 8, "metric": "exact_match", "task": "color", "lang": "en",
                                       "format": "short"}
    assert tasks["ovpipe_shape_mc_zh"]["chance"] == 1 / 5 and tasks["ovpipe_count_ll_en"]["chance"] == 1 / 4
    assert 0 < tasks["ovpipe_caption_en"]["chance"] < 1
    for name in names:
        docs = _docs(out, name)
        assert len(docs) == 10 and all(os.path.isabs(d["image"]) and os.path.isfile(d["image"]) for d in docs)
        assert os.path.isfile(os.path.join(out, f"{name}.yaml"))
    mc = _docs(out, "ovpipe_shape_mc_en")[0]
    assert mc["prompt"] == mc["question"] + "\nOptions: circle, square, triangle, star, cross"
    zh = _docs(out, "ovpipe_color_mc_zh")[0]["prompt"]
    assert zh.endswith("\n选项：红色、绿色、蓝色、黄色、紫色、橙色、白色、黑色")
    group = open(os.path.join(out, "ovpipe_local.yaml")).read()
    assert group.startswith("group: ovpipe_local\n") and all(f"  - {n}\n" in group for n in names)
    image = local_tasks.doc_to_visual(mc)
    assert len(image) == 1 and image[0].size == (64, 64) and image[0].mode == "RGB"


def test_task_yaml_loads_as_lmms_eval_reads_it(task_dir):
    from lmms_eval.utils import load_yaml_config

    out, _ = task_dir
    cfg = load_yaml_config(os.path.join(out, "ovpipe_caption_en.yaml"))
    assert cfg["dataset_path"] == "json" and cfg["test_split"] == "test"
    assert cfg["dataset_kwargs"]["data_files"]["test"] == os.path.join(out, "data", "ovpipe_caption_en.jsonl")
    assert cfg["generation_kwargs"] == {"max_new_tokens": 48, "until": ["<|im_end|>", "\n"], "temperature": 0,
                                        "do_sample": False}
    assert cfg["process_results"].__name__ == "process_caption" and callable(cfg["doc_to_visual"])
    assert cfg["metric_list"] == [{"metric": "caption_f1", "aggregation": "mean", "higher_is_better": True}]
    assert load_yaml_config(os.path.join(out, "ovpipe_count_ll_zh.yaml"))["output_type"] == "multiple_choice"


def test_normalization():
    assert normalize("  Circle.\n") == "circle"
    assert normalize("RED!") == "red"
    assert normalize("红色。") == "红色"
    assert normalize("“三”") == "三"
    assert normalize("two  blue") == "two blue"
    assert local_tasks.exact_match("Square.", "square") == 1.0
    assert local_tasks.exact_match("square or circle", "square") == 0.0


def test_multiple_choice_matching():
    doc = {"answer": "星形", "choices": ["圆形", "正方形", "三角形", "星形", "十字"]}
    assert local_tasks.process_mc(doc, ["星形。"]) == {"accuracy": 1.0}
    assert local_tasks.process_mc(doc, ["星"]) == {"accuracy": 0.0}
    assert local_tasks.process_mc(doc, [""]) == {"accuracy": 0.0}
    nll = [3.0, 2.0, 5.0, 0.5, 9.0]  # lowest NLL wins; lmms-eval hands the pairs over as their str()
    assert local_tasks.process_mc_ll(doc, [(x, False) for x in nll]) == {"accuracy": 1.0}
    assert local_tasks.process_mc_ll(doc, [str((x, False)) for x in nll]) == {"accuracy": 1.0}
    assert local_tasks.process_mc_ll(doc, [(-x, False) for x in nll]) == {"accuracy": 0.0}


def test_caption_f1():
    ref = "two red circles and a blue star"
    assert content_words(ref) == {"two": 1, "red": 1, "circle": 1, "one": 1, "blue": 1, "star": 1}
    assert caption_f1(ref, ref) == 1.0
    assert caption_f1("a blue star and two red circles on a green background and the word cat", ref) == 1.0
    assert caption_f1("", ref) == 0.0 and caption_f1("hello world", ref) == 0.0
    # a bag of words: {one, red, circle} all occur in ref (6 words) -> p = 1, r = 1/2, F1 = 2/3
    assert caption_f1("a red circle", ref) == pytest.approx(2 / 3)
    # {one, green, circle}: 2 of 3 match -> p = 2/3, r = 1/3, F1 = 4/9
    assert caption_f1("a green circle.", ref) == pytest.approx(4 / 9)
    assert local_tasks.reference_caption({"shapes": [{"color": "red", "shape": "cross"}] * 2
                                          + [{"color": "blue", "shape": "star"}]}) == "two red crosses and a blue star"
    assert local_tasks.caption_chance([ref, ref]) == 1.0


def test_a_perfect_model_scores_one_everywhere(task_dir):
    out, tasks = task_dir
    for name, meta in tasks.items():
        for doc in _docs(out, name):
            if meta["format"] == "mc_ll":
                results = [(0.1 if c == doc["answer"] else 5.0, c == doc["answer"]) for c in doc["choices"]]
                got = local_tasks.process_mc_ll(doc, results)
            else:
                process = getattr(local_tasks, local_tasks._PROCESS[meta["format"]])
                got = process(doc, [doc["answer"]])
            assert got == {meta["metric"]: 1.0}, (name, doc["id"])


# ---------------------------------------------------------------- the model adapter

def test_entry_point_resolves_the_model():
    """`--model ovpipe` works whichever is imported first: lmms_eval.models (as the CLI does) or the adapter
    (importing lmms_eval.models loads the entry point while the adapter module is half-imported)."""
    for first in ("lmms_eval.models", "ovpipe.evaluate.lmms_model"):
        code = (f"import {first}\nfrom lmms_eval.models import get_model\n"
                "from ovpipe.evaluate.lmms_model import OvpipeLMM\nassert get_model('ovpipe') is OvpipeLMM")
        proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **ENV}, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "Failed to load model entry-point" not in proc.stdout, proc.stdout + proc.stderr


def test_generation_matches_the_export_and_gray_images_are_flat(export, task_dir, monkeypatch):
    from ovpipe.models.hf_vlm import image_tensor

    out, _ = task_dir
    name = "ovpipe_color_en"
    docs = _docs(out, name)[:5]
    lm = _adapter(export, {name: docs}, batch_size=8)  # one batch, padded as the reference's
    gen = lambda d: {"max_new_tokens": 4, "until": ["<|im_end|>", "\n"], "temperature": 0, "do_sample": False}
    texts = lm.generate_until(_requests("generate_until", name, docs, gen))
    assert len(texts) == 5 and all(isinstance(t, str) and "\n" not in t for t in texts)
    # the same left-padded batch through HFVisionLanguageModel.generate gives the same text
    images = [local_tasks.doc_to_visual(d) for d in docs]
    prompts = [lm._prompt(d["prompt"], ims) for d, ims in zip(docs, images)]
    rows = lm.model.generate(prompts, [[image_tensor(im, lm.model.geometry) for im in ims] for ims in images],
                             max_new_tokens=4, eos_id=lm.eot_id)
    ref = [lm.tokenizer.decode(r, skip_special_tokens=True).split("\n", 1)[0] for r in rows]
    assert texts == ref

    seen = []
    gray = _adapter(export, {name: docs}, batch_size=4, gray_images=True)
    embed = gray.model.embed
    monkeypatch.setattr(gray.model, "embed", lambda ids, ims: seen.extend(ims) or embed(ids, ims))
    gray.generate_until(_requests("generate_until", name, docs, gen))
    assert len(seen) == 5
    for t in seen:  # one value per channel: the image is flat
        assert torch.equal(t, t[:, :1, :1].expand_as(t))
    assert not all(torch.equal(t, t[:, :1, :1].expand_as(t)) for ims in images for t in
                   [image_tensor(im, lm.model.geometry) for im in ims])


def test_loglikelihood_is_the_answer_turn_nll(export, task_dir):
    from ovpipe.models.hf_vlm import image_tensor

    out, _ = task_dir
    name = "ovpipe_shape_ll_en"
    docs = _docs(out, name)[:3]
    batched = _adapter(export, {name: docs}, batch_size=8)
    single = _adapter(export, {name: docs}, batch_size=1)
    reqs = _requests("loglikelihood", name, docs, lambda d: d["answer"])
    got, one_by_one = batched.loglikelihood(reqs), single.loglikelihood(reqs)
    for (a, ga), (b, gb) in zip(got, one_by_one):  # right padding changes nothing
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    for d, (nll, _) in zip(docs, got):  # = the summed cross-entropy of answer + <|im_end|> after the header
        images = local_tasks.doc_to_visual(d)
        ids, start = batched._scored(d["prompt"], " " + d["answer"], images)  # the delimiter space is dropped
        assert batched.tokenizer.decode(ids[start:]) == d["answer"] + "<|im_end|>"
        ids_t = torch.tensor(ids)
        losses = batched.model.token_losses(ids_t[:-1], ids_t[1:], [image_tensor(images[0], batched.model.geometry)])
        assert nll == pytest.approx(float(losses[start - 1:].sum()), abs=1e-4)
    with pytest.raises(NotImplementedError, match="generate_until_multi_round"):
        batched.generate_until_multi_round([])


def test_model_args_from_the_cli(export):
    from ovpipe.evaluate.lmms_model import OvpipeLMM

    lm = OvpipeLMM.create_from_arg_string(f"pretrained={export},batch_size=8,gray_images=true",
                                          {"batch_size": 1, "max_batch_size": None, "device": None})
    assert (lm.batch_size, lm.gray_images, lm.device.type) == (8, True, "cpu")
    lm = OvpipeLMM.create_from_arg_string(f"pretrained={export}", {"batch_size": "4", "device": "cpu"})
    assert (lm.batch_size, lm.gray_images, lm.max_new_tokens) == (4, False, 16)
    assert OvpipeLMM.create_from_arg_string(f"pretrained={export}", {"batch_size": 1}).batch_size == 16
    auto = OvpipeLMM(pretrained=export, device="auto")
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- the real CLI

def test_lmms_eval_cli_end_to_end(export, task_dir, tmp_path):
    out, tasks = task_dir
    results_dir = tmp_path / "results"
    env = {**os.environ, **ENV, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "ovpipe", "--model_args", f"pretrained={export},batch_size=8",
           "--tasks", ",".join(CLI_TASKS), "--include_path", out, "--output_path", str(results_dir), "--log_samples",
           "--verbosity", "DEBUG"]  # without DEBUG, lmms-eval logs an exception in the evaluation and exits 0
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    log = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, log
    # lmms-eval exits 0 even when the evaluation raised: the results file is the real success signal
    found = glob.glob(str(results_dir / "*" / "*_results.json"))
    assert len(found) == 1, log
    results = json.load(open(found[0]))["results"]
    for name in CLI_TASKS:
        value = results[name][f"{tasks[name]['metric']},none"]
        assert 0.0 <= value <= 1.0, (name, value)
        samples = glob.glob(os.path.join(os.path.dirname(found[0]), f"*_samples_{name}.jsonl"))
        assert len(samples) == 1, (name, log)
        rows = [json.loads(line) for line in open(samples[0])]
        assert sorted(r["doc_id"] for r in rows) == list(range(10))
        assert all(tasks[name]["metric"] in r and "filtered_resps" in r and "target" in r for r in rows)
