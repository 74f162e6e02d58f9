"""lmms-eval model adapter for ovpipe's Hugging Face export (`--model ovpipe`).

lmms-eval 0.7.x finds it through the `lmms_eval.models` entry point (`manifest` below, declared in
pyproject.toml); `@register_model` alone does not make `--model NAME` work there.

    --model_args pretrained=PATH_OR_S3_URI[,batch_size=16][,max_new_tokens=16][,gray_images=false][,device=cpu]
                 [,dtype=float32]     device: cpu (default), cuda, cuda:N or auto; dtype: float32, bfloat16, float16

Prompts use the layout the model was trained with (ovpipe.models.hf_vlm.prompt_ids): one user turn
"<image>\\n" * n_images + context, then the assistant header. Decoding is greedy and stops at <|im_end|>.
gray_images=true replaces every image by a flat gray one of the same size: the blind control, which
tells how much of a score the language prior alone gets.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from lmms_eval.api.model import lmms  # does not import lmms_eval.models (see manifest)


def manifest():
    """Entry point `lmms_eval.models: ovpipe` (see pyproject.toml): a ModelManifest.

    ModelManifest is imported here, not at the top: importing lmms_eval.models loads every entry point,
    this module included, so a top-level import would leave `manifest` undefined when this module is
    imported before lmms_eval.models (the registry then warns and drops `ovpipe`)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="ovpipe", simple_class_path="ovpipe.evaluate.lmms_model.OvpipeLMM")


log = logging.getLogger(__name__)

PLACEHOLDER = "<image>"
GRAY = (128, 128, 128)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _flatten(visuals) -> list:
    out = []
    for v in visuals or []:
        if isinstance(v, (list, tuple)):
            out.extend(_flatten(v))
        elif v is not None:
            out.append(v)
    return out


class OvpipeLMM(lmms):
    """An ovpipe HF export (HFVisionLanguageModel) behind lmms-eval's simple-model interface."""

    is_simple = True

    def __init__(self, pretrained: str, batch_size: int = 16, max_new_tokens: int = 16, gray_images: bool = False,
                 device: str = "cpu", dtype: str = "float32", **kwargs) -> None:
        super().__init__()
        from ovpipe.models.hf_vlm import HFVisionLanguageModel
        from ovpipe.packing.tokenizer import SPECIAL, load_tokenizer

        unknown = {k: v for k, v in kwargs.items() if k != "max_batch_size"}
        if unknown:
            log.warning("ovpipe model: ignoring unknown model_args %s", sorted(unknown))
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r}: use one of {sorted(_DTYPES)}")
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.gray_images = _as_bool(gray_images)
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(f"batch_size={batch_size} and max_new_tokens={max_new_tokens} must be >= 1")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = HFVisionLanguageModel.from_export(str(pretrained), dtype=_DTYPES[dtype]).to(self.device).eval()
        self.tokenizer = load_tokenizer(self.model.path)
        self.eot_id = self.tokenizer.convert_tokens_to_ids(SPECIAL["im_end"])
        self.pad_id = self.model.llm.config.pad_token_id or 0
        self._warned_sampling = False

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> OvpipeLMM:
        """lmms-eval always passes the CLI's --batch_size (default 1) besides --model_args, and the base class
        would then get batch_size twice. --model_args wins; a --batch_size other than the default 1 (or
        'auto') applies when --model_args has none; --device applies when --model_args has none."""
        from lmms_eval import utils

        args = utils.simple_parse_args_string(arg_string or "")
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        cli_batch = extra.pop("batch_size", None)
        if "batch_size" not in args and cli_batch is not None and str(cli_batch).isdigit() and int(cli_batch) != 1:
            args["batch_size"] = int(cli_batch)
        for key, value in extra.items():
            args.setdefault(key, value)
        return cls(**args)

    # ------------------------------------------------------------ prompts and images

    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list:
        from PIL import Image

        if doc_to_visual is None:
            return []
        images = _flatten(doc_to_visual(self.task_dict[task][split][doc_id]))
        for im in images:
            if not isinstance(im, Image.Image):
                raise TypeError(f"{task}: the ovpipe model takes images only, got {type(im).__name__}")
        images = [im.convert("RGB") for im in images]
        if self.gray_images:
            images = [Image.new("RGB", im.size, GRAY) for im in images]
        return images

    def _turns(self, context: str, n_images: int) -> list[dict]:
        if PLACEHOLDER in context:  # the task placed its images itself
            return [{"role": "user", "content": context}]
        return [{"role": "user", "content": f"{PLACEHOLDER}\n" * n_images + context}]

    def _image_tokens(self, images: list) -> list[int]:
        from ovpipe.packing.images import image_tokens

        return [image_tokens(im.width, im.height, self.model.geometry) for im in images]

    def _prompt(self, context: str, images: list) -> list[int]:
        from ovpipe.models.hf_vlm import prompt_ids

        return prompt_ids(self._turns(context, len(images)), self._image_tokens(images), self.tokenizer)

    def _tensors(self, images: list) -> list[torch.Tensor]:
        from ovpipe.models.hf_vlm import image_tensor

        return [image_tensor(im, self.model.geometry).to(self.device, self.model.llm.dtype) for im in images]

    # ------------------------------------------------------------ generation

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], images: list[list], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation of a left-padded batch; each row is cut at the first <|im_end|>."""
        return self.model.generate(prompts, [self._tensors(ims) for ims in images], max_new_tokens, eos_id=self.eot_id)

    def _gen_settings(self, gen_kwargs: dict) -> tuple[int, tuple[str, ...]]:
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        if (gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0) and not self._warned_sampling:
            log.warning("ovpipe model: sampling settings %s ignored; decoding is greedy", gen_kwargs)
            self._warned_sampling = True
        return int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens), tuple(u for u in until if u)

    def generate_until(self, requests) -> list[str]:
        """requests[i].args = (context, gen_kwargs, doc_to_visual, doc_id, task, split)."""
        from tqdm import tqdm

        prepared = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            images = self._visuals(doc_to_visual, task, split, doc_id)
            prepared.append((self._prompt(context, images), images, self._gen_settings(gen_kwargs)))
        # Batches share generation settings; longest prompts first (padding is least, OOMs show early).
        order = sorted(range(len(prepared)), key=lambda i: (prepared[i][2], -len(prepared[i][0])))
        batches, current = [], []
        for i in order:
            if current and (len(current) == self.batch_size or prepared[current[0]][2] != prepared[i][2]):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)

        results: list[str | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="ovpipe generate")
        for batch in batches:
            max_new, until = prepared[batch[0]][2]
            rows = self._generate([prepared[i][0] for i in batch], [prepared[i][1] for i in batch], max_new)
            for i, row in zip(batch, rows):
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                for stop in until:
                    text = text.split(stop, 1)[0]
                results[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args[:2], text)
            pbar.update(len(batch))
        pbar.close()
        return results

    # ------------------------------------------------------------ likelihood

    def _scored(self, context: str, continuation: str, images: list) -> tuple[list[int], int]:
        """Token ids of prompt + answer turn (content and <|im_end|>), and where the answer starts."""
        from ovpipe.packing import sequence

        prompt = self._prompt(context, images)
        turns = self._turns(context, len(images)) + [{"role": "assistant", "content": continuation.lstrip()}]
        enc = sequence.encode(turns, self._image_tokens(images), self.tokenizer)
        ids = enc.input_ids.tolist()
        scored = [i for i, m in enumerate(enc.loss_mask.tolist()) if m]  # the answer's content + <|im_end|>
        if ids[:len(prompt)] != prompt or scored[0] != len(prompt):
            raise RuntimeError("the answer turn does not extend the prompt's tokens")  # layout invariant
        return ids[:scored[-1] + 1], len(prompt)

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """(negative log-likelihood, is_greedy) of each continuation as the assistant's answer turn.

        The NLL is -sum log p over the answer's tokens and its closing <|im_end|> ("the answer is exactly
        this"), after the prompt + assistant header; a leading space (lmms-eval's target_delimiter) is
        dropped, as answers start right after the header in training. NLL rather than log-prob, as every
        lmms-eval model returns a loss here and its multiple_choice scoring takes the argmin.
        is_greedy: greedy decoding would produce exactly these tokens.
        """
        from tqdm import tqdm

        prepared = []
        for req in requests:
            context, target, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            continuation = target if isinstance(target, str) else str(target(doc))
            images = self._visuals(doc_to_visual, task, split, doc_id)
            ids, start = self._scored(context, continuation, images)
            prepared.append((ids, start, images))
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="ovpipe loglikelihood")
        for b in range(0, len(order), self.batch_size):
            batch = order[b:b + self.batch_size]
            width = max(len(prepared[i][0]) for i in batch)  # right padding: positions stay 0..n-1
            ids = torch.tensor([prepared[i][0] + [self.pad_id] * (width - len(prepared[i][0])) for i in batch],
                               device=self.device)
            mask = torch.tensor([[1] * len(prepared[i][0]) + [0] * (width - len(prepared[i][0])) for i in batch],
                                device=self.device)
            emb = self.model.embed(ids, [t for i in batch for t in self._tensors(prepared[i][2])])
            logits = self.model.llm(inputs_embeds=emb, attention_mask=mask).logits.float()
            logp = F.log_softmax(logits, dim=-1)
            for row, i in enumerate(batch):
                seq, start, _ = prepared[i]
                target = torch.tensor(seq[start:], device=self.device)
                pred = logp[row, start - 1:len(seq) - 1]  # position t-1 predicts token t
                nll = -float(pred.gather(-1, target[:, None]).sum())
                greedy = bool((pred.argmax(-1) == target).all())
                results[i] = (nll, greedy)
                self.cache_hook.add_partial("loglikelihood", requests[i].args[:2], results[i])
            pbar.update(len(batch))
        pbar.close()
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("the ovpipe model does not implement generate_until_multi_round: its tasks "
                                  "(multi-turn dialogue benchmarks) need the conversation history, which "
                                  "OvpipeLMM does not keep; use single-round generate_until tasks")


def _as_bool(value) -> bool:
    if isinstance(value, str):
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no", ""):
            return False
        raise ValueError(f"gray_images={value!r}: use true or false")
    return bool(value)
