"""Train the shapes world's models from a seed: a VAE, an SD-1.x-architecture pipeline (UNet + CLIP text encoder,
DDIM), its SDXL-architecture sibling (the UNet with added conditioning + two CLIP text encoders, DDIM), its
flow-matching SD3-architecture sibling (transformer + two CLIPs + a small T5, flow-match Euler), its
FLUX.1-architecture sibling (transformer on packed latents + a CLIP + the small T5, no guidance input) and a
CLIP-architecture reward. The results are `save_pretrained` directories that load through the same
`from_pretrained` paths as hub checkpoints.

    python -m rewardtune.world.train all --out rewardtune/data/models      # or: nox -s shapes-world

Each part runs on one CPU thread (the models are tiny; more threads do not help) and writes a model card
(README.md) with the command, seed, steps, wall time and measured metrics. Runs are deterministic for a given
torch build and thread count; across builds the metrics reproduce within their sampling noise.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rewardtune.world import shapes as W

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LEN = 16
TEXT_HIDDEN = 64
#: the words every tokenizer of the world knows as single tokens; others fall back to byte symbols
WORDS = ("a", "an", *W.COLOURS, *W.SHAPES)


# ------------------------------------------------------------------------------------------------- tokenizer
def _bpe_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Byte-pair merges that make every word one token: greedy BPE on the word list, ties broken by the pair's
    text, so the result is the same in every process."""
    seqs = [list(w[:-1]) + [w[-1] + "</w>"] for w in words]
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in seqs):
        counts: dict[tuple[str, str], int] = {}
        for s in seqs:
            for pair in zip(s, s[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        for i, s in enumerate(seqs):
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and (s[j], s[j + 1]) == pair:
                    out.append(s[j] + s[j + 1])
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[i] = out
    return merges


def make_tokenizer():
    """A CLIPTokenizer whose vocabulary is the 512 byte symbols (plain and word-final), the merges that spell the
    world's words, and BOS/EOS: "a red circle" is BOS a red circle EOS."""
    from transformers import CLIPTokenizer

    from rewardtune.zoo.tokenizers import bytes_to_unicode

    base = list(bytes_to_unicode().values())
    merges = _bpe_merges(WORDS)
    vocab_list = base + [b + "</w>" for b in base]
    for a, b in merges:
        if a + b not in vocab_list:
            vocab_list.append(a + b)
    vocab_list += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LEN)


def _text_config(tok) -> dict[str, Any]:
    return dict(vocab_size=len(tok), hidden_size=TEXT_HIDDEN, intermediate_size=2 * TEXT_HIDDEN, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=MAX_LEN, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, projection_dim=TEXT_HIDDEN)


def _ids(tok, texts: list[str]) -> torch.Tensor:
    return tok(texts, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt").input_ids


# ------------------------------------------------------------------------------------------------------ models
def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                         latent_channels=4, norm_num_groups=8, sample_size=W.RES)


#: the SDXL sibling's two text encoders' width (side by side they are the UNet's cross-attention width, as in SDXL)
#: and its micro-conditioning's embedding width per number (SDXL's `addition_time_embed_dim`)
SDXL_TEXT_HIDDEN = TEXT_HIDDEN // 2
SDXL_TIME_EMBED = 8


def make_unet(xl: bool = False):
    """shapes-sd1's UNet; with `xl`, SDXL's added conditioning as well: the second text encoder's pooled projection
    and the six micro-conditioning numbers enter through the time embedding (`addition_embed_type="text_time"`), and
    the attention blocks project in and out with Linear layers, as SDXL's (`use_linear_projection`)."""
    from diffusers import UNet2DConditionModel

    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_EMBED, use_linear_projection=True,
                 projection_class_embeddings_input_dim=SDXL_TEXT_HIDDEN + 6 * SDXL_TIME_EMBED) if xl else {}
    return UNet2DConditionModel(
        sample_size=W.RES // 2, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8, norm_num_groups=8, only_cross_attention=True, **extra)


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def make_clip(tok):
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(CLIPConfig(
        text_config=_text_config(tok),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           image_size=W.RES, patch_size=4, projection_dim=64),
        projection_dim=64))


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# -------------------------------------------------------------------------------------------------------- data
def world_batch(n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """n world images as [n, 3, 32, 32] in [0, 1] and their captions."""
    imgs, scenes = W.sample(n, seed)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), [s.caption for s in scenes]


def degrade(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Augmentation for the reward: random blur and pixel noise, as generated images show them."""
    n = x.shape[0]
    k = torch.tensor([0.25, 0.5, 0.25])
    blur = F.conv2d(F.pad(x.reshape(-1, 1, *x.shape[-2:]), (1, 1, 1, 1), mode="replicate"),
                    (k[:, None] * k[None, :])[None, None]).reshape_as(x)
    amount = torch.rand(n, 1, 1, 1, generator=g)
    x = x * (1 - amount) + blur * amount
    sigma = torch.rand(n, 1, 1, 1, generator=g) * 0.08
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


# -------------------------------------------------------------------------------------------------------- loop
def _loop(steps: int, step_fn: Callable[[int], dict[str, float]], log_every: int, name: str) -> list[dict[str, Any]]:
    hist = []
    t0 = time.perf_counter()
    for i in range(steps):
        m = step_fn(i)
        if (i + 1) % log_every == 0 or i + 1 == steps:
            rec = {"step": i + 1, "time_s": round(time.perf_counter() - t0, 1), **{k: round(v, 5) for k, v in m.items()}}
            hist.append(rec)
            print(f"[{name}] " + " ".join(f"{k}={v}" for k, v in rec.items()), flush=True)
    return hist


def _cosine_lr(opt: torch.optim.Optimizer, lr: float, i: int, steps: int, warmup: int) -> None:
    f = (i + 1) / warmup if i < warmup else 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, steps - warmup)))
    for grp in opt.param_groups:
        grp["lr"] = lr * max(f, 0.05)


def _warmup_lr(opt: torch.optim.Optimizer, lr: float, i: int, warmup: int = 100) -> None:
    """Linear warmup, then constant: a run of N steps is the first N steps of a longer one (`--sd-steps N`, and
    the siblings' `--*-steps N`, reproduce a snapshot of a longer run)."""
    for grp in opt.param_groups:
        grp["lr"] = lr * min(1.0, (i + 1) / warmup)


# --------------------------------------------------------------------------------------------------------- VAE
def train_vae(out: Path, seed: int = 0, steps: int = 800, batch: int = 32, lr: float = 2e-3) -> dict[str, Any]:
    torch.manual_seed(seed)
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)

    def step(i: int) -> dict[str, float]:
        _cosine_lr(opt, lr, i, steps, 50)
        x, _ = world_batch(batch, seed * 1_000_003 + i)
        post = vae.encode(x * 2 - 1).latent_dist
        rec = vae.decode(post.sample()).sample
        l_rec = F.mse_loss(rec, x * 2 - 1)
        kl = post.kl().mean() / post.mean[0].numel()
        loss = l_rec + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        return {"rec": float(l_rec.detach()), "kl": float(kl.detach())}

    t0 = time.perf_counter()
    vae.train()
    hist = _loop(steps, step, 50, "vae")
    vae.eval()
    with torch.no_grad():  # latents of unit std for the UNet (SD's scaling_factor convention)
        x, caps = world_batch(512, seed + 7)
        z = vae.encode(x * 2 - 1).latent_dist.sample()
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        rec = ((vae.decode(z).sample + 1) / 2).clamp(0, 1)
    acc = W.accuracy(W.judge(rec.permute(0, 2, 3, 1).numpy(), caps))
    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out)
    return {"params": n_params(vae), "steps": steps, "batch": batch, "lr": lr, "seed": seed,
            "time_s": round(time.perf_counter() - t0, 1), "scaling_factor": vae.config.scaling_factor,
            "reconstruction_accuracy": acc, "history": hist}


# -------------------------------------------------------------------------------------------------------- CLIP
def train_clip(out: Path, seed: int = 0, steps: int = 1200, batch: int = 128, lr: float = 2e-3) -> dict[str, Any]:
    """Contrastive image -> text training against all 32 captions (each image's caption is the positive), with
    blur and noise augmentation so it also reads imperfect generated images."""
    torch.manual_seed(seed)
    tok = make_tokenizer()
    clip = make_clip(tok)
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=1e-4)
    captions = W.prompts()
    ids = _ids(tok, captions)
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor(_OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_OPENAI_STD).view(1, 3, 1, 1)

    def logits(x: torch.Tensor) -> torch.Tensor:
        img = clip.get_image_features(pixel_values=(x - mean) / std)
        txt = clip.get_text_features(input_ids=ids)
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
        return clip.logit_scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T

    def step(i: int) -> dict[str, float]:
        _cosine_lr(opt, lr, i, steps, 50)
        x, caps = world_batch(batch, seed * 1_000_003 + 500_000 + i)
        target = torch.tensor([captions.index(c) for c in caps])
        lg = logits(degrade(x, g))
        loss = F.cross_entropy(lg, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        return {"loss": float(loss.detach()), "acc": float((lg.argmax(1) == target).float().mean())}

    t0 = time.perf_counter()
    clip.train()
    hist = _loop(steps, step, 50, "clip")
    clip.eval()
    with torch.no_grad():
        x, caps = world_batch(1024, seed + 99)  # held-out seeds
        target = torch.tensor([captions.index(c) for c in caps])
        held = float((logits(x).argmax(1) == target).float().mean())
        held_deg = float((logits(degrade(x, torch.Generator().manual_seed(1))).argmax(1) == target).float().mean())
    save_clip(clip, tok, out)
    return {"params": n_params(clip), "steps": steps, "batch": batch, "lr": lr, "seed": seed,
            "time_s": round(time.perf_counter() - t0, 1), "heldout_retrieval": held,
            "heldout_retrieval_degraded": held_deg, "logit_scale": float(clip.logit_scale.exp()), "history": hist}


_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def save_clip(clip, tok, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    clip.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": W.RES},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": W.RES, "width": W.RES}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(_OPENAI_MEAN),
        "image_std": list(_OPENAI_STD), "do_convert_rgb": True}, indent=2))


# --------------------------------------------------------------------------------------------------------- UNet
def train_sd(out: Path, vae_dir: Path, seed: int = 0, steps: int = 3000, batch: int = 32, lr: float = 1e-3,
             caption_dropout: float = 0.1, measure_every: int = 0, keep_snapshots: bool = False,
             xl: bool = False) -> dict[str, Any]:
    """Denoising (epsilon) training of the UNet and the text encoder together, on latents of the trained VAE,
    with caption dropout so classifier-free guidance works; then the whole pipeline is saved.

    With `xl`, the SDXL-architecture sibling: two text encoders (a CLIPTextModel and a CLIPTextModelWithProjection
    sharing the world's tokenizer) whose penultimate states, side by side, are the UNet's cross-attention input, the
    second's pooled projection and the micro-conditioning (32, 32, 0, 0, 32, 32) its added conditioning, as
    StableDiffusionXLPipeline feeds them. A dropped caption is all zeros (embeddings and pooled), which is what
    SDXL's pipeline samples the unconditional branch with (`force_zeros_for_empty_prompt`)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = make_tokenizer()
    vae = AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False)
    unet = make_unet(xl)
    if xl:
        texts = [CLIPTextModel(CLIPTextConfig(**dict(_text_config(tok), hidden_size=SDXL_TEXT_HIDDEN,
                                                     intermediate_size=2 * SDXL_TEXT_HIDDEN))),
                 _sd3_text(tok, SDXL_TEXT_HIDDEN)]
    else:
        texts = [CLIPTextModel(CLIPTextConfig(**_text_config(tok)))]
    sched = make_scheduler()
    params = [*unet.parameters(), *(p for t in texts for p in t.parameters())]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    ac = sched.alphas_cumprod
    sf = vae.config.scaling_factor
    measures: list[dict[str, Any]] = []
    name = "sdxl" if xl else "sd"

    def pipeline():
        if xl:
            return StableDiffusionXLPipeline(vae=vae, text_encoder=texts[0], text_encoder_2=texts[1], tokenizer=tok,
                                             tokenizer_2=tok, unet=unet, scheduler=sched, image_encoder=None,
                                             feature_extractor=None, force_zeros_for_empty_prompt=True,
                                             add_watermarker=False)
        return StableDiffusionPipeline(vae=vae, text_encoder=texts[0], tokenizer=tok, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, image_encoder=None,
                                       requires_safety_checker=False)

    def denoise(zt: torch.Tensor, t: torch.Tensor, caps: list[str], drop: torch.Tensor) -> torch.Tensor:
        if not xl:
            caps = ["" if d else c for c, d in zip(caps, drop.tolist(), strict=True)]
            return unet(zt, t, encoder_hidden_states=texts[0](_ids(tok, caps))[0]).sample
        emb, pooled, time_ids = sdxl_conditioning(texts[0], texts[1], tok, caps, drop)
        return unet(zt, t, encoder_hidden_states=emb,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample

    def train_mode(on: bool) -> None:
        for m in (unet, *texts):
            m.train(on)

    t0 = time.perf_counter()

    def step(i: int) -> dict[str, float]:
        _warmup_lr(opt, lr, i)
        x, caps = world_batch(batch, seed * 1_000_003 + 900_000 + i)
        drop = torch.rand(batch, generator=g) < caption_dropout
        with torch.no_grad():
            z = vae.encode(x * 2 - 1).latent_dist.sample(generator=g) * sf
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g)
        a = ac[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z + (1 - a).sqrt() * noise
        loss = F.mse_loss(denoise(zt, t, caps, drop), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if measure_every and (i + 1) % measure_every == 0 and i + 1 < steps:
            train_mode(False)
            snap = out.parent / f".{out.name}-step{i + 1}"
            pipeline().save_pretrained(snap)
            m = measure_pipeline(snap)
            if not keep_snapshots:
                shutil.rmtree(snap, ignore_errors=True)
            measures.append({"step": i + 1, "time_s": round(time.perf_counter() - t0, 1), **m})
            print(f"[{name}] measured at step {i + 1}: {m}", flush=True)
            train_mode(True)
        return {"loss": float(loss.detach())}

    train_mode(True)
    hist = _loop(steps, step, 50, name)
    train_mode(False)
    pipeline().save_pretrained(out)
    elapsed = time.perf_counter() - t0
    text_params = ("params_text_encoders", sum(n_params(t) for t in texts)) if xl else \
        ("params_text_encoder", n_params(texts[0]))
    return {"params_unet": n_params(unet), text_params[0]: text_params[1], "params_vae": n_params(vae),
            "steps": steps, "batch": batch, "lr": lr, "seed": seed, "caption_dropout": caption_dropout,
            "time_s": round(elapsed, 1), "measured_during_training": measures, "history": hist}


def sdxl_conditioning(te1, te2, tok, caps: list[str], drop: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the SDXL sibling's UNet is trained on, as StableDiffusionXLPipeline encodes a prompt: (both encoders'
    penultimate states side by side, the second's pooled projection, the micro-conditioning (original size, crop
    top-left, target size) = (32, 32, 0, 0, 32, 32)); the captions where `drop` is set are all zeros, the
    pipeline's unconditional branch (`force_zeros_for_empty_prompt`). With two layers per encoder, the penultimate
    state is the first layer's output: the first encoder's last layer is never used, as CLIP-L's is not in SDXL."""
    ids = _ids(tok, caps)
    o1, o2 = te1(ids, output_hidden_states=True), te2(ids, output_hidden_states=True)
    emb = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)
    pooled = o2.text_embeds
    if drop is not None:
        keep = (~drop).to(emb.dtype)
        emb, pooled = emb * keep.view(-1, 1, 1), pooled * keep.view(-1, 1)
    time_ids = torch.tensor([[W.RES, W.RES, 0, 0, W.RES, W.RES]], dtype=emb.dtype).repeat(len(caps), 1)
    return emb, pooled, time_ids


def make_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=W.RES // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=4, attention_head_dim=16,
        num_attention_heads=4, joint_attention_dim=2 * SD3_TEXT_HIDDEN, caption_projection_dim=64,
        pooled_projection_dim=2 * SD3_TEXT_HIDDEN, pos_embed_max_size=W.RES // 4)


def make_flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


#: each of the SD3 sibling's two CLIP text encoders; concatenated they are the transformer's joint width
SD3_TEXT_HIDDEN = 32
#: T5 tokens (character-level, so the longest caption, "an orange triangle", fits with its word marks and EOS)
SD3_T5_LEN = 24


def _sd3_t5():
    from transformers import T5Config, T5EncoderModel

    from rewardtune.zoo.tokenizers import tiny_t5_tokenizer

    tok5 = tiny_t5_tokenizer(SD3_T5_LEN)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok5), d_model=2 * SD3_TEXT_HIDDEN, d_kv=16, d_ff=128, num_layers=2,
                                 num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                 dense_act_fn="gelu_new", is_gated_act=True, pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0))
    return tok5, t5


def _sd3_text(tok, hidden: int = SD3_TEXT_HIDDEN):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = dict(_text_config(tok), hidden_size=hidden, intermediate_size=2 * hidden, projection_dim=hidden)
    return CLIPTextModelWithProjection(CLIPTextConfig(**cfg))


@torch.no_grad()
def latent_stats(vae, n: int = 512, seed: int = 777) -> tuple[float, float]:
    """(shift, scale) that make the VAE's latents of world images zero-mean and unit-variance, as SD3's VAE
    config carries them (`shift_factor`, `scaling_factor`)."""
    x, _ = world_batch(n, seed)
    z = vae.encode(x * 2 - 1).latent_dist.mean
    return float(z.mean()), float(1.0 / z.std())


def _flow_vae(vae_dir: Path):
    """shapes-sd1's frozen VAE, its config given the world latents' measured shift and scale (as SD3's and FLUX's
    VAEs carry them): (vae, shift, scale)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False)
    shift, scale = latent_stats(vae)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return vae, shift, scale


def _flow_pair(vae, shift: float, scale: float, x: torch.Tensor, g: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rectified flow's training pair for images x: (x_t, s, v) with x_t = (1 - s) x0 + s eps, s uniform in [0, 1]
    per image, and the velocity v = eps - x0 the model regresses (x0: the normalized VAE latents)."""
    with torch.no_grad():
        z = (vae.encode(x * 2 - 1).latent_dist.sample(generator=g) - shift) * scale
    noise = torch.randn(z.shape, generator=g)
    s = torch.rand(z.shape[0], generator=g).view(-1, 1, 1, 1)
    return (1 - s) * z + s * noise, s, noise - z


def _flow_step(opt: torch.optim.Optimizer, params: list[torch.Tensor], loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def train_sd3(out: Path, vae_dir: Path, seed: int = 0, steps: int = 2000, batch: int = 32, lr: float = 1e-3,
              caption_dropout: float = 0.1, snapshot_every: int = 0) -> dict[str, Any]:
    """The flow-matching sibling of shapes-sd1: an SD3-architecture pipeline (SD3Transformer2DModel, two CLIP text
    encoders with projections and a small character-level T5, FlowMatchEulerDiscreteScheduler) trained by rectified flow on the same VAE's
    latents: x_t = (1 - s) x0 + s eps with s uniform in [0, 1], the transformer regressing v = eps - x0 at timestep
    1000 s, together with both text encoders, with caption dropout so classifier-free guidance works."""
    from diffusers import StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tok = make_tokenizer()
    vae, shift, scale = _flow_vae(vae_dir)
    model = make_transformer()
    te1, te2 = _sd3_text(tok), _sd3_text(tok)
    tok5, t5 = _sd3_t5()
    sched = make_flow_scheduler()
    params = [*model.parameters(), *te1.parameters(), *te2.parameters(), *t5.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)

    def encode(caps: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """As StableDiffusion3Pipeline encodes prompts: both CLIPs' penultimate states side by side (already T5's
        width), then T5's tokens; pooled = both projections."""
        ids = _ids(tok, caps)
        o1, o2 = te1(ids, output_hidden_states=True), te2(ids, output_hidden_states=True)
        clip = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)
        ids5 = tok5(caps, padding="max_length", max_length=SD3_T5_LEN, truncation=True, return_tensors="pt").input_ids
        return torch.cat([clip, t5(ids5)[0]], dim=1), torch.cat([o1.text_embeds, o2.text_embeds], dim=-1)

    def pipeline():
        return StableDiffusion3Pipeline(transformer=model, scheduler=sched, vae=vae, text_encoder=te1, tokenizer=tok,
                                        text_encoder_2=te2, tokenizer_2=tok, text_encoder_3=t5, tokenizer_3=tok5,
                                        image_encoder=None, feature_extractor=None)

    t0 = time.perf_counter()

    def step(i: int) -> dict[str, float]:
        _warmup_lr(opt, lr, i)
        x, caps = world_batch(batch, seed * 1_000_003 + 900_000 + i)
        drop = torch.rand(batch, generator=g) < caption_dropout
        caps = ["" if d else c for c, d in zip(caps, drop.tolist(), strict=True)]
        zt, s, target = _flow_pair(vae, shift, scale, x, g)
        emb, pooled = encode(caps)
        v = model(hidden_states=zt, timestep=s.view(-1) * 1000, encoder_hidden_states=emb,
                  pooled_projections=pooled).sample
        loss = F.mse_loss(v, target)
        _flow_step(opt, params, loss)
        if snapshot_every and (i + 1) % snapshot_every == 0 and i + 1 < steps:
            pipeline().save_pretrained(out.parent / f".{out.name}-step{i + 1}")  # to stop early and keep a model
        return {"loss": float(loss.detach())}

    for m in (model, te1, te2, t5):
        m.train()
    hist = _loop(steps, step, 50, "sd3")
    for m in (model, te1, te2, t5):
        m.eval()
    pipeline().save_pretrained(out)
    return {"params_transformer": n_params(model), "params_text_encoders": n_params(te1) + n_params(te2) + n_params(t5),
            "params_vae": n_params(vae), "vae_shift_factor": shift, "vae_scaling_factor": scale, "steps": steps,
            "batch": batch, "lr": lr, "seed": seed, "caption_dropout": caption_dropout,
            "time_s": round(time.perf_counter() - t0, 1), "history": hist}


#: the FLUX sibling's CLIP width (its pooled projection) and T5 width (the transformer's joint attention width)
FLUX_CLIP_HIDDEN = 32
FLUX_T5_DIM = 2 * SD3_TEXT_HIDDEN


def make_flux_transformer():
    from diffusers import FluxTransformer2DModel

    # no guidance input, as FLUX.1-schnell: there is no guidance-distilled teacher to learn one from
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4 * 4, num_layers=2, num_single_layers=4, attention_head_dim=16,
        num_attention_heads=4, joint_attention_dim=FLUX_T5_DIM, pooled_projection_dim=FLUX_CLIP_HIDDEN,
        guidance_embeds=False, axes_dims_rope=(4, 6, 6))


def make_flux_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # FLUX's dynamic shifting, with mu = 0 at every image size: no shift, as the SD3 sibling (shift 1)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True,
                                           base_shift=0.0, max_shift=0.0, base_image_seq_len=64,
                                           max_image_seq_len=4096)


def train_flux(out: Path, vae_dir: Path, seed: int = 0, steps: int = 2000, batch: int = 32, lr: float = 1e-3,
               snapshot_every: int = 0) -> dict[str, Any]:
    """The FLUX.1-architecture sibling of shapes-sd1: a FluxTransformer2DModel (double- and single-stream blocks,
    RoPE, no guidance input) on shapes-sd1's VAE latents packed in 2x2 patches, conditioned as FluxPipeline
    conditions it (a CLIP text encoder's pooled output and the character-level T5's sequence), trained by
    rectified flow like shapes-sd3: x_t = (1 - s) x0 + s eps, s uniform in [0, 1], regressing v = eps - x0,
    together with both text encoders. FLUX.1 samples without classifier-free guidance, so there is no caption
    dropout."""
    from diffusers import FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from rewardtune.engine.families.flux import image_ids, pack

    torch.manual_seed(seed)
    tok = make_tokenizer()
    vae, shift, scale = _flow_vae(vae_dir)
    model = make_flux_transformer()
    clip = CLIPTextModel(CLIPTextConfig(**dict(_text_config(tok), hidden_size=FLUX_CLIP_HIDDEN,
                                                intermediate_size=2 * FLUX_CLIP_HIDDEN)))
    tok5, t5 = _sd3_t5()
    sched = make_flux_scheduler()
    params = [*model.parameters(), *clip.parameters(), *t5.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    h = w = W.RES // 2  # the VAE's latent size
    img_ids = image_ids(h, w, torch.device("cpu"), torch.float32)

    def pipeline():
        return FluxPipeline(transformer=model, scheduler=sched, vae=vae, text_encoder=clip, tokenizer=tok,
                            text_encoder_2=t5, tokenizer_2=tok5)

    t0 = time.perf_counter()

    def step(i: int) -> dict[str, float]:
        _warmup_lr(opt, lr, i)
        x, caps = world_batch(batch, seed * 1_000_003 + 950_000 + i)
        zt, s, target = _flow_pair(vae, shift, scale, x, g)
        pooled = clip(_ids(tok, caps)).pooler_output
        ids5 = tok5(caps, padding="max_length", max_length=SD3_T5_LEN, truncation=True, return_tensors="pt").input_ids
        emb = t5(ids5)[0]
        v = model(hidden_states=pack(zt), timestep=s.view(-1), guidance=None, pooled_projections=pooled,
                  encoder_hidden_states=emb, txt_ids=torch.zeros(emb.shape[1], 3), img_ids=img_ids).sample
        loss = F.mse_loss(v, pack(target))
        _flow_step(opt, params, loss)
        if snapshot_every and (i + 1) % snapshot_every == 0 and i + 1 < steps:
            pipeline().save_pretrained(out.parent / f".{out.name}-step{i + 1}")  # to stop early and keep a model
        return {"loss": float(loss.detach())}

    for m in (model, clip, t5):
        m.train()
    hist = _loop(steps, step, 50, "flux")
    for m in (model, clip, t5):
        m.eval()
    pipeline().save_pretrained(out)
    return {"params_transformer": n_params(model), "params_text_encoders": n_params(clip) + n_params(t5),
            "params_vae": n_params(vae), "vae_shift_factor": shift, "vae_scaling_factor": scale, "steps": steps,
            "batch": batch, "lr": lr, "seed": seed, "time_s": round(time.perf_counter() - t0, 1), "history": hist}


# ------------------------------------------------------------------------------------------------- measurement
#: the shipped sampling settings: what specs on the world use and what the model cards report
SAMPLING = {"steps": 20, "guidance": 3.0}


@torch.no_grad()
def measure_pipeline(path: str | Path, per_prompt: int = 2, seed: int = 12345, steps: int = SAMPLING["steps"],
                     guidance: float = SAMPLING["guidance"]) -> dict[str, float]:
    """Prompt-following of a pipeline directory: `per_prompt` images of every caption on fixed noise, sampled by
    rewardtune's own engine (DDIM), read by the judge. Returns colour / shape / both accuracy."""
    from rewardtune.engine.pipeline import load_diffusion
    from rewardtune.engine.sampler import decode, encode_prompts, initial_latents, sample

    diff = load_diffusion(str(path))
    ps = W.prompts() * per_prompt
    x = initial_latents(diff, len(ps), W.RES, torch.Generator().manual_seed(seed))
    pix = []
    for i in range(0, len(ps), 64):
        emb = encode_prompts(diff, ps[i:i + 64], guidance)
        z = sample(diff, x[i:i + 64], emb, steps=steps, guidance=guidance).latents
        pix.append(decode(diff, z))
    imgs = torch.cat(pix).permute(0, 2, 3, 1).numpy()
    return W.accuracy(W.judge(imgs, ps))


# --------------------------------------------------------------------------------------------------------- cards
def write_card(out: Path, title: str, command: str, info: dict[str, Any], body: str) -> None:
    """A model card: YAML front matter with every measured number, then prose."""
    import yaml

    meta = {k: v for k, v in info.items() if k != "history"}
    text = "---\n" + yaml.safe_dump({"model": title, "command": command, "torch": str(torch.__version__), **meta},
                                    sort_keys=False) + "---\n\n" + body.strip() + "\n"
    (out / "README.md").write_text(text)
    (out / "training_log.json").write_text(json.dumps(info.get("history", []), indent=0))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rewardtune.world.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=("vae", "clip", "sd", "sdxl", "sd3", "flux", "all"))
    ap.add_argument("--out", type=Path, default=Path("rewardtune/data/models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=800)
    ap.add_argument("--clip-steps", type=int, default=1200)
    ap.add_argument("--sd-steps", type=int, default=3000)
    ap.add_argument("--sdxl-steps", type=int, default=3000)
    ap.add_argument("--sd3-steps", type=int, default=2000)
    ap.add_argument("--flux-steps", type=int, default=2000)
    ap.add_argument("--measure-every", type=int, default=0,
                    help="measure prompt-following every N UNet steps (sd, sdxl)")
    ap.add_argument("--keep-snapshots", action="store_true",
                    help="keep the measured snapshots (.shapes-sd1-stepN, .shapes-sdxl-stepN)")
    ap.add_argument("--snapshot-every", type=int, default=0,
                    help="save the SD3 or FLUX sibling every N steps (.shapes-sd3-stepN, .shapes-flux-stepN)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    vae_dir = a.out / ".shapes-vae"
    if a.part in ("vae", "all"):
        info = train_vae(vae_dir, a.seed, a.vae_steps)
        (vae_dir / "train_info.json").write_text(json.dumps(info))
        print("[vae] done", {k: v for k, v in info.items() if k != "history"}, flush=True)
    if a.part in ("clip", "all"):
        out = a.out / "shapes-clip"
        info = train_clip(out, a.seed, a.clip_steps)
        write_card(out, "shapes-clip", f"python -m rewardtune.world.train clip --seed {a.seed} --clip-steps "
                   f"{a.clip_steps}", info, CLIP_CARD)
        print("[clip] done", {k: v for k, v in info.items() if k != "history"}, flush=True)
    if a.part in ("sd", "all"):
        out = a.out / "shapes-sd1"
        info = train_sd(out, vae_dir, a.seed, a.sd_steps, measure_every=a.measure_every,
                        keep_snapshots=a.keep_snapshots)
        vae_info = json.loads((vae_dir / "train_info.json").read_text())
        info["vae"] = {k: v for k, v in vae_info.items() if k != "history"}
        info["prompt_following"] = measure_pipeline(out)
        info["sampling"] = dict(SAMPLING, scheduler="ddim", eval_images=2 * len(W.prompts()), eval_seed=12345)
        write_card(out, "shapes-sd1", f"python -m rewardtune.world.train all --seed {a.seed} --vae-steps "
                   f"{a.vae_steps} --sd-steps {a.sd_steps}", info, SD_CARD)
        print("[sd] done", {k: v for k, v in info.items() if k != "history"}, flush=True)
    if a.part in ("sdxl", "all"):
        # the siblings reuse shapes-sd1's VAE (its own run's when `all` trained one), so all of them decode alike
        out = a.out / "shapes-sdxl"
        info = train_sd(out, a.out / "shapes-sd1" / "vae", a.seed, a.sdxl_steps, measure_every=a.measure_every,
                        keep_snapshots=a.keep_snapshots, xl=True)
        info["prompt_following"] = measure_pipeline(out)
        info["sampling"] = dict(SAMPLING, scheduler="ddim", eval_images=2 * len(W.prompts()), eval_seed=12345)
        write_card(out, "shapes-sdxl", f"python -m rewardtune.world.train sdxl --seed {a.seed} --sdxl-steps "
                   f"{a.sdxl_steps}", info, SDXL_CARD)
        print("[sdxl] done", {k: v for k, v in info.items() if k != "history"}, flush=True)
    if a.part in ("sd3", "all"):
        out = a.out / "shapes-sd3"
        info = train_sd3(out, a.out / "shapes-sd1" / "vae", a.seed, a.sd3_steps, snapshot_every=a.snapshot_every)
        info["prompt_following"] = measure_pipeline(out)
        info["sampling"] = dict(SAMPLING, scheduler="flow-match euler", eval_images=2 * len(W.prompts()),
                                eval_seed=12345)
        write_card(out, "shapes-sd3", f"python -m rewardtune.world.train sd3 --seed {a.seed} --sd3-steps "
                   f"{a.sd3_steps}", info, SD3_CARD)
        print("[sd3] done", {k: v for k, v in info.items() if k != "history"}, flush=True)
    if a.part in ("flux", "all"):
        out = a.out / "shapes-flux"
        info = train_flux(out, a.out / "shapes-sd1" / "vae", a.seed, a.flux_steps, snapshot_every=a.snapshot_every)
        info["prompt_following"] = measure_pipeline(out)
        info["sampling"] = dict(steps=SAMPLING["steps"], guidance=None, scheduler="flow-match euler",
                                eval_images=2 * len(W.prompts()), eval_seed=12345)
        write_card(out, "shapes-flux", f"python -m rewardtune.world.train flux --seed {a.seed} --flux-steps "
                   f"{a.flux_steps}", info, FLUX_CARD)
        print("[flux] done", {k: v for k, v in info.items() if k != "history"}, flush=True)


SD_CARD = """
# shapes-sd1: the shapes world's text-to-image pipeline

A Stable Diffusion 1.x-architecture pipeline (`StableDiffusionPipeline`: AutoencoderKL, UNet2DConditionModel,
CLIPTextModel + CLIPTokenizer, DDIMScheduler) trained from scratch on the shapes world: 32x32 images of one
coloured shape (8 colours x 4 shapes) with captions such as "a red circle". Load it as `zoo:shapes-sd1`
(`model.pretrained` in a spec) or with `StableDiffusionPipeline.from_pretrained(<this folder>)`.

Its prompt-following is deliberately partial (numbers above: `prompt_following`, the judge's colour / shape /
both accuracy on 64 images, two per caption, on fixed noise, DDIM 20 steps, CFG 3), so reward fine-tuning has
room to show what it does. The judge (`rewardtune.world.shapes.judge`) reads colour and shape from pixels by
fixed rules; no reward model is involved in these numbers.
"""

SDXL_CARD = """
# shapes-sdxl: the shapes world's SDXL-architecture pipeline

The SDXL-architecture sibling of `shapes-sd1`: a `StableDiffusionXLPipeline` (UNet2DConditionModel with SDXL's
added conditioning, `addition_embed_type="text_time"`; a CLIPTextModel and a CLIPTextModelWithProjection sharing
the world's tokenizer, whose penultimate states side by side are the cross-attention input and whose second pooled
projection, with the micro-conditioning (original size, crop, target size), enters the time embedding; DDIM)
trained from scratch on the latents of shapes-sd1's VAE, with caption dropout to all-zero conditioning, which is
what the pipeline's unconditional branch is (`force_zeros_for_empty_prompt`). The UNet's blocks are shapes-sd1's
(cross-attention at both levels), so the two differ where SDXL differs from SD 1.x in how text reaches the
model (and in SDXL's Linear projections into and out of attention, `use_linear_projection`). With two layers per
encoder, the penultimate state is the first layer's output: the first encoder's last layer is never used, as
CLIP-L's is not in SDXL. Load it as `zoo:shapes-sdxl` or with `StableDiffusionXLPipeline.from_pretrained(<this
folder>)`.

`prompt_following` is the judge's colour / shape / both accuracy on 64 images (two per caption) on fixed noise,
DDIM 20 steps, CFG 3, sampled by rewardtune's own engine.
"""

SD3_CARD = """
# shapes-sd3: the shapes world's flow-matching pipeline

The flow-matching sibling of `shapes-sd1`: an SD3-architecture pipeline (`StableDiffusion3Pipeline`:
SD3Transformer2DModel, two CLIPTextModelWithProjection encoders sharing the world's tokenizer, a small
character-level T5 encoder, FlowMatchEulerDiscreteScheduler with shift 1) trained from scratch by rectified flow on the latents of
shapes-sd1's VAE (the VAE config carries the latents' measured `shift_factor` and `scaling_factor`, as SD3's
does). Load it as `zoo:shapes-sd3` or with `StableDiffusion3Pipeline.from_pretrained(<this folder>)`.

`prompt_following` is the judge's colour / shape / both accuracy on 64 images (two per caption) on fixed noise,
Euler 20 steps, CFG 3, sampled by rewardtune's own engine. It exists so that every method can prove on a
flow-matching transformer, not only on a UNet, that it raises what the judge reads.
"""

FLUX_CARD = """
# shapes-flux: the shapes world's FLUX.1-architecture pipeline

The FLUX.1-architecture sibling of `shapes-sd1`: a `FluxPipeline` (FluxTransformer2DModel with double- and
single-stream blocks and RoPE, a CLIP text encoder whose pooled output conditions it, the character-level T5 of
shapes-sd3 for its text sequence, FlowMatchEulerDiscreteScheduler with FLUX's dynamic shifting set to no shift)
trained from scratch by rectified flow on the latents of shapes-sd1's VAE, packed in 2x2 patches. Like
FLUX.1-schnell it has no guidance input: nothing here could distill one, and FLUX.1 samples without
classifier-free guidance. Load it as `zoo:shapes-flux` or with `FluxPipeline.from_pretrained(<this folder>)`.

`prompt_following` is the judge's colour / shape / both accuracy on 64 images (two per caption) on fixed noise,
Euler 20 steps, no guidance, sampled by rewardtune's own engine.
"""

CLIP_CARD = """
# shapes-clip: the shapes world's CLIP reward

A transformers `CLIPModel` (ViT image tower, patch 4 on 32x32 images, and a text tower) trained contrastively on
the shapes world: each image against all 32 captions, with blur and pixel-noise augmentation. It is the `shapes`
preset of the `clip` reward (`reward: clip, preset: shapes` in a spec). `heldout_retrieval` is its top-1
caption accuracy on 1024 world images of unseen seeds (`_degraded`: the same images blurred and noised).

It is imperfect on generated images, whose colours, edges and backgrounds drift off its training distribution:
that is what lets a fine-tuned model raise this reward without drawing better shapes (reward hacking), which
the ground-truth judge then shows.
"""

if __name__ == "__main__":
    main()
