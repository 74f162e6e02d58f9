"""Recipes: every shipped recipe loads; every problem is reported on its own line, naming the recipe
and the dotted key; overrides are YAML-typed; file paths resolve against the recipe's folder; the
digest is stable."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovpipe import config
from ovpipe.config import ConfigError, Recipe, load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))

# ------------------------------------------------------------------------------- shipped recipes


def test_recipes_folder_has_the_design_recipes():
    assert {p.name for p in RECIPES} >= {"tiny.yaml", "ov15-4b.yaml", "ov15-8b.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(path):
    recipe = load_recipe(str(path))
    assert isinstance(recipe, Recipe)
    assert recipe.name == path.stem, "a recipe's name is its file name"
    assert recipe.source == str(path)
    json.dumps(recipe.to_dict())  # the resolved config goes into every manifest as JSON
    assert len(recipe.digest()) == 64


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_round_trips_through_a_manifest(path):
    recipe = load_recipe(str(path))
    again = recipe_from_dict(json.loads(json.dumps(recipe.to_dict())))
    mine, theirs = recipe.to_dict(), again.to_dict()
    mine.pop("source"), theirs.pop("source")
    assert mine == theirs


def test_ov15_recipes_share_their_curation():
    """Both model sizes mid-train on the same 85M set: the recipes differ only in name, the LLM, the
    tokenizer folder and how the training is laid out on the cluster."""
    a = load_recipe(str(ROOT / "configs/recipes/ov15-4b.yaml")).to_dict()
    b = load_recipe(str(ROOT / "configs/recipes/ov15-8b.yaml")).to_dict()
    for d in (a, b):
        d.pop("name"), d.pop("source")
        d["model"].pop("llm"), d["packing"].pop("tokenizer")
        for key in ("tensor_parallel", "cluster"):
            d["train"].pop(key)
    assert a == b
    assert load_recipe(str(ROOT / "configs/recipes/ov15-8b.yaml")).model.llm.hidden_size == 4096


def test_rehearsal_is_ov15_4b_at_two_layers_per_tower():
    """The rehearsal keeps ov15-4b's widths, vocabulary, geometry, capacity, TP and URIs; what it changes is
    depth, counts, the captioner, and what a CPU machine needs (listed here, explained in the file)."""
    a = load_recipe(str(ROOT / "configs/recipes/ov15-4b.yaml")).to_dict()
    b = load_recipe(str(ROOT / "configs/recipes/rehearsal.yaml")).to_dict()
    assert b["model"]["llm"] == {**a["model"]["llm"], "num_layers": 2}
    assert b["model"]["vision"] == {**a["model"]["vision"], "num_hidden_layers": 2}
    from ovpipe.models.clip import import_open_clip

    # MetaCLIP-H/14's architecture, as open_clip ships it (its registry may hold a config registered under
    # this name by an earlier test in this process)
    shipped = Path(import_open_clip().__file__).parent / "model_configs" / f"{a['embed']['arch']}.json"
    h14 = json.loads(shipped.read_text())
    cut = {**h14, "vision_cfg": {**h14["vision_cfg"], "layers": 2}, "text_cfg": {**h14["text_cfg"], "layers": 2}}
    assert b["embed"]["model_config"] == cut
    assert b["embed"]["arch"] == a["embed"]["arch"] and b["embed"]["weights"] == a["embed"]["weights"]
    for key in ("capacity", "patch_size", "merge_size", "min_pixels", "max_pixels", "tokenizer", "too_long"):
        assert b["packing"][key] == a["packing"][key], key
    assert b["train"]["tensor_parallel"] == a["train"]["tensor_parallel"] == 2
    assert b["data"]["input"] == a["data"]["input"] and b["concepts"]["vocab"] == a["concepts"]["vocab"]


def test_include_merges_under_the_file(recipe_dir):
    write(recipe_dir, "name: base\nseed: 3\nembed: {batch_size: 8, device: cpu}\ntrain: {stage1: {steps: 9}}\n",
          "base.yaml")
    top = write(recipe_dir, "include: base.yaml\nname: top\nembed: {batch_size: 4}\n", "top.yaml")
    r = load_recipe(top, ["train.stage1.lr=0.5"])
    assert (r.name, r.seed, r.embed.batch_size, r.embed.device) == ("top", 3, 4, "cpu")
    assert (r.train.stage1.steps, r.train.stage1.lr) == (9, 0.5)
    loop = write(recipe_dir, "include: [loop.yaml]\n", "loop.yaml")
    with pytest.raises(ConfigError, match="include cycle"):
        load_recipe(loop)
    with pytest.raises(ConfigError, match="cannot read"):
        load_recipe(write(recipe_dir, "include: missing.yaml\n", "bad.yaml"))


def test_ov15_8b_has_the_paper_settings():
    r = load_recipe(str(ROOT / "configs/recipes/ov15-8b.yaml"))
    assert r.embed.arch == "ViT-H-14-quickgelu"
    assert r.embed.weights.endswith("metaclip_fullcc.bin") and r.embed.weights.startswith("s3://")
    assert r.concepts.vocab.startswith("s3://")
    assert r.balance.target == 85_000_000
    assert (r.balance.method, r.balance.aggregate) == ("inverse_frequency", "sum")
    assert r.caption.backend == "vllm" and r.caption.model
    assert r.caption.languages == ["en", "zh"]
    assert r.data.input.startswith("s3://") and r.data.format == "webdataset"
    # IVF sized for ~500K concepts: enough points per list to train k-means, and nprobe < nlist.
    assert r.concepts.index == "ivf"
    assert 500_000 / r.concepts.nlist >= 39 and r.concepts.nprobe < r.concepts.nlist
    assert 0.1 <= r.filter.min_clip_score <= 0.3


# ------------------------------------------------------------------------------- errors

VOCAB = "apple\nbanana\n"


@pytest.fixture
def recipe_dir(tmp_path):
    """tmp/recipes/ for recipe files, tmp/vocab/ with the default vocabulary name, so a recipe's
    own file fields resolve wherever its sections appear."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "tiny-concepts.txt").write_text(VOCAB)
    return tmp_path / "recipes"


def write(folder: Path, text: str, name: str = "r.yaml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def problems_of(path: str, overrides=None) -> list[str]:
    """The ConfigError's lines; each must name the recipe."""
    with pytest.raises(ConfigError) as info:
        load_recipe(path, overrides)
    lines = str(info.value).splitlines()
    for line in lines:
        assert line.startswith(f"recipe {path}: "), line
    return lines


def one_problem(path: str, key: str, overrides=None) -> str:
    lines = problems_of(path, overrides)
    assert len(lines) == 1, lines
    assert f": {key}:" in lines[0], lines[0]
    return lines[0]


def test_minimal_recipe_loads(recipe_dir):
    r = load_recipe(write(recipe_dir, "name: minimal\n"))
    assert r.name == "minimal" and r.embed.batch_size == 64


@pytest.mark.parametrize("text,key", [
    ("embed:\n  batch_sise: 8\n", "embed.batch_sise"),
    ("nmae: x\n", "nmae"),
    ("caption:\n  prompt: {en: hi}\n", "caption.prompt"),
    ("source: /elsewhere.yaml\n", "source"),  # set by load_recipe, never by the file
])
def test_unknown_key(recipe_dir, text, key):
    line = one_problem(write(recipe_dir, text), key)
    assert "unknown key" in line and "known:" in line


@pytest.mark.parametrize("text,key,expected", [
    ("embed:\n  batch_size: big\n", "embed.batch_size", "expected int"),
    ("embed:\n  batch_size: 8.5\n", "embed.batch_size", "expected int"),
    ("embed:\n  batch_size: true\n", "embed.batch_size", "expected int"),
    ("seed: '1'\n", "seed", "expected int"),
    ("caption:\n  languages: en\n", "caption.languages", "expected list"),
    ("caption:\n  languages: [en, 3]\n", "caption.languages", "expected list"),
    ("caption:\n  prompts: {en: [a]}\n", "caption.prompts", "expected dict"),
    ("filter:\n  min_clip_score: high\n", "filter.min_clip_score", "expected float"),
    ("embed: 3\n", "embed", "expected a mapping"),
    ("concepts:\n  use_gpu: yes\n", "concepts.use_gpu", "expected str"),  # YAML 1.1: yes is a bool
])
def test_wrong_type(recipe_dir, text, key, expected):
    line = one_problem(write(recipe_dir, text), key)
    assert expected in line


def test_missing_local_file(recipe_dir):
    line = one_problem(write(recipe_dir, "concepts:\n  vocab: ../vocab/nope.txt\n"), "concepts.vocab")
    assert "file not found" in line
    assert str(recipe_dir.parent / "vocab" / "nope.txt") in line  # the resolved path, not the raw one


def test_object_store_files_are_not_checked_at_load(recipe_dir):
    r = load_recipe(write(recipe_dir, "embed:\n  weights: s3://bucket/w.bin\nconcepts:\n  vocab: s3://b/v.txt\n"))
    assert (r.embed.weights, r.concepts.vocab) == ("s3://bucket/w.bin", "s3://b/v.txt")


@pytest.mark.parametrize("text,key,value", [
    ("concepts:\n  index: hnsw\n", "concepts.index", "'hnsw'"),
    ("embed:\n  device: gpu\n", "embed.device", "'gpu'"),
    ("balance:\n  method: uniform\n", "balance.method", "'uniform'"),
    ("caption:\n  backend: openai\n", "caption.backend", "'openai'"),
    ("filter:\n  dedup: fuzzy\n", "filter.dedup", "'fuzzy'"),
    ("data:\n  format: csv\n", "data.format", "'csv'"),
])
def test_bad_choice(recipe_dir, text, key, value):
    line = one_problem(write(recipe_dir, text), key)
    assert value in line and "is not one of" in line


@pytest.mark.parametrize("text,key", [
    ("embed:\n  batch_size: 0\n", "embed.batch_size"),
    ("balance:\n  target: -5\n", "balance.target"),
    ("caption:\n  backend: vllm\n", "caption.model"),
    ("caption:\n  languages: [en, fr]\n", "caption.languages"),
    ("concepts:\n  prompt_template: a photo\n", "concepts.prompt_template"),
    ("train:\n  sft: {decay: cosine, decay_steps: 50}\n", "train.sft.decay_steps"),  # only wsd anneals
])
def test_value_rules(recipe_dir, text, key):
    one_problem(write(recipe_dir, text), key)


def test_several_problems_are_all_listed(recipe_dir):
    path = write(recipe_dir, """\
embed:
  batch_sise: 8
  batch_size: big
concepts:
  vocab: missing.txt
filter: [1, 2]
colour: blue
""")
    lines = problems_of(path)
    keys = ["embed.batch_sise", "embed.batch_size", "concepts.vocab", "filter", "colour"]
    assert len(lines) == len(keys), lines
    for key in keys:
        assert sum(f": {key}:" in line for line in lines) == 1, (key, lines)


def test_several_value_problems_are_all_listed(recipe_dir):
    path = write(recipe_dir, """\
embed: {device: gpu, batch_size: 0}
concepts: {index: hnsw}
caption: {languages: [en, fr]}
""")
    lines = problems_of(path)
    for key in ("embed.device", "embed.batch_size", "concepts.index", "caption.languages"):
        assert any(f": {key}:" in line for line in lines), (key, lines)
    assert len(lines) == 4, lines


def test_each_problem_is_one_line(recipe_dir):
    # Values with newlines (a multi-line prompt) are shown with repr, so a problem stays on one line.
    path = write(recipe_dir, 'embed:\n  arch: ["a\\nb"]\n  batch_size: "x\\ny"\n')
    lines = problems_of(path)
    assert len(lines) == 2 and all(": embed." in line for line in lines), lines


def test_unreadable_and_invalid_recipes(recipe_dir):
    missing = str(recipe_dir / "absent.yaml")
    with pytest.raises(ConfigError, match=r"recipe .*absent\.yaml: cannot read"):
        load_recipe(missing)
    with pytest.raises(ConfigError, match=r"expected a mapping at the top level"):
        load_recipe(write(recipe_dir, "- a\n- b\n"))
    with pytest.raises(ConfigError, match=r"invalid YAML"):
        load_recipe(write(recipe_dir, "embed: {batch_size: 3\n"))


# ------------------------------------------------------------------------------- overrides


def test_overrides_apply_with_yaml_types(recipe_dir):
    path = write(recipe_dir, "embed:\n  batch_size: 8\n")
    r = load_recipe(path, ["embed.batch_size=32", "filter.min_clip_score=null", "caption.languages=[en]",
                           "balance.target=1_000", "embed.device=cuda", "concepts.nlist=64",
                           "caption.prompts={en: 'Say: what is here?'}"])
    assert r.embed.batch_size == 32 and type(r.embed.batch_size) is int
    assert r.filter.min_clip_score is None
    assert r.caption.languages == ["en"]
    assert r.balance.target == 1000
    assert r.embed.device == "cuda" and r.concepts.nlist == 64
    assert r.caption.prompts == {"en": "Say: what is here?"}


def test_override_int_for_float_becomes_float(recipe_dir):
    r = load_recipe(write(recipe_dir, "name: f\n"), ["filter.min_clip_score=1"])
    assert r.filter.min_clip_score == 1.0 and type(r.filter.min_clip_score) is float


def test_scientific_notation_without_a_dot_is_a_float(recipe_dir):
    r = load_recipe(write(recipe_dir, "train:\n  mid: {lr: 2e-5}\n"), ["train.sft.lr=1e-4", "vit.lr=3E-3"])
    assert (r.train.mid.lr, r.train.sft.lr, r.vit.lr) == (2e-5, 1e-4, 3e-3)
    assert load_recipe(write(recipe_dir, "name: f\n"), ["name=1e5"]).name == "1e5"  # a str field stays a str


def test_overrides_as_dict_and_value_with_equals(recipe_dir):
    path = write(recipe_dir, "name: d\n")
    assert load_recipe(path, {"embed.batch_size": 16}).embed.batch_size == 16
    r = load_recipe(path, ["concepts.prompt_template=a=b {}"])  # split at the first '=' only
    assert r.concepts.prompt_template == "a=b {}"


def test_override_beats_file_and_adds_sections(recipe_dir):
    r = load_recipe(write(recipe_dir, "embed:\n  batch_size: 8\n"), ["synth.shards=9"])
    assert r.embed.batch_size == 8 and r.synth.shards == 9


def test_bad_overrides_are_config_errors(recipe_dir):
    path = write(recipe_dir, "name: o\n")
    one_problem(path, "embed.batch_size", ["embed.batch_size=abc"])
    one_problem(path, "embed.batch_sise", ["embed.batch_sise=3"])
    one_problem(path, "concepts.index", ["concepts.index=hnsw"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_recipe(path, ["embed.batch_size"])
    one_problem(path, "embed.batch_size", ["embed.batch_size.x=1"])  # becomes {x: 1}: not an int
    with pytest.raises(ConfigError, match=r"embed\.batch_size\.x: batch_size is not a mapping"):
        load_recipe(write(recipe_dir, "embed:\n  batch_size: 8\n"), ["embed.batch_size.x=1"])


def test_overrides_do_not_touch_the_file(recipe_dir):
    path = write(recipe_dir, "embed:\n  batch_size: 8\n")
    load_recipe(path, ["embed.batch_size=32"])
    assert load_recipe(path).embed.batch_size == 8


# ------------------------------------------------------------------------------- file paths


def test_relative_paths_resolve_against_the_recipe_folder(recipe_dir, tmp_path, monkeypatch):
    (tmp_path / "vocab" / "mine.txt").write_text(VOCAB)
    (recipe_dir / "local.txt").write_text(VOCAB)
    path = write(recipe_dir, "concepts:\n  vocab: ../vocab/mine.txt\ndata:\n  input: local.txt\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    r = load_recipe(path)
    assert r.concepts.vocab == str(tmp_path / "vocab" / "mine.txt")
    assert r.data.input == str(recipe_dir / "local.txt")


def test_relative_recipe_path_from_another_directory(recipe_dir, tmp_path, monkeypatch):
    write(recipe_dir, "concepts:\n  vocab: ../vocab/tiny-concepts.txt\n")
    monkeypatch.chdir(tmp_path)
    r = load_recipe(os.path.join("recipes", "r.yaml"))
    assert r.concepts.vocab == str(tmp_path / "vocab" / "tiny-concepts.txt")


def test_absolute_paths_are_kept(recipe_dir, tmp_path):
    vocab = tmp_path / "abs.txt"
    vocab.write_text(VOCAB)
    r = load_recipe(write(recipe_dir, f"concepts:\n  vocab: {vocab}\n"))
    assert r.concepts.vocab == str(vocab)


def test_file_defaults_resolve_like_file_values(recipe_dir, tmp_path):
    # concepts.vocab's default is ../vocab/tiny-concepts.txt: relative to the recipe, like a value.
    r = load_recipe(write(recipe_dir, "concepts:\n  k: 3\n"))
    assert r.concepts.vocab == str(tmp_path / "vocab" / "tiny-concepts.txt")


def test_override_paths_resolve_against_the_recipe_folder(recipe_dir, tmp_path):
    (tmp_path / "vocab" / "other.txt").write_text(VOCAB)
    r = load_recipe(write(recipe_dir, "name: p\n"), ["concepts.vocab=../vocab/other.txt"])
    assert r.concepts.vocab == str(tmp_path / "vocab" / "other.txt")


def test_tiny_recipe_files_are_the_shipped_vocabulary():
    r = load_recipe(str(ROOT / "configs/recipes/tiny.yaml"))
    vocab = str(ROOT / "configs" / "vocab" / "tiny-concepts.txt")
    assert r.synth.vocab == vocab and r.concepts.vocab == vocab


# ------------------------------------------------------------------------------- digest


def test_digest_is_stable(recipe_dir):
    path = write(recipe_dir, "name: s\nembed:\n  batch_size: 8\n")
    first = load_recipe(path).digest()
    assert load_recipe(path).digest() == first
    # Same values written differently (order, comments, flow style): same digest.
    write(recipe_dir, "# a comment\nembed: {batch_size: 8}\nname: s\n")
    assert load_recipe(path).digest() == first
    # A no-op override changes nothing; a real change changes the digest.
    assert load_recipe(path, ["embed.batch_size=8"]).digest() == first
    assert load_recipe(path, ["embed.batch_size=9"]).digest() != first
    assert load_recipe(path, ["seed=1"]).digest() != first


def test_digest_is_the_same_in_another_process(recipe_dir):
    path = write(recipe_dir, "name: s\ncaption:\n  languages: [zh, en]\n")
    here = load_recipe(path).digest()
    code = "import sys; from ovpipe.config import load_recipe; print(load_recipe(sys.argv[1]).digest())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=env,
                           check=True, timeout=120).stdout.strip()
    assert there == here


# ------------------------------------------------------------------------------- regressions


def test_file_defaults_resolve_when_the_section_is_omitted(recipe_dir, tmp_path):
    r = load_recipe(write(recipe_dir, "name: no-sections\n"))
    assert r.concepts.vocab == str(tmp_path / "vocab" / "tiny-concepts.txt")


def test_digest_does_not_depend_on_how_the_path_is_spelled(recipe_dir, monkeypatch):
    path = write(recipe_dir, "name: s\n")
    monkeypatch.chdir(recipe_dir)
    assert load_recipe("r.yaml").digest() == load_recipe(path).digest()
    assert recipe_from_dict(load_recipe(path).to_dict()).digest() == load_recipe(path).digest()


def test_unparsable_override_is_a_config_error(recipe_dir):
    with pytest.raises(ConfigError, match="caption.prompts.en"):
        load_recipe(write(recipe_dir, "name: y\n"), ["caption.prompts.en=a: b: c"])


def test_remote_recipe_relative_paths_are_normalized(monkeypatch):
    text = (ROOT / "configs/recipes/tiny.yaml").read_text()
    monkeypatch.setattr(config.storage, "read_text", lambda uri: text)
    r = load_recipe("s3://bucket/configs/recipes/tiny.yaml")
    assert r.concepts.vocab == "s3://bucket/configs/vocab/tiny-concepts.txt"
