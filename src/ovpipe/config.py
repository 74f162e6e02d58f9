"""Recipe schema: one typed config tree, validated once at entry, every problem listed in one error.

A recipe is a YAML file (path or object-store URI). Values come from the dataclass defaults, then the
recipes it `include`s (in order, each merged key by key, nested), then the file itself, then
`key.path=value` overrides. File references (fields marked ``file=True``) are resolved
relative to the recipe's folder; local ones must exist, object-store ones are checked when used.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from ovpipe import storage
from ovpipe.steps import CURATION
from ovpipe.steps import STAGES as TRAIN_STAGES


class ConfigError(ValueError):
    """Raised with every problem of a recipe, one per line, each naming the recipe and the key."""


def _file(default=None, help: str = ""):
    return field(default=default, metadata={"file": True, "help": help})


@dataclass
class DataConfig:
    input: str | None = _file(help="input shards (folder or s3:// prefix); null = synthetic corpus")
    format: str = "auto"  # webdataset | parquet | auto (by extension)
    group_size: int = 2  # input shards per ParallelFor task
    workers: int = 2  # local processes for `ovpipe <step>` (does not change outputs)
    image_column: str = "image"  # parquet inputs: image bytes column
    caption_column: str = "caption"
    id_column: str = "id"


@dataclass
class SynthConfig:
    shards: int = 4
    samples_per_shard: int = 250
    bad_fraction: float = 0.02
    min_size: int = 48
    max_size: int = 160
    zh_fraction: float = 0.3
    vocab: str = _file("../vocab/tiny-concepts.txt", "concept vocabulary the scenes are drawn from")


@dataclass
class EmbedConfig:
    arch: str = "ViT-H-14-quickgelu"  # open_clip model name
    model_config: dict | None = None  # registered under `arch` when given (tiny random-init models)
    weights: str | None = _file(help="open_clip checkpoint path/URI; null = seeded random init")
    batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | fp16 | bf16 (GPU)
    min_image_side: int = 8  # smaller images are rejected as too_small
    decode_threads: int = 2  # threads decoding + preprocessing images ahead of the model
    gpu_decode: bool = True  # on a GPU, JPEGs are decoded there (nvjpeg); the CPU threads read headers only


@dataclass
class ConceptsConfig:
    vocab: str = _file("../vocab/tiny-concepts.txt", "concept vocabulary, one per line")
    prompt_template: str = "a photo of {}."
    k: int = 5
    index: str = "flat"  # flat (exact inner product) | ivf
    nlist: int | None = None
    nprobe: int = 16
    use_gpu: str = "auto"  # auto | yes | no
    text_batch_size: int = 256


@dataclass
class BalanceConfig:
    method: str = "inverse_frequency"  # inverse_frequency | metaclip | random
    aggregate: str = "sum"  # sum | mean | max of 1/count over an image's K concepts
    target: int = 85_000_000  # images to draw
    metaclip_t: float | None = None  # MetaCLIP threshold t; null = solved for `target`


@dataclass
class CaptionConfig:
    backend: str = "passthrough"  # passthrough | hf | vllm
    model: str | None = _file(help="captioning VLM weights (path/URI) for hf and vllm")
    languages: list[str] = field(default_factory=lambda: ["en"])
    prompts: dict[str, str] = field(default_factory=lambda: {
        "en": "Describe this image in detail.",
        "zh": "请详细描述这张图片。",
    })
    max_new_tokens: int = 256
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    tensor_parallel: int = 1  # vllm


@dataclass
class FilterConfig:
    prefer: list[str] = field(default_factory=lambda: ["en", "zh"])  # first valid caption wins
    min_words: int = 3  # EN words; ZH counts characters / 2
    max_words: int = 300
    min_script_ratio: float = 0.5  # share of letters in the expected script
    max_ngram_repeat: float = 0.3  # share of repeated 3-grams
    max_same_word_run: int = 8  # this many identical consecutive words = repetition
    # Phrases a captioner uses when it declines; kept narrow so real descriptions ("a sign reading
    # unable to park", "文字模糊，无法辨认") are not rejected.
    refusal_phrases: list[str] = field(default_factory=lambda: [
        "i'm sorry", "i am sorry", "i cannot", "i can't", "as an ai", "i am unable to", "i'm unable to",
        "抱歉", "我无法", "作为一个ai", "作为人工智能",
    ])
    min_clip_score: float | None = 0.15  # image-text cosine similarity; null disables
    # Languages the CLIP text tower reads (MetaCLIP is English-only): other captions skip the score rule.
    clip_score_languages: list[str] = field(default_factory=lambda: ["en"])
    dedup: str = "near"  # none | exact | near
    near_dup_threshold: float = 0.9  # estimated Jaccard of character 5-gram sets


@dataclass
class StageDataConfig:
    """Input of one training stage's data (stage 1 alignment pairs, stage 2 conversations)."""
    input: str | None = _file(help="webdataset/parquet shards with a `json` conversation; null = synthetic")
    synth_shards: int = 2
    synth_samples_per_shard: int = 500
    image_size: int = 64  # synthetic images are square
    zh_fraction: float = 0.3  # share of synthetic samples in Chinese
    bad_fraction: float = 0.02  # share of deliberately broken samples (the steps must reject and count them)
    # sft only: which one-word question types the synthetic conversations ask, and how many turns at most
    questions: list[str] = field(default_factory=lambda: ["color", "shape", "count", "position", "text"])
    max_turns: int = 3
    question_weights: dict[str, float] = field(default_factory=dict)  # type -> pick weight (1 if missing)
    caption_fraction: float = 0.1
    options_fraction: float = 0.0  # share of color/shape/count questions asked with their options listed


@dataclass
class PackingConfig:
    tokenizer: str | None = _file(help="Hugging Face tokenizer folder (path/URI); null = train a small BPE "
                                       "on synthetic text, stored in {run}/tokenizer")
    tokenizer_vocab: int = 2000  # when trained here
    capacity: int = 8192  # tokens per packed sequence
    patch_size: int = 14  # RICE-ViT patches, merged 2×2: 28 px per image token
    merge_size: int = 2
    min_pixels: int = 3136
    max_pixels: int = 2_560_000
    max_aspect_ratio: float = 200.0
    too_long: str = "reject"  # reject | truncate (text after the last image only)
    max_samples_per_bin: int | None = None
    max_images_per_bin: int | None = None
    max_image_tokens_per_bin: int | None = None
    sequences_per_shard: int = 1000
    caption_prompt: str = ""  # user text after <image> for caption data (stages 1 and 1.5)
    stage1: StageDataConfig = field(default_factory=StageDataConfig)
    sft: StageDataConfig = field(default_factory=lambda: StageDataConfig(synth_samples_per_shard=1000))


@dataclass
class VisionConfig:
    """RICE-ViT-compatible encoder (Hugging Face MLCD); patch and merge sizes come from `packing`."""
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    initializer_range: float = 0.02  # std of the patch embedding's random init (MLCD's own name)
    weights: str | None = _file(help="MLCDVisionModel folder (path/URI), e.g. converted RICE-ViT; null = random")


@dataclass
class ClipConfig:
    """The `clip` step: train the embed model (embed.arch, embed.model_config) contrastively on synthetic
    image-caption pairs when there is no pretrained one to load (tiny recipes; see
    ovpipe.curation.clip_pretrain). 0 steps = off: embed loads embed.weights (MetaCLIP on a cluster)."""
    steps: int = 0
    images: int = 8000  # distinct training scenes, concepts drawn uniformly (MetaCLIP's own data is balanced)
    val_images: int = 1000  # held-out scenes, drawn like the corpus (its Zipf law), for the manifest's metrics
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    phrase_fraction: float = 0.5  # texts that are one concept of the image in concepts.prompt_template (alt-text-like)


@dataclass
class VitConfig:
    """The `vit` step: pretrain the vision tower on labelled synthetic scenes when there is no pretrained
    one to load (tiny recipes; see ovpipe.train.vit). 0 steps = off: stage 1 loads model.vision.weights."""
    steps: int = 0
    images: int = 16000  # distinct training scenes (a batch draws from them at random)
    image_size: int = 64  # scene canvas in pixels, resized onto the token grid like training images
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.05


@dataclass
class LLMConfig:
    """Qwen3 as a megatron-core GPTModel (GQA, SwiGLU, RMSNorm, RoPE, qk-layernorm)."""
    hidden_size: int = 2560
    num_layers: int = 36
    num_attention_heads: int = 32
    num_query_groups: int = 8
    head_dim: int = 128
    ffn_hidden_size: int = 9728
    rope_theta: float = 1_000_000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    max_position_embeddings: int = 40960
    weights: str | None = _file(help="Qwen3ForCausalLM folder (path/URI); null = random init")


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    init_std: float = 0.02  # random init (tiny recipes)


@dataclass
class StageConfig:
    """One training stage: what trains, for how long, at what learning rate."""
    steps: int = 100
    lr: float = 1e-5
    min_lr: float = 1e-6
    warmup_steps: int = 10
    # cosine: lr → min_lr over the whole stage; wsd: hold lr, then anneal (cosine) over the last decay_steps
    decay: str = "cosine"  # cosine | linear | wsd | constant
    decay_steps: int | None = None  # wsd only; null = the last 20% of the steps
    trainable: str = "all"  # projector | projector+llm (the vision encoder frozen) | all
    data: str | None = _file(help="packed dataset folder (path/URI) to train on; null = this run's pack output "
                                  "for the stage (pack-stage1, pack, pack-sft)")


@dataclass
class ClusterConfig:
    """A stage's job on Kubernetes: a Kubeflow Trainer v2 TrainJob (or a v1 PyTorchJob) of this shape. Its
    image, namespace, placement and Secret names are the cluster profile's (ovpipe.profile)."""
    api: str = "trainjob"  # trainjob | pytorchjob
    runtime: str = "ovpipe-torch"  # ClusterTrainingRuntime shipped in manifests/ and the chart
    nodes: int = 1
    gpus_per_node: int = 8
    cpu: str = "32"
    memory: str = "512Gi"
    timeout_s: int = 7 * 24 * 3600
    poll_s: int = 30


@dataclass
class TrainConfig:
    processes: int = 1  # local torchrun processes (gloo on CPU)
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    micro_batch: int = 1  # packed sequences per micro-batch (concatenated as one THD stream)
    global_batch: int = 8  # packed sequences per optimizer step, over all data-parallel ranks
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    clip_grad: float = 1.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    distributed_optimizer: bool = False
    # activation recomputation: none | full (each layer's input kept, the layer recomputed in backward)
    recompute: str = "none"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2  # a stage's newest N checkpoints stay in the store (0 = all)
    log_every: int = 10
    stage1: StageConfig = field(default_factory=lambda: StageConfig(lr=1e-4, trainable="projector"))
    mid: StageConfig = field(default_factory=StageConfig)
    sft: StageConfig = field(default_factory=StageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


@dataclass
class EvalConfig:
    """lmms-eval on a stage's Hugging Face export: the local synthetic tasks and/or named benchmarks."""
    local_tasks: bool = True  # the held-out synthetic VQA/captioning tasks (group ovpipe_local)
    tasks: list[str] = field(default_factory=list)  # lmms-eval task names, e.g. the paper's benchmarks
    include_path: str | None = _file(help="extra lmms-eval task YAMLs (folder path/URI)")
    datasets_cache: str | None = _file(help="pre-populated Hugging Face datasets cache (path/URI) for `tasks`; "
                                            "nothing is downloaded")
    count: int = 100  # items per local task
    formats: list[str] = field(default_factory=lambda: ["short", "mc", "caption"])  # local: + mc_ll (likelihood)
    seed: int = 7  # of the held-out items (disjoint from every training image by construction)
    batch_size: int = 16
    limit: int | None = None  # lmms-eval --limit (per task), for quick looks
    device: str = "auto"  # auto | cpu | cuda
    before: bool = True  # also score the untrained model (same recipe and seed)
    blind: bool = True  # also score the trained model with every image flat gray (must stay near chance)
    after_each_stage: bool = False  # evaluate stage1 and mid too, not only sft
    parallel_runs: int = 1  # lmms-eval runs (trained, before, blind) at once: >1 on CPU, 1 per GPU


@dataclass
class Recipe:
    name: str = "recipe"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    concepts: ConceptsConfig = field(default_factory=ConceptsConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    vit: VitConfig = field(default_factory=VitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = ""  # where the recipe was read from (set by load_recipe)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self, step: str | None = None) -> str:
        """Identity of the settings (not of where the recipe was read from). With `step`: only the
        settings that step's outputs depend on — its own section and those of the steps before it."""
        settings = {k: v for k, v in self.to_dict().items() if k not in ("source", "name")}
        # how work is split across tasks/processes never changes outputs
        settings["data"] = {k: v for k, v in settings["data"].items() if k not in ("workers", "group_size")}
        settings["train"] = {k: v for k, v in settings["train"].items()
                             if k not in ("processes", "cluster", "log_every", "checkpoint_every",
                                          "keep_checkpoints")}
        if step is not None:
            picked = {"seed": settings["seed"], "data": settings["data"]}
            for dotted in step_settings(step):
                node, parts = settings, dotted.split(".")
                for part in parts:
                    node = node[part]
                picked[dotted] = node
            settings = picked
        return storage.sha256_bytes(json.dumps(settings, sort_keys=True).encode())


def step_settings(step: str) -> tuple[str, ...]:
    """The recipe settings (dotted paths) a step's outputs depend on, besides seed and data."""
    if step in CURATION:  # each curation step depends on its own section and every earlier one
        return CURATION[: CURATION.index(step) + 1]
    base, _, dataset = step.partition("-")
    if base == "tokenizer":
        return ("synth.vocab", "packing.tokenizer", "packing.tokenizer_vocab")
    if base == "synth" and dataset:
        return ("synth.vocab", f"packing.{dataset}")
    if base == "vit":
        return ("vit", "packing", "model.vision")
    if base in ("lengths", "pack"):
        return ("packing",) + (("synth.vocab",) if dataset else CURATION)
    return tuple(f.name for f in dataclasses.fields(Recipe) if f.name not in ("source", "name"))


CHOICES = {
    "data.format": {"auto", "webdataset", "parquet"},
    "embed.device": {"auto", "cpu", "cuda"},
    "embed.precision": {"fp32", "fp16", "bf16"},
    "concepts.index": {"flat", "ivf"},
    "concepts.use_gpu": {"auto", "yes", "no"},
    "balance.method": {"inverse_frequency", "metaclip", "random"},
    "balance.aggregate": {"sum", "mean", "max"},
    "caption.backend": {"passthrough", "hf", "vllm"},
    "caption.dtype": {"auto", "float32", "bfloat16", "float16"},
    "filter.dedup": {"none", "exact", "near"},
    "packing.too_long": {"reject", "truncate"},
    "train.precision": {"auto", "fp32", "bf16"},
    "train.recompute": {"none", "full"},
    **{f"train.{st}.trainable": {"projector", "projector+llm", "all"} for st in TRAIN_STAGES},
    **{f"train.{st}.decay": {"cosine", "linear", "wsd", "constant"} for st in TRAIN_STAGES},
    "train.cluster.api": {"trainjob", "pytorchjob"},
    "eval.device": {"auto", "cpu", "cuda"},
}
POSITIVE = {"data.group_size", "data.workers", "synth.shards", "synth.samples_per_shard",
            "embed.batch_size", "concepts.k", "concepts.nprobe", "caption.batch_size",
            "caption.max_new_tokens", "balance.target", "embed.decode_threads", "packing.capacity",
            "packing.patch_size", "packing.merge_size", "packing.min_pixels", "packing.max_pixels",
            "packing.sequences_per_shard", "packing.tokenizer_vocab", "train.processes", "train.tensor_parallel",
            "train.pipeline_parallel", "train.micro_batch", "train.global_batch", "train.cluster.nodes",
            "train.cluster.gpus_per_node", "model.llm.hidden_size", "model.llm.num_layers",
            "model.vision.hidden_size", "model.vision.num_hidden_layers", "eval.count", "eval.batch_size",
            "eval.parallel_runs", "vit.images", "vit.batch_size", "vit.lr", "clip.images", "clip.val_images",
            "clip.batch_size", "clip.lr",
            *(f"train.{st}.decay_steps" for st in TRAIN_STAGES)}


_SCIENTIFIC = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is Any:
        return True
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        k, v = typing.get_args(tp)
        return isinstance(value, dict) and all(_type_ok(a, k) and _type_ok(b, v) for a, b in value.items())
    return isinstance(value, tp)


def _build(cls, data: dict, prefix: str, problems: list[str], base_dir: str):
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in known or key == "source":
            problems.append(f"{path}: unknown key (known: {', '.join(k for k in known if k != 'source')})")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
                continue
            kwargs[key] = _build(tp, value, path + ".", problems, base_dir)
            continue
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()) and not _type_ok("", tp) \
                and _type_ok(1.5, tp):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if not _type_ok(value, tp):
            problems.append(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} ({value!r})")
            continue
        if isinstance(value, int) and not isinstance(value, bool) and _type_ok(1.5, tp) and not _type_ok("", tp):
            value = float(value)
        if known[key].metadata.get("file") and value is not None:
            value = _resolve_file(value, base_dir, path, problems)
        kwargs[key] = value
    for name, f in known.items():  # omitted sections keep their defaults, file paths resolved and checked
        if name not in kwargs and name not in data and dataclasses.is_dataclass(hints[name]):
            default = dataclasses.asdict(f.default_factory())
            kwargs[name] = _build(hints[name], default, f"{prefix}{name}.", problems, base_dir)
    obj = cls(**kwargs)
    for f in dataclasses.fields(cls):  # defaults that name files resolve like file values
        if f.metadata.get("file") and f.name not in data and getattr(obj, f.name) is not None:
            setattr(obj, f.name, _resolve_file(getattr(obj, f.name), base_dir, prefix + f.name, problems))
    return obj


def _type_name(tp) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _resolve_file(value: str, base_dir: str, path: str, problems: list[str]) -> str:
    if storage.is_remote(value):
        return value
    if not os.path.isabs(value):
        if storage.is_remote(base_dir):
            return storage.join(base_dir, value)
        value = os.path.normpath(os.path.join(base_dir, value))
    if not os.path.exists(value):
        problems.append(f"{path}: file not found: {value}")
    return value


def _check_values(recipe: Recipe, problems: list[str]) -> None:
    for dotted, allowed in CHOICES.items():
        value = _get(recipe, dotted)
        if value not in allowed:
            problems.append(f"{dotted}: {value!r} is not one of {sorted(allowed)}")
    for dotted in POSITIVE:
        value = _get(recipe, dotted)
        if value is not None and value <= 0:
            problems.append(f"{dotted}: must be > 0, got {value}")
    for lang in recipe.caption.languages:
        if lang not in recipe.caption.prompts:
            problems.append(f"caption.languages: no caption.prompts entry for {lang!r}")
    if recipe.caption.backend in ("hf", "vllm") and not recipe.caption.model:
        problems.append(f"caption.model: required for backend {recipe.caption.backend!r}")
    unknown = sorted(set(recipe.eval.formats) - {"short", "mc", "mc_ll", "caption"})
    if unknown:
        problems.append(f"eval.formats: unknown {unknown} (known: short, mc, mc_ll, caption)")
    for st in TRAIN_STAGES:
        stage = getattr(recipe.train, st)
        if stage.decay_steps is not None and stage.decay != "wsd":
            problems.append(f"train.{st}.decay_steps: only wsd has an anneal length (decay is {stage.decay!r})")
    if not 32 <= recipe.vit.image_size <= 512:
        problems.append(f"vit.image_size: the scene canvas must be 32 to 512 pixels, got {recipe.vit.image_size}")
    if recipe.vit.steps < 0:
        problems.append(f"vit.steps: must be >= 0 (0 = no pretraining), got {recipe.vit.steps}")
    if recipe.vit.steps and recipe.model.vision.weights:
        problems.append("vit.steps: pretrains a tower, but model.vision.weights already gives one; set one of them")
    if recipe.clip.steps < 0:
        problems.append(f"clip.steps: must be >= 0 (0 = load embed.weights), got {recipe.clip.steps}")
    if recipe.clip.steps and recipe.embed.weights:
        problems.append("clip.steps: trains the embed model, but embed.weights already gives one; set one of them")
    if not 0 <= recipe.clip.phrase_fraction <= 1:
        problems.append(f"clip.phrase_fraction: a share in [0, 1], got {recipe.clip.phrase_fraction}")
    if "{}" not in recipe.concepts.prompt_template:
        problems.append("concepts.prompt_template: must contain '{}' where the concept goes")


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def set_override(data: dict, dotted: str, value: Any) -> None:
    """Apply one `a.b.c=value` override to a raw recipe dict."""
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part} is not a mapping")
    node[parts[-1]] = value


def parse_overrides(items: list[str] | dict | None) -> dict:
    """`["embed.batch_size=32", …]` or a dict → {dotted: value} with YAML-typed values."""
    if not items:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {_one_line(exc)}") from exc
    return out


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(uri: str, seen: tuple[str, ...] = ()) -> dict:
    """A recipe file as a dict, its `include:` (a recipe or a list, relative to this file) merged under it.
    Relative file values keep resolving against the including recipe's folder."""
    if uri in seen:
        raise ConfigError(f"recipe {uri}: include cycle ({' -> '.join(seen + (uri,))})")
    try:
        text = storage.read_text(uri)
    except storage.StorageError as exc:
        raise ConfigError(f"recipe {uri}: cannot read: {exc}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {uri}: invalid YAML: {_one_line(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {uri}: expected a mapping at the top level")
    includes = data.pop("include", None) or []
    includes = [includes] if isinstance(includes, str) else includes
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"recipe {uri}: include: expected a recipe path or a list of them")
    base: dict = {}
    for inc in includes:
        if not storage.is_remote(inc) and not os.path.isabs(inc):
            inc = storage.join(storage.parent(uri), inc) if storage.is_remote(uri) else \
                os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(uri)), inc))
        base = _merge(base, _read_yaml(inc, seen + (uri,)))
    return _merge(base, data)


def load_recipe(uri: str, overrides: list[str] | dict | None = None) -> Recipe:
    """Read (includes merged), merge overrides, validate. Raises ConfigError listing every problem."""
    data = _read_yaml(uri)
    try:
        for key, value in parse_overrides(overrides).items():
            set_override(data, key, value)
    except ConfigError as exc:
        raise ConfigError(f"recipe {uri}: {exc}") from exc
    base_dir = storage.parent(uri) if storage.is_remote(uri) else os.path.dirname(os.path.abspath(uri))
    problems: list[str] = []
    recipe = _build(Recipe, data, "", problems, base_dir)
    _check_values(recipe, problems)
    if problems:
        raise ConfigError("\n".join(f"recipe {uri}: {p}" for p in problems))
    recipe.source = uri
    return recipe


def recipe_from_dict(data: dict) -> Recipe:
    """Rebuild a resolved recipe (as saved in a manifest); paths are already absolute."""
    problems: list[str] = []
    data = {k: v for k, v in data.items() if k != "source"}
    recipe = _build(Recipe, data, "", problems, "/")
    if problems:
        raise ConfigError("\n".join(f"resolved recipe: {p}" for p in problems))
    return recipe
