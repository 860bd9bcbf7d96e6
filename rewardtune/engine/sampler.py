"""Sampling with truncated backpropagation, the same for every model family.

Steps whose index is not in `grad_steps` run under `torch.no_grad()` (nothing is recorded for them, so memory does
not depend on how many there are), with the LoRA folded into the frozen weights where that is exact enough
(`FoldedLora`). Differentiable steps are checkpointed when asked: the last one block by block (its block inputs
are kept, and in backward one block at a time is recomputed), earlier ones as a whole call (only the step's
inputs are kept). Classifier-free guidance is one batched denoiser call on `[uncond; cond]` (FLUX's distilled
guidance is an input of its one call instead). Latents are turned into [0, 1] pixels exactly once, in `decode`,
whose VAE is checkpointed block by block.

What differs between families (prompt encoding, the denoiser call, the schedule and its step, re-noising, latent
shapes and VAE scaling) is the family's: `diff.family` (`rewardtune.engine.families`). Nothing here asks which.
"""
from __future__ import annotations

from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from rewardtune.engine.control import check_abort
from rewardtune.engine.families import Conditioning, Schedule
from rewardtune.engine.pipeline import Diffusion, FoldedLora, autocast, module_inputs
from rewardtune.engine.types import SamplingSettings, generator

__all__ = ["Conditioning", "SampleResult", "StepRecord", "add_training_noise", "autocast", "decode", "denoiser_forward",
           "encode", "encode_prompts", "initial_latents", "model_output", "module_inputs", "renoise", "sample",
           "schedule", "step", "timesteps", "uncond_embedding", "base_output", "base_denoiser_forward",
           "latent_shape"]


@dataclass
class StepRecord:
    index: int
    timestep: int | float
    grad: bool  # whether this step's model output carries a graph


@dataclass
class SampleResult:
    latents: torch.Tensor  # final latents (x_0), with graph through the differentiable steps
    records: list[StepRecord] = field(default_factory=list)
    kl: torch.Tensor | None = None  # sum over differentiable steps of mean ||out_theta - out_base||^2
    kl_steps: int = 0
    x0_pred: torch.Tensor | None = None  # x0 predicted at the last step taken (ReFL's stop step)


def denoiser_forward(diff: Diffusion, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance: float = 1.0,
                     module=None) -> torch.Tensor:
    """The denoiser's raw output (eps, v or flow velocity) in float32 for inputs x at timesteps t (a tensor of one
    value or one per row), computed in the precision the run asked for. No classifier-free guidance here."""
    return diff.family.forward(diff, module if module is not None else diff.denoiser, x, t, cond, guidance)


@torch.no_grad()
def encode_prompts(diff: Diffusion, prompts: list[str], guidance: float) -> Conditioning:
    """The prompts' conditioning; when the family uses classifier-free guidance at this scale (CFG: guidance > 1)
    the batch is [uncond; cond], so one denoiser call does both."""
    cond = _encode_texts(diff, list(prompts))
    if diff.family.uses_cfg(guidance):
        return Conditioning.cat([uncond_embedding(diff).expand(len(prompts)), cond])
    return cond


def _encode_texts(diff: Diffusion, texts: list[str]) -> Conditioning:
    if diff.prompt_cache is not None:
        missing = [t for t in texts if t not in diff.prompt_cache]
        if missing:
            raise KeyError(f"prompt {missing[0]!r} is not in the prompt cache (the text encoders were not loaded); "
                           "encode every prompt the run uses ahead (cache_prompts)")
        return Conditioning.cat([diff.prompt_cache[t] for t in texts]).to(diff.device)
    return diff.family.encode_text(diff, texts)


@torch.no_grad()
def uncond_embedding(diff: Diffusion) -> Conditioning:
    """The empty prompt's conditioning (CFG's unconditional branch), computed once: the text encoders are frozen."""
    if diff.uncond is None or diff.uncond.emb.device.type != torch.device(diff.device).type:
        diff.uncond = diff.family.uncond(diff, _encode_texts(diff, [""]))
    return diff.uncond


def schedule(diff: Diffusion, steps: int, latent_hw: tuple[int, int] | None = None) -> Schedule:
    """The family's schedule of `steps` steps for latents of this height and width (flow schedules shift with the
    image size)."""
    return diff.family.schedule(diff, steps, latent_hw)


def timesteps(diff: Diffusion, steps: int, latent_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """What the denoiser is given at each of the `steps` steps."""
    return schedule(diff, steps, latent_hw).timesteps


def step(diff: Diffusion, sched: Schedule, i: int, x: torch.Tensor, out: torch.Tensor, eta: float = 0.0,
         noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Step i of the schedule from x with the guided model output `out`: (next latents, x0 predicted at step i).
    Differentiable in x and out."""
    return diff.family.step(diff, sched, i, x, out, eta, noise)


def renoise(diff: Diffusion, sched: Schedule, i: int, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Clean latents x0 noised with eps to the noise level of step i (DRaFT-LV)."""
    return diff.family.renoise(diff, sched, i, x0, eps)


def add_training_noise(diff: Diffusion, x0: torch.Tensor, noise: torch.Tensor,
                       index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, denoiser timesteps, regression target) of the standard denoising loss at training
    timesteps `index` (integers in [0, family.num_train_timesteps)): eps or v targets for DDIM families, the
    flow velocity eps - x0 for flow matching."""
    return diff.family.training_pair(diff, x0, noise, index)


def model_output(diff: Diffusion, x: torch.Tensor, t: int | float, emb: Conditioning, guidance: float, *,
                 use_checkpoint: bool = False, blocks: bool = False, unet=None) -> torch.Tensor:
    """Guided denoiser output at timestep t (one batched call for CFG).

    With grad and `use_checkpoint`: `blocks=True` checkpoints block by block (the least memory in backward, but
    the block inputs stay alive until then: right for the last differentiable step), else the whole call (only
    the inputs stay alive: right for the earlier ones, whatever their number)."""
    module = unet if unet is not None else diff.denoiser
    cfg = diff.family.uses_cfg(guidance)
    tt = diff.family.timestep(t, x.device)

    def call(inp: torch.Tensor, e: Conditioning) -> torch.Tensor:
        return denoiser_forward(diff, inp, tt, e, guidance, module)

    inp = torch.cat([x, x]) if cfg else x
    ckpt = use_checkpoint and torch.is_grad_enabled()
    by_block = ckpt and blocks and diff.supports_block_checkpointing(module)
    if by_block:
        diff.block_checkpointing(module, True)
        try:
            out = call(inp, emb)
        finally:
            diff.block_checkpointing(module, False)
    elif ckpt:
        out = checkpoint(call, inp, emb, use_reentrant=False)
    else:
        out = call(inp, emb)
    if cfg:
        un, co = out.chunk(2)
        out = un + guidance * (co - un)
    return out


@contextmanager
def _frozen_base(diff: Diffusion) -> Iterator[torch.nn.Module]:
    """The frozen base model as a module: the same denoiser with adapters disabled (LoRA), or the frozen copy."""
    if diff.lora is not None:
        diff.denoiser.disable_adapters()
        try:
            yield diff.denoiser
        finally:
            diff.denoiser.enable_adapters()
        return
    if diff.base_denoiser is None:
        raise RuntimeError("the base model's output under full fine-tuning (kl_coeff > 0, ranked's loss: dpo) needs "
                           "the frozen base copy (keep_base_copy)")
    yield diff.base_denoiser


def _base_output(diff: Diffusion, x, t, emb, guidance) -> torch.Tensor:
    """Output of the frozen base model."""
    with torch.no_grad(), _frozen_base(diff) as module:
        return model_output(diff, x, t, emb, guidance, unet=module)


def base_output(diff: Diffusion, x: torch.Tensor, t: int | float, emb: Conditioning, guidance: float) -> torch.Tensor:
    """The frozen base model's guided output (no graph): the reference of the DRaFT+ KL term."""
    return _base_output(diff, x, t, emb, guidance)


def base_denoiser_forward(diff: Diffusion, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                          guidance: float) -> torch.Tensor:
    """`denoiser_forward` of the frozen base model (no graph) at timesteps t, one per row or one; `guidance` as
    `denoiser_forward` takes it (a distilled-guidance family's input, not classifier-free guidance)."""
    with torch.no_grad(), _frozen_base(diff) as module:
        return denoiser_forward(diff, x, t, cond, guidance, module=module)


def sample(diff: Diffusion, latents: torch.Tensor, emb: Conditioning, *, steps: int, guidance: float,
           eta: float = 0.0, grad_steps: Container[int] = (), stop_at: int | None = None,
           step_noise: Callable[[int], torch.Tensor] | None = None, use_checkpoint: bool = True,
           kl: bool = False) -> SampleResult:
    """Run the family's sampler from `latents` (x_T). Step i (0-based, i = 0 is the noisiest) computes its model
    output with a graph iff i in grad_steps (grad_steps need not be contiguous).

    `stop_at=s` runs steps 0..s-1 and returns the x0 prediction made at step s (ReFL); the result's latents are
    then those of step s. The latent path is never detached, so gradient from a later step flows back through the
    earlier differentiable steps; no-grad steps hold no graph at all.
    """
    sched = schedule(diff, steps, tuple(latents.shape[-2:]))
    x = latents
    res = SampleResult(latents=x)
    kl_sum = None
    enabled = torch.is_grad_enabled()
    last = steps if stop_at is None else stop_at + 1
    graded = [i for i in range(last) if i in grad_steps] if enabled else []
    last_graded = graded[-1] if graded else None
    compiled = diff.prefix_denoiser  # the no-grad steps' compiled denoiser (its graph assumes the LoRA unfolded)
    folded = FoldedLora.if_eligible(diff) if len(graded) < last and compiled is None else None
    try:
        for i in range(last):
            check_abort()  # a stop request ends an abortable sampling loop within one denoiser call
            t = sched.t(i)
            grad = enabled and i in grad_steps
            if folded is not None and grad:
                folded.off()
            elif folded is not None:
                folded.on()
            with torch.set_grad_enabled(grad):  # a step outside grad_steps: its output is computed without a graph
                out = model_output(diff, x, t, emb, guidance, use_checkpoint=use_checkpoint and grad,
                                   blocks=i == last_graded, unet=None if grad else compiled)
                if grad and kl:
                    base = _base_output(diff, x.detach(), t, emb, guidance)
                    term = (out - base).pow(2).mean()
                    kl_sum = term if kl_sum is None else kl_sum + term
                    res.kl_steps += 1
            noise = step_noise(i) if (eta > 0 and step_noise is not None) else None
            # ...but the latent path stays differentiable once a graph exists (steps with a detached output between
            # differentiable ones, as random per-step truncation produces): only the cheap linear update is recorded
            with torch.set_grad_enabled(enabled and (grad or x.requires_grad)):
                x_new, x0 = step(diff, sched, i, x, out, eta, noise)
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
    z = diff.family.to_vae(diff, latents)

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
    """Pixels in [0, 1] -> latents as the denoiser sees them (the VAE posterior's mode, scaled): `decode`'s inverse
    up to the VAE's reconstruction error. Deterministic."""
    vae = diff.vae
    (x,) = module_inputs(diff, vae, pixels.to(diff.device) * 2 - 1)
    with autocast(diff, vae):
        z = vae.encode(x).latent_dist.mode().float()
    # contiguous: the posterior's mode is a view into its moments, and a strided input can send a convolution down
    # another kernel (last-bit differences), so latents loaded from a checkpoint would not resume bitwise
    return diff.family.from_vae(diff, z).contiguous()


def latent_shape(diff: Diffusion, resolution: int) -> tuple[int, int, int]:
    """(channels, height, width) of the latents of a resolution x resolution image."""
    return diff.family.latent_shape(diff, resolution)


def initial_latents(diff: Diffusion, n: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """x_T drawn on the CPU from `generator` (the same numbers on every device), scaled by init_noise_sigma."""
    z = torch.randn((n, *latent_shape(diff, resolution)), generator=generator, dtype=torch.float32)
    return (z * diff.family.init_noise_sigma(diff)).to(diff.device)


@torch.no_grad()
def sample_eval(diff: Diffusion, prompts: list[str], settings: SamplingSettings, seed: int, batch_size: int, *,
                out_device: torch.device | str | None = None,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The images of an eval: `prompts` on the fixed noise of `seed` (x_T from `generator(seed, "eval-noise")`,
    per-step noise from `generator(seed, "eval-eta")`: the same every time), in batches of `batch_size`, pixels
    [n,3,H,W] in [0, 1]. The trainer's eval and `rewardtune eval` both sample here, so the second reproduces the
    first. `out_device`: where each batch's images go (the CPU keeps the device free for the next batch)."""
    x_t = initial_latents(diff, len(prompts), settings.resolution, generator(seed, "eval-noise"))
    eta_g = generator(seed, "eval-eta")
    chunks = []
    for i in range(0, len(prompts), batch_size):
        xi = x_t[i:i + batch_size]
        emb = encode_prompts(diff, prompts[i:i + batch_size], settings.guidance)
        z = sample(diff, xi, emb, steps=settings.steps, guidance=settings.guidance, eta=settings.eta,
                   step_noise=lambda _, shape=xi.shape: torch.randn(shape, generator=eta_g).to(diff.device))
        img = decode(diff, z.latents)
        chunks.append(img if out_device is None else img.to(out_device))
        if progress is not None:
            progress(min(i + batch_size, len(prompts)), len(prompts))
    return torch.cat(chunks)
