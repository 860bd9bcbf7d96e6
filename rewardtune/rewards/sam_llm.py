"""sam-llm: SAM regions, labelled by zero-shot CLIP, judged by an LLM for how likely each is in the prompt's scene.

The segment reward of FineRewards (Liu et al., arXiv 2305.19599), not differentiable:

1. SAM (transformers `SamModel`) segments each image automatically: point grid, predicted-IoU and stability
   filters, box NMS, in plain torch (`rewardtune.rewards._sam_amg`).
2. Each region's masked crop (outside the mask filled with CLIP's mean colour, padded to a square) is labelled by
   zero-shot CLIP over a vocabulary (default: COCO + common everyday classes, `rewardtune/data/vocab/`); labels
   whose softmax confidence is under `label_threshold` are dropped.
3. For every distinct label of an image an LLM is asked whether that object is certain / may / unlikely to appear
   in the scene the prompt describes (or yes / no with `answer_mode="yes-no"`). Its answer is never sampled: one
   batched forward pass reads the log-probabilities of the answer words' first tokens at the answer position,
   renormalised over the answers (optionally calibrated against a content-free question).

Score. A label's likelihood is `P(certain) + 0.5 P(may)` (yes-no: `P(yes)`), in [0, 1]. The image's reward is the
mean over its distinct labels of `likelihood - 0.5`, in [-0.5, 0.5]: the notebook's `(sum(s) - 2n) / 2n` with the
expected score `E[s] = 1 + 2 likelihood` of s in {1, 2, 3} in place of a sampled digit. `NEUTRAL` (0.0, what a label
judged "may appear" gives) is returned for an image with no labelled region, a blank image, or non-finite pixels.

Bad input never crashes a training step: an empty vocabulary is an error at construction; a prompt longer than
the LLM's context keeps its first tokens, ends with " ...", and `explain()` reports `prompt_truncated`.
"""
from __future__ import annotations

import importlib.util
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rewardtune.errors import MissingDependencyError, UsageError
from rewardtune.rewards._sam_amg import SamMaskGenerator, read_sam_preprocessing
from rewardtune.rewards._shared import clip_image_tower
from rewardtune.rewards._util import quiet_transformers
from rewardtune.rewards._weights import MODEL_NEEDS, resolve_weights
from rewardtune.rewards.base import Reward

NEUTRAL = 0.0
SCORE_RANGE = (-0.5, 0.5)

#: built-in vocabularies: name -> file under rewardtune/data/vocab/
VOCABULARIES = {"coco-lvis-common": "coco_lvis_common.txt"}

#: answer words and the likelihood each stands for
ANSWERS = {
    "three-way": (("certain", 1.0), ("may", 0.5), ("unlikely", 0.0)),
    "yes-no": (("yes", 1.0), ("no", 0.0)),
}

#: Vicuna v1.1 conversation format, used when the tokenizer has no chat template
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
QUESTIONS = {
    "three-way": ('A text-to-image prompt describes a scene: "{prompt}"\nAn object detector found "{label}" in an '
                  'image generated from this prompt. How likely is "{label}" to appear in the scene the prompt '
                  'describes? Answer with exactly one word: "certain" if it is certain to appear, "may" if it may '
                  'appear, or "unlikely" if it is unlikely to appear.'),
    "yes-no": ('A text-to-image prompt describes a scene: "{prompt}"\nAn object detector found "{label}" in an image '
               'generated from this prompt. Is "{label}" likely to appear in the scene the prompt describes? Answer '
               'with exactly one word: "yes" or "no".'),
}
CONTENT_FREE = "N/A"
MAX_LABEL_TOKENS = 16
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_vocabulary(vocabulary: str | Sequence[str]) -> list[str]:
    """Class names from a built-in name, a text file (one per line, `#` comments) or a list; deduplicated."""
    if isinstance(vocabulary, str):
        if vocabulary in VOCABULARIES:
            text = resources.files("rewardtune").joinpath("data", "vocab", VOCABULARIES[vocabulary]).read_text()
        else:
            p = Path(vocabulary).expanduser()
            if not p.is_file():
                raise UsageError(f"sam-llm: vocabulary '{vocabulary}' is neither a built-in vocabulary "
                                 f"({', '.join(VOCABULARIES)}) nor a text file. Pass one of those, a path to a file "
                                 "with one class name per line, or a list of names.")
            text = p.read_text()
        names = [line.split("#", 1)[0] for line in text.splitlines()]
    else:
        names = [str(n) for n in vocabulary]
    out: list[str] = []
    seen = set()
    for n in names:
        n = " ".join(n.replace("_", " ").split())
        if n and n.lower() not in seen:
            seen.add(n.lower())
            out.append(n)
    if not out:
        raise UsageError(f"sam-llm: the label vocabulary {vocabulary!r} is empty. Give at least one class name "
                         f"(or use the built-in '{next(iter(VOCABULARIES))}').")
    return out


def _features(out) -> torch.Tensor:
    """CLIP get_*_features returns a tensor (transformers 4) or an output whose pooler_output is projected (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output




class ClipLabeller:
    """Zero-shot CLIP classification of masked region crops over a fixed vocabulary.

    The vocabulary's text embeddings are computed once, from the full CLIP model, which is then no longer needed:
    at run time only the image tower (`CLIPVisionModelWithProjection`) runs, and it can be the very one another
    reward loaded (see `rewards._shared`)."""

    def __init__(self, model, tokenizer, vocabulary: list[str], *, image_size: int, mean, std,
                 template: str = "a photo of a {}.", text_batch: int = 256, image_tower=None):
        self.vocabulary = vocabulary
        self.image_size, self.mean, self.std = int(image_size), list(mean), list(std)
        dev = next(model.parameters()).device
        max_len = int(model.config.text_config.max_position_embeddings)
        feats = []
        with torch.no_grad():
            for i in range(0, len(vocabulary), text_batch):
                texts = [template.format(n) for n in vocabulary[i:i + text_batch]]
                t = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(dev)
                feats.append(F.normalize(_features(model.get_text_features(**t)).float(), dim=-1))
        self.text_features = torch.cat(feats)  # [V, D]
        self.scale = float(model.logit_scale.detach().exp())
        self.model = image_tower if image_tower is not None else model

    def crops(self, image: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Masked, square-padded crops [N,3,S,S] normalized for CLIP; outside the mask is the mean colour."""
        from rewardtune.rewards.preprocess import normalize, resize

        fill = torch.tensor(self.mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
        out = []
        for m, b in zip(masks, boxes, strict=True):
            x1, y1, x2, y2 = (int(v) for v in b.tolist())
            x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
            crop = image[:, y1:y2, x1:x2]
            mk = m[y1:y2, x1:x2].to(image.dtype)
            crop = crop * mk + fill * (1 - mk)
            h, w = crop.shape[-2:]
            side = max(h, w)
            canvas = fill.expand(3, side, side).clone()
            top, left = (side - h) // 2, (side - w) // 2
            canvas[:, top:top + h, left:left + w] = crop
            out.append(resize(canvas[None], (self.image_size, self.image_size), "bicubic").clamp(0, 1))
        return normalize(torch.cat(out), self.mean, self.std)

    @torch.no_grad()
    def __call__(self, crops: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Top-1 label and its softmax confidence over the vocabulary for each crop."""
        dtype = next(self.model.parameters()).dtype
        if hasattr(self.model, "get_image_features"):  # the full CLIP model
            emb = _features(self.model.get_image_features(pixel_values=crops.to(dtype)))
        else:  # the image tower alone
            emb = self.model(pixel_values=crops.to(dtype)).image_embeds
        img = F.normalize(emb.float(), dim=-1)
        if self.text_features.device != img.device:  # the reward was moved with .to()
            self.text_features = self.text_features.to(img.device)
        probs = (self.scale * img @ self.text_features.T).softmax(dim=-1)
        conf, idx = probs.max(dim=-1)
        return [self.vocabulary[i] for i in idx.tolist()], conf


class LlmJudge:
    """Reads an LLM's answer log-probabilities for 'is LABEL likely in the scene of PROMPT' questions."""

    def __init__(self, model, tokenizer, *, answer_mode: str = "three-way", calibrate: bool = False,
                 use_chat_template: bool | None = None):
        self.model, self.tok = model, tokenizer
        self.answer_mode = answer_mode
        self.words = [w for w, _ in ANSWERS[answer_mode]]
        self.values = torch.tensor([v for _, v in ANSWERS[answer_mode]])
        self.calibrate = calibrate
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = has_template if use_chat_template is None else (use_chat_template and has_template)
        ctx = [int(getattr(model.config, "max_position_embeddings", 0) or 0)]
        mml = getattr(tokenizer, "model_max_length", None)
        if mml and mml < 1_000_000:
            ctx.append(int(mml))
        ctx = [c for c in ctx if c > 0]
        self.context = min(ctx) if ctx else 2048
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.answer_ids = self._answer_token_ids()
        self._cf_logp: torch.Tensor | None = None

    def render(self, prompt: str, label: str) -> str:
        q = QUESTIONS[self.answer_mode].format(prompt=prompt, label=label)
        if self.use_chat_template:
            return self.tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                add_generation_prompt=True)
        return f"{VICUNA_SYSTEM} USER: {q} ASSISTANT:"

    def encode(self, text: str) -> list[int]:
        # a chat template writes its own BOS text; the plain format relies on the tokenizer adding it
        return self.tok(text, add_special_tokens=not self.use_chat_template).input_ids

    def _answer_token_ids(self) -> list[int]:
        base = self.render("a cat on a sofa", "cat")
        base_ids = self.encode(base)
        ids = []
        for w in self.words:
            full = self.encode(base + " " + w)
            if full[:len(base_ids)] == base_ids and len(full) > len(base_ids):
                ids.append(full[len(base_ids)])
            else:  # tokenizers that re-merge across the boundary: the word's own first token
                ids.append(self.tok(" " + w, add_special_tokens=False).input_ids[0])
        if len(set(ids)) != len(ids):
            raise UsageError(f"sam-llm: the LLM tokenizer maps the answers {self.words} to overlapping first tokens "
                             f"{ids}; use answer_mode='yes-no' or another model.")
        return ids

    def fit(self, prompt: str, label: str) -> tuple[str, list[int], bool]:
        """Question ids for (prompt, label) within the context; long prompts keep their first tokens + ' ...'."""
        lab_ids = self.tok(label, add_special_tokens=False).input_ids
        if len(lab_ids) > MAX_LABEL_TOKENS:
            label = self.tok.decode(lab_ids[:MAX_LABEL_TOKENS]).strip()
        ids = self.encode(self.render(prompt, label))
        if len(ids) <= self.context:
            return prompt, ids, False
        overhead = len(self.encode(self.render("", label)))
        p_ids = self.tok(prompt, add_special_tokens=False).input_ids
        keep = self.context - overhead - 4
        while keep > 0:
            short = self.tok.decode(p_ids[:keep]).strip() + " ..."
            ids = self.encode(self.render(short, label))
            if len(ids) <= self.context:
                return short, ids, True
            keep -= max(1, len(ids) - self.context)
        raise UsageError(f"sam-llm: the LLM context ({self.context} tokens) cannot hold the question even without "
                         "the prompt; use an LLM with a longer context.")

    @torch.no_grad()
    def answer_logprobs(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batched forward pass: (log-probs over the full vocabulary of each answer word's first token [n, K],
        renormalised answer probabilities [n, K])."""
        model = self.model
        dev = next(model.parameters()).device
        n, length = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(n, length, dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding: the answer position is the last one for every row
            ids[i, length - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, length - len(s):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": False,
                                  "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        try:
            logits = model(**kwargs, logits_to_keep=1).logits[:, -1]
        except TypeError:  # models without logits_to_keep
            logits = model(**kwargs).logits[:, -1]
        logp = logits.float().log_softmax(dim=-1)[:, self.answer_ids].cpu()
        return logp, logp.softmax(dim=-1)

    def content_free_logp(self) -> torch.Tensor:
        if self._cf_logp is None:
            _, ids, _ = self.fit(CONTENT_FREE, CONTENT_FREE)
            logp, _ = self.answer_logprobs([ids])
            self._cf_logp = logp[0]
        return self._cf_logp

    def judge(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(likelihood [n] in [0,1], answer probabilities [n,K], probability mass on the answers [n])."""
        logp, probs = self.answer_logprobs(seqs)
        if self.calibrate:  # contextual calibration: divide by the content-free answer distribution
            probs = (logp - self.content_free_logp()).softmax(dim=-1)
        return probs @ self.values, probs, logp.exp().sum(-1)


class SamLlmReward(Reward):
    """FineRewards' SAM + LLM segment reward (see the module docstring). Higher is better, range [-0.5, 0.5].

    `explain()` returns one dict per image:
      - `score` (float), `neutral` (bool), `reason` (why neutral: "blank image", "non-finite pixels",
        "no labelled region", or null);
      - `prompt_used` (the prompt as the LLM saw it), `prompt_truncated` (bool);
      - `regions`: list of {`bbox` [x1, y1, x2, y2] pixels (x2/y2 exclusive), `area` (pixels), `area_frac`,
        `pred_iou`, `stability`, `label` (top-1 class), `label_confidence`, `labelled` (confidence passed)};
      - `labels`: list of {`label`, `regions` (how many regions carry it), `likelihood` in [0, 1],
        `answers` {answer word: renormalised probability}, `answer_mass` (LLM probability on the answer tokens)}.
    """

    name = "sam-llm"
    differentiable = False
    inputs = ("pixels", "prompt")

    def __init__(self, weights: str = "facebook/sam-vit-huge", revision: str | None = None, *,
                 clip_weights: str = "openai/clip-vit-large-patch14", clip_revision: str | None = None,
                 llm_weights: str = "lmsys/vicuna-7b-v1.5", llm_revision: str | None = None,
                 vocabulary: str | list[str] = "coco-lvis-common", label_template: str = "a photo of a {}.",
                 label_threshold: float = 0.2, points_per_side: int = 16, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.92,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, min_area_frac: float = 0.002,
                 max_regions: int = 16, answer_mode: str = "three-way", calibrate: bool = False,
                 use_chat_template: bool | None = None, llm_quantization: str = "none", cache_size: int = 65536,
                 device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32", max_batch_size: int = 8):
        super().__init__(device=device, dtype=dtype, max_batch_size=max_batch_size)
        if answer_mode not in ANSWERS:
            raise UsageError(f"sam-llm: answer_mode '{answer_mode}' is not one of {', '.join(ANSWERS)}.")
        if llm_quantization not in ("none", "auto", "8bit", "4bit"):
            raise UsageError(f"sam-llm: llm_quantization '{llm_quantization}' is not one of none, auto, 8bit, 4bit.")
        if "{}" not in label_template:
            raise UsageError(f"sam-llm: label_template must contain '{{}}' for the class name, got {label_template!r}.")
        for nm, v in (("label_threshold", label_threshold), ("min_area_frac", min_area_frac)):
            if not 0.0 <= v <= 1.0:
                raise UsageError(f"sam-llm: {nm} must lie in [0, 1], got {v}.")
        if points_per_side < 1 or points_per_batch < 1 or max_regions < 1:
            raise UsageError("sam-llm: points_per_side, points_per_batch and max_regions must be >= 1.")
        if llm_quantization in ("8bit", "4bit") and importlib.util.find_spec("bitsandbytes") is None:
            raise MissingDependencyError("bitsandbytes", "bnb", f"sam-llm: llm_quantization='{llm_quantization}'")
        self.vocabulary = load_vocabulary(vocabulary)
        self.weights, self.revision = weights, revision
        self.clip_weights, self.clip_revision = clip_weights, clip_revision
        self.llm_weights, self.llm_revision = llm_weights, llm_revision
        self.label_template, self.label_threshold = label_template, float(label_threshold)
        self.amg = dict(points_per_side=int(points_per_side), points_per_batch=int(points_per_batch),
                        pred_iou_thresh=float(pred_iou_thresh), stability_score_thresh=float(stability_score_thresh),
                        stability_score_offset=float(stability_score_offset), box_nms_thresh=float(box_nms_thresh),
                        min_area_frac=float(min_area_frac), max_masks=int(max_regions))
        self.answer_mode, self.calibrate, self.use_chat_template = answer_mode, bool(calibrate), use_chat_template
        self.llm_quantization = llm_quantization
        self.cache_size = int(cache_size)
        self._judged: OrderedDict[tuple[str, str], tuple[float, list[float], float, str, bool]] = OrderedDict()

    # -- loading ---------------------------------------------------------------------------------------------
    def _quantization_config(self):
        mode = self.llm_quantization
        if mode == "auto":
            ok = self.device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
            mode = "8bit" if ok else "none"
        if mode == "none":
            return None
        if self.device.type != "cuda":
            raise UsageError(f"sam-llm: llm_quantization='{mode}' needs a CUDA device (bitsandbytes); got "
                             f"{self.device}. Use llm_quantization=none or auto.")
        from transformers import BitsAndBytesConfig

        if mode == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        compute = self.dtype if self.dtype != torch.float32 else torch.float16
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute, bnb_4bit_quant_type="nf4")

    def _load(self) -> list[torch.nn.Module]:
        with quiet_transformers():
            return self._load_models()

    def _load_models(self) -> list[torch.nn.Module]:
        from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPModel, SamModel

        sam_dir = resolve_weights(self.weights, self.revision, what="sam-llm segmenter (SAM)", needs=MODEL_NEEDS)
        clip_dir = resolve_weights(self.clip_weights, self.clip_revision, what="sam-llm labeller (CLIP)",
                                   setting="kwargs.clip_weights", needs=MODEL_NEEDS)
        llm_dir = resolve_weights(self.llm_weights, self.llm_revision, what="sam-llm judge (LLM)",
                                  setting="kwargs.llm_weights", needs=MODEL_NEEDS)

        sam = SamModel.from_pretrained(sam_dir, dtype=self.dtype).to(self.device).eval()
        size, pad, mean, std = read_sam_preprocessing(sam_dir, sam)
        self.masker = SamMaskGenerator(sam, longest_edge=size, pad_hw=pad, mean=mean, std=std, **self.amg)

        clip = CLIPModel.from_pretrained(clip_dir, dtype=self.dtype).to(self.device).eval()
        isize, cmean, cstd = self._clip_preprocessing(clip_dir, clip)
        # the aesthetic predictor's tower when it is loaded alongside, else this model's own (no second read)
        tower = clip_image_tower(clip_dir, self.dtype, self.device, from_model=clip)
        self.labeller = ClipLabeller(clip, AutoTokenizer.from_pretrained(clip_dir), self.vocabulary,
                                     image_size=isize, mean=cmean, std=cstd, template=self.label_template,
                                     image_tower=tower)
        del clip  # the vocabulary is embedded; the text tower is not needed again

        qc = self._quantization_config()
        if qc is not None:
            llm = AutoModelForCausalLM.from_pretrained(llm_dir, quantization_config=qc, device_map={"": self.device},
                                                       dtype=self.dtype if self.dtype != torch.float32 else None)
        else:
            llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=self.dtype).to(self.device)
        llm.eval()
        self.judge = LlmJudge(llm, AutoTokenizer.from_pretrained(llm_dir), answer_mode=self.answer_mode,
                              calibrate=self.calibrate, use_chat_template=self.use_chat_template)
        return [sam, tower, llm]

    @staticmethod
    def _clip_preprocessing(clip_dir: Path, clip) -> tuple[int, list[float], list[float]]:
        size, mean, std = int(clip.config.vision_config.image_size), list(CLIP_MEAN), list(CLIP_STD)
        for name in ("preprocessor_config.json", "processor_config.json"):
            p = Path(clip_dir) / name
            if p.exists():
                cfg = json.loads(p.read_text())
                cfg = cfg.get("image_processor", cfg)
                crop = cfg.get("crop_size") or {}
                size = int(crop.get("height", size) if isinstance(crop, dict) else crop)
                mean, std = list(cfg.get("image_mean", mean)), list(cfg.get("image_std", std))
                break
        return size, mean, std

    # -- scoring ---------------------------------------------------------------------------------------------
    def _judge_pairs(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple]:
        """(prompt, label) -> (likelihood, answer probs, answer mass, prompt used, truncated); cached per run."""
        out, todo, seqs = {}, [], []
        for key in dict.fromkeys(pairs):
            if key in self._judged:
                self._judged.move_to_end(key)
                out[key] = self._judged[key]
            else:
                used, ids, trunc = self.judge.fit(*key)
                todo.append((key, used, trunc))
                seqs.append(ids)
        if seqs:
            like, probs, mass = self.judge.judge(seqs)  # one batched forward pass
            for (key, used, trunc), li, pr, ma in zip(todo, like.tolist(), probs.tolist(), mass.tolist(), strict=True):
                val = (li, pr, ma, used, trunc)
                out[key] = val
                self._judged[key] = val
                while len(self._judged) > self.cache_size:
                    self._judged.popitem(last=False)
        return out

    @torch.no_grad()
    def _analyze(self, pixels: torch.Tensor, prompts: list[str]) -> list[dict[str, Any]]:
        b, _, h, w = pixels.shape
        finite = torch.isfinite(pixels).flatten(1).all(1).tolist()
        flat = ((pixels.flatten(1).amax(1) - pixels.flatten(1).amin(1)) < (2.0 / 255.0)).tolist()
        reasons = ["non-finite pixels" if not finite[i] else "blank image" if flat[i] else "no labelled region"
                   for i in range(b)]
        records: list[dict[str, Any]] = [
            {"score": NEUTRAL, "neutral": True, "reason": reasons[i], "prompt_used": prompts[i],
             "prompt_truncated": False, "regions": [], "labels": []} for i in range(b)]
        live = [i for i in range(b) if reasons[i] == "no labelled region"]
        if not live:
            return records
        masksets = self.masker(pixels[live])
        crops, owners = [], []
        for i, ms in zip(live, masksets, strict=True):
            if len(ms):
                crops.append(self.labeller.crops(pixels[i], ms.masks, ms.boxes))
                owners += [(i, k) for k in range(len(ms))]
        labels, conf = (self.labeller(torch.cat(crops)) if crops else ([], torch.zeros(0)))
        per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in live}
        for (i, k), lab, c in zip(owners, labels, conf.tolist(), strict=True):
            ms = masksets[live.index(i)]
            area = int(ms.areas[k])
            per_image[i].append({
                "bbox": [int(v) for v in ms.boxes[k].tolist()], "area": area, "area_frac": area / float(h * w),
                "pred_iou": float(ms.pred_iou[k]), "stability": float(ms.stability[k]), "label": lab,
                "label_confidence": float(c), "labelled": bool(c >= self.label_threshold)})
        pairs = [(prompts[i], r["label"]) for i in live for r in per_image[i] if r["labelled"]]
        judged = self._judge_pairs(pairs) if pairs else {}
        for i in live:
            rec = records[i]
            rec["regions"] = per_image[i]
            counts: dict[str, int] = {}
            for r in per_image[i]:
                if r["labelled"]:
                    counts[r["label"]] = counts.get(r["label"], 0) + 1
            for lab, n in counts.items():
                li, pr, ma, used, trunc = judged[(prompts[i], lab)]
                rec["labels"].append({"label": lab, "regions": n, "likelihood": li,
                                      "answers": dict(zip(self.judge.words, pr, strict=True)), "answer_mass": ma})
                rec["prompt_used"], rec["prompt_truncated"] = used, trunc
            if rec["labels"]:
                score = sum(x["likelihood"] for x in rec["labels"]) / len(rec["labels"]) - 0.5
                rec.update(score=score if math.isfinite(score) else NEUTRAL, neutral=False, reason=None)
        return records

    def _forward(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        recs = self._analyze(pixels, prompts)
        return torch.tensor([r["score"] for r in recs], dtype=torch.float32, device=pixels.device)

    def _explain(self, pixels: torch.Tensor, prompts: list[str]) -> list[dict[str, Any]]:
        """Per-image regions, labels and likelihoods (keys in the class docstring)."""
        return self._analyze(pixels, prompts)
