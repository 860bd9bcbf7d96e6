"""DDIM sampling with truncated backpropagation.

Steps whose index is not in `grad_steps` run under `torch.no_grad()` (nothing is recorded for them, so memory does
not depend on how many there are), with the LoRA folded into the frozen weights where that is exact enough
(`FoldedLora`). Differentiable steps are checkpointed when asked: the last one block by block (its block inputs
are kept, and in backward one block at a time is recomputed), earlier ones as a whole call (only the step's
inputs are kept). Classifier-free guidance is one batched UNet call on `[uncond; cond]`. Latents are turned into
[0, 1] pixels exactly once, in `decode`, whose VAE is checkpointed block by block.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Container
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from rewardtune.engine.control import check_abort
from rewardtune.engine.pipeline import Diffusion, FoldedLora


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


def autocast(diff: Diffusion, module: torch.nn.Module):
    """Autocast for a call of `module` where mixed precision needs it (see `Diffusion.needs_autocast`)."""
    if not diff.needs_autocast(module):
        return contextlib.nullcontext()
    return torch.autocast(diff.device.type, dtype=diff.amp_dtype)


def module_inputs(diff: Diffusion, module: torch.nn.Module, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Inputs as `module` takes them: unchanged under autocast (which casts per op), else in its weights' dtype."""
    if diff.needs_autocast(module):
        return xs
    dt = diff.frozen_dtype(module)
    return tuple(x.to(dt) for x in xs)


def unet_forward(diff: Diffusion, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, unet=None) -> torch.Tensor:
    """The UNet's output in float32, computed in the precision the run asked for."""
    unet = unet or diff.unet
    x, emb = module_inputs(diff, unet, x, emb)
    with autocast(diff, unet):
        return unet(x, t, encoder_hidden_states=emb).sample.float()


@torch.no_grad()
def encode_prompts(diff: Diffusion, prompts: list[str], guidance: float) -> torch.Tensor:
    """Text embeddings; with CFG (guidance > 1) the batch is [uncond; cond] so one UNet call does both."""
    cond = _encode_texts(diff, list(prompts))
    if guidance > 1.0:
        return torch.cat([uncond_embedding(diff).expand(len(prompts), -1, -1), cond])
    return cond


def _encode_texts(diff: Diffusion, texts: list[str]) -> torch.Tensor:
    tok = diff.tokenizer
    ids = tok(texts, padding="max_length", truncation=True, max_length=tok.model_max_length,
              return_tensors="pt").input_ids.to(diff.device)
    return diff.text_encoder(ids)[0]


@torch.no_grad()
def uncond_embedding(diff: Diffusion) -> torch.Tensor:
    """The empty prompt's embedding (CFG's unconditional branch), computed once: the text encoder is frozen."""
    if diff.uncond_embedding is None or diff.uncond_embedding.device.type != torch.device(diff.device).type:
        diff.uncond_embedding = _encode_texts(diff, [""])
    return diff.uncond_embedding


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
                 use_checkpoint: bool = False, blocks: bool = False, unet=None) -> torch.Tensor:
    """Guided UNet output at timestep t (one batched call for CFG).

    With grad and `use_checkpoint`: `blocks=True` checkpoints block by block (the least memory in backward, but
    the block inputs stay alive until then: right for the last differentiable step), else the whole call (only
    the inputs stay alive: right for the earlier ones, whatever their number)."""
    unet = unet or diff.unet
    cfg = guidance > 1.0
    tt = torch.full((1,), int(t), device=x.device, dtype=torch.long)

    def call(inp: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return unet_forward(diff, inp, tt, e, unet)

    inp = torch.cat([x, x]) if cfg else x
    ckpt = use_checkpoint and torch.is_grad_enabled()
    by_block = ckpt and blocks and diff.supports_block_checkpointing(unet)
    if by_block:
        diff.block_checkpointing(unet, True)
        try:
            out = call(inp, emb)
        finally:
            diff.block_checkpointing(unet, False)
    elif ckpt:
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
    graded = [i for i in range(last) if i in grad_steps] if enabled else []
    last_graded = graded[-1] if graded else None
    folded = FoldedLora.if_eligible(diff) if len(graded) < last else None
    try:
        for i in range(last):
            check_abort()  # a stop request ends an abortable sampling loop within one UNet call
            t = int(ts[i])
            t_prev = prev_timestep(diff, t, steps)
            grad = enabled and i in grad_steps
            if folded is not None and grad:
                folded.off()
            elif folded is not None:
                folded.on()
            with torch.set_grad_enabled(grad):  # a step outside grad_steps: its eps is computed without a graph
                out = model_output(diff, x, t, emb, guidance, use_checkpoint=use_checkpoint and grad,
                                   blocks=i == last_graded)
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
    finally:
        if folded is not None:
            folded.release()
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
        (zz,) = module_inputs(diff, vae, zz)
        with autocast(diff, vae):
            return vae.decode(zz).sample.float()

    ckpt = use_checkpoint and torch.is_grad_enabled() and z.requires_grad
    if ckpt and diff.supports_block_checkpointing(vae):
        # block by block: the decoder's full-resolution blocks dominate its activations, and in backward only
        # one of them is recomputed at a time (one checkpoint around the whole decode would recreate them all)
        diff.block_checkpointing(vae, True)
        try:
            img = dec(z)
        finally:
            diff.block_checkpointing(vae, False)
    elif ckpt:
        img = checkpoint(dec, z, use_reentrant=False)
    else:
        img = dec(z)
    return (img / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def encode(diff: Diffusion, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> latents as the UNet sees them (the VAE posterior's mode, scaled): `decode`'s inverse
    up to the VAE's reconstruction error. Deterministic."""
    vae = diff.vae
    (x,) = module_inputs(diff, vae, pixels.to(diff.device) * 2 - 1)
    with autocast(diff, vae):
        z = vae.encode(x).latent_dist.mode().float()
    if getattr(vae.config, "shift_factor", None):
        z = z - vae.config.shift_factor
    # contiguous: the posterior's mode is a view into its moments, and a strided input can send a convolution down
    # another kernel (last-bit differences), so latents loaded from a checkpoint would not resume bitwise
    return (z * vae.config.scaling_factor).contiguous()


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
