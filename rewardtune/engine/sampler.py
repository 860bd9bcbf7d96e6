"""DDIM sampling with truncated backpropagation.

Steps whose index is not in `grad_steps` run under `torch.no_grad()` (nothing is recorded for them, so memory does
not depend on how many there are). Differentiable steps are checkpointed when asked: only their inputs are kept
and the UNet is recomputed during backward. Classifier-free guidance is one batched UNet call on
`[uncond; cond]`. Latents are turned into [0, 1] pixels exactly once, in `decode`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Container
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from rewardtune.engine.pipeline import Diffusion


@dataclass
class StepRecord:
    index: int
    timestep: int
    grad: bool  # whether this step's eps carries a graph


@dataclass
class SampleResult:
    latents: torch.Tensor  # final latents (x_0), with graph through the differentiable steps
    records: list[StepRecord] = field(default_factory=list)
    kl: torch.Tensor | None = None  # sum over differentiable steps of mean ||eps_theta - eps_base||^2
    kl_steps: int = 0
    x0_pred: torch.Tensor | None = None  # x0 predicted at the last step taken (ReFL's stop step)


def autocast(diff: Diffusion):
    if diff.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(diff.device.type, dtype=diff.amp_dtype)


@torch.no_grad()
def encode_prompts(diff: Diffusion, prompts: list[str], guidance: float) -> torch.Tensor:
    """Text embeddings; with CFG (guidance > 1) the batch is [uncond; cond] so one UNet call does both."""
    tok = diff.tokenizer

    def enc(texts: list[str]) -> torch.Tensor:
        ids = tok(texts, padding="max_length", truncation=True, max_length=tok.model_max_length,
                  return_tensors="pt").input_ids.to(diff.device)
        return diff.text_encoder(ids)[0]

    cond = enc(list(prompts))
    if guidance > 1.0:
        if diff.uncond_embedding is None or diff.uncond_embedding.device != cond.device:
            diff.uncond_embedding = enc([""])
        return torch.cat([diff.uncond_embedding.expand(len(prompts), -1, -1), cond])
    return cond


def timesteps(diff: Diffusion, steps: int) -> torch.Tensor:
    diff.scheduler.set_timesteps(steps)
    return diff.scheduler.timesteps.clone()


def _alpha(diff: Diffusion, t: int, device: torch.device) -> torch.Tensor:
    sched = diff.scheduler
    ac = sched.alphas_cumprod
    a = ac[t] if t >= 0 else sched.final_alpha_cumprod
    return a.to(device=device, dtype=torch.float32)


def prev_timestep(diff: Diffusion, t: int, steps: int) -> int:
    return int(t) - diff.scheduler.config.num_train_timesteps // steps


def model_output(diff: Diffusion, x: torch.Tensor, t: int, emb: torch.Tensor, guidance: float, *,
                 use_checkpoint: bool = False, unet=None) -> torch.Tensor:
    """Guided UNet output at timestep t (one batched call for CFG)."""
    unet = unet or diff.unet
    cfg = guidance > 1.0
    tt = torch.full((1,), int(t), device=x.device, dtype=torch.long)

    def call(inp: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        with autocast(diff):
            return unet(inp, tt, encoder_hidden_states=e).sample.float()

    inp = torch.cat([x, x]) if cfg else x
    inp = inp.to(emb.dtype) if diff.amp_dtype is None else inp
    if use_checkpoint and torch.is_grad_enabled():
        out = checkpoint(call, inp, emb, use_reentrant=False)
    else:
        out = call(inp, emb)
    if cfg:
        un, co = out.chunk(2)
        out = un + guidance * (co - un)
    return out


def ddim_step(diff: Diffusion, x: torch.Tensor, out: torch.Tensor, t: int, t_prev: int, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update x_t -> x_{t_prev}; returns (x_prev, x0_pred). Differentiable in x and out."""
    a_t = _alpha(diff, t, x.device)
    a_p = _alpha(diff, t_prev, x.device)
    if diff.prediction_type == "epsilon":
        eps = out
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    elif diff.prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
        eps = a_t.sqrt() * out + (1 - a_t).sqrt() * x
    else:
        raise ValueError(f"unsupported prediction_type '{diff.prediction_type}'")
    sigma = eta * ((1 - a_p) / (1 - a_t)).sqrt() * (1 - a_t / a_p).sqrt() if eta > 0 else torch.zeros((), device=x.device)
    x_prev = a_p.sqrt() * x0 + (1 - a_p - sigma ** 2).clamp(min=0).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("eta > 0 needs per-step noise")
        x_prev = x_prev + sigma * noise
    return x_prev, x0


def _base_output(diff: Diffusion, x, t, emb, guidance) -> torch.Tensor:
    """eps of the frozen base model: the same UNet with adapters disabled (LoRA), or the frozen copy."""
    with torch.no_grad():
        if diff.lora is not None:
            diff.unet.disable_adapters()
            try:
                return model_output(diff, x, t, emb, guidance)
            finally:
                diff.unet.enable_adapters()
        if diff.base_unet is None:
            raise RuntimeError("kl_coeff > 0 with full fine-tuning needs the frozen base copy (keep_base_copy)")
        return model_output(diff, x, t, emb, guidance, unet=diff.base_unet)


def sample(diff: Diffusion, latents: torch.Tensor, emb: torch.Tensor, *, steps: int, guidance: float,
           eta: float = 0.0, grad_steps: Container[int] = (), stop_at: int | None = None,
           step_noise: Callable[[int], torch.Tensor] | None = None, use_checkpoint: bool = True,
           kl: bool = False) -> SampleResult:
    """Run DDIM from `latents` (x_T). Step i (0-based, i = 0 is the noisiest) computes its eps with a graph iff
    i in grad_steps (grad_steps need not be contiguous).

    `stop_at=s` runs steps 0..s-1 and returns the x0 prediction made at step s (ReFL); the result's latents are
    then x_{t_s}. The latent path is never detached, so gradient from a later step flows back through the
    earlier differentiable steps; no-grad steps hold no graph at all.
    """
    ts = timesteps(diff, steps)
    x = latents
    res = SampleResult(latents=x)
    kl_sum = None
    enabled = torch.is_grad_enabled()
    last = steps if stop_at is None else stop_at + 1
    for i in range(last):
        t = int(ts[i])
        t_prev = prev_timestep(diff, t, steps)
        grad = i in grad_steps and enabled
        with torch.set_grad_enabled(grad):  # a step outside grad_steps: its eps is computed without a graph
            out = model_output(diff, x, t, emb, guidance, use_checkpoint=use_checkpoint and grad)
            if grad and kl:
                base = _base_output(diff, x.detach(), t, emb, guidance)
                term = (out - base).pow(2).mean()
                kl_sum = term if kl_sum is None else kl_sum + term
                res.kl_steps += 1
        noise = step_noise(i) if (eta > 0 and step_noise is not None) else None
        # ...but the latent path stays differentiable once a graph exists (steps with a detached eps between
        # differentiable ones, as random per-step truncation produces): only the cheap linear update is recorded
        with torch.set_grad_enabled(enabled and (grad or x.requires_grad)):
            x_new, x0 = ddim_step(diff, x, out, t, t_prev, eta, noise)
        res.records.append(StepRecord(i, t, bool(out.requires_grad)))
        res.x0_pred = x0
        if stop_at is not None and i == stop_at:
            break
        x = x_new
    res.latents = x
    res.kl = kl_sum
    return res


def decode(diff: Diffusion, latents: torch.Tensor, *, use_checkpoint: bool = True) -> torch.Tensor:
    """Latents -> pixels in [0, 1]: the VAE output is mapped with (x/2 + 0.5).clamp(0, 1) here and only here."""
    vae = diff.vae
    z = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None):
        z = z + vae.config.shift_factor

    def dec(zz: torch.Tensor) -> torch.Tensor:
        with autocast(diff):
            return vae.decode(zz.to(vae.dtype) if diff.amp_dtype is None else zz).sample.float()

    if use_checkpoint and torch.is_grad_enabled() and z.requires_grad:
        img = checkpoint(dec, z, use_reentrant=False)
    else:
        img = dec(z)
    return (img / 2 + 0.5).clamp(0, 1)


def initial_latents(diff: Diffusion, n: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """x_T drawn on the CPU from `generator` (the same numbers on every device), scaled by init_noise_sigma."""
    h = resolution // diff.vae_scale
    z = torch.randn((n, diff.latent_channels, h, h), generator=generator, dtype=torch.float32)
    return (z * diff.scheduler.init_noise_sigma).to(diff.device)


def add_noise(diff: Diffusion, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    ac = diff.scheduler.alphas_cumprod.to(x0.device, torch.float32)
    a = ac[t] if isinstance(t, int) else ac[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def denoising_target(diff: Diffusion, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The regression target of the standard denoising loss (eps, or v for v-prediction models)."""
    if diff.prediction_type == "v_prediction":
        a = diff.scheduler.alphas_cumprod.to(x0.device, torch.float32)[t].view(-1, 1, 1, 1)
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    return noise
