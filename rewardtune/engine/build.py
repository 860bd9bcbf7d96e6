"""Builders: map the validated spec onto typed components (the spec object goes no further than this file)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from rewardtune.engine.distributed import DistInfo, dist_info, dist_initialized
from rewardtune.engine.methods import build_method, extra_prompts
from rewardtune.engine.objective import Objective, ObjectiveTerm
from rewardtune.engine.pipeline import Diffusion, LoraSettings, load_diffusion
from rewardtune.engine.trainer import Trainer, TrainSettings, seed_everything
from rewardtune.engine.types import SamplingSettings

AMP = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}
log = logging.getLogger("rewardtune.engine")


def resolve_device(launcher: Any, info: DistInfo) -> torch.device:
    want = getattr(launcher, "device", "auto")
    if want == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", info.rank)))
            # a task may see all GPUs of its node or only its own (CUDA_VISIBLE_DEVICES per task)
            return torch.device("cuda", local % max(1, torch.cuda.device_count()))
        return torch.device("cpu")
    return torch.device(want)


def use_deterministic_kernels() -> None:
    """Deterministic kernels for the rest of the process. On CUDA, GPU runs then reproduce bitwise (measured on an
    H100: an interrupted and resumed run equals the uninterrupted one; without this, two identical runs already
    differ). cuBLAS needs its workspace config set before its first use."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def build_diffusion(spec: Any, device: torch.device, prompts: list[str] | None = None, *,
                    info: DistInfo | None = None) -> Diffusion:
    """The model as the spec asks for it. With `model.cache_prompts`, `prompts` (every prompt the run will encode)
    come from the prompt cache: the text encoders are loaded only to encode what it lacks, then released. With
    `train.fsdp` and torch.distributed initialized, the denoiser is sharded over the ranks."""
    info = info or DistInfo()
    m = spec.model
    lora = None
    if m.trainable.type == "lora":
        t = m.trainable
        lora = LoraSettings(rank=t.rank, alpha=t.alpha, dropout=t.dropout,
                            target_modules=tuple(t.target_modules) if t.target_modules else None, init=t.init)
    cache_path, cached = None, {}
    if m.cache_prompts and prompts is not None:
        from rewardtune.engine import prompt_cache
        from rewardtune.engine.pipeline import load_pipeline_dir, resolve_family

        local = load_pipeline_dir(m.pretrained, m.revision)
        cache_path = prompt_cache.cache_file(local, resolve_family(local, m.family, m.pretrained), m.dtype)
        cached = prompt_cache.read(cache_path)
    diff = load_diffusion(m.pretrained, family=m.family, revision=m.revision, variant=m.variant, dtype=m.dtype,
                          device=device, lora=lora, keep_base_copy=spec.method.needs_base_output and lora is None,
                          text_encoders=cache_path is None or any(p not in cached for p in prompts or ()),
                          vae_slicing=m.vae_slicing, vae_tiling=m.vae_tiling)
    if spec.train.channels_last:  # before sharding: the memory format of whole tensors
        for module in (diff.denoiser, diff.base_denoiser, diff.vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if cache_path is not None:
        from rewardtune.engine import prompt_cache

        prompt_cache.attach(diff, cache_path, list(prompts or ()), cached=cached, main=info.main)
    if spec.train.fsdp and not dist_initialized():
        log.warning("train.fsdp: this is a single process (torch.distributed is not initialized), so the "
                    "denoiser is not sharded; launch several ranks (launcher.type: slurm, or torchrun)")
    elif spec.train.fsdp:
        from rewardtune.engine.distributed import shard

        for module in (diff.denoiser, diff.base_denoiser):
            if module is not None:
                shard(module, diff.family.shard_blocks, device, info)
        diff.sharded = True
    amp = AMP[spec.train.mixed_precision]
    diff.amp_dtype = amp if device.type == "cuda" else (amp if amp is torch.bfloat16 else None)
    if spec.train.compile_prefix != "no":
        diff.prefix_denoiser = torch.compile(diff.denoiser, mode=spec.train.compile_prefix, dynamic=False)
        if id(diff.denoiser) in diff.no_autocast:
            diff.no_autocast.add(id(diff.prefix_denoiser))
    return diff


def build_objective(spec: Any, device: torch.device, info: DistInfo, dtype: str | None = None) -> Objective:
    """The objective's rewards, loaded now (missing weights fail here, before any step) and together, so that
    rewards needing the same frozen tower share one copy (`rewards._shared`). Each reward runs in its term's
    `dtype`, else `dtype`, else the training's mixed precision on CUDA (float32 elsewhere)."""
    from rewardtune.registry import get_card, load_reward
    from rewardtune.rewards._shared import sharing

    amp = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}[spec.train.mixed_precision]
    terms = []
    with sharing():
        for t in spec.objective:
            card = get_card(t.reward)
            kw: dict[str, Any] = dict(t.kwargs)
            if t.weights:
                kw["weights"] = t.weights
            reward = load_reward(t.reward, t.preset, device=str(device),
                                 dtype=t.dtype or dtype or (amp if device.type == "cuda" else "float32"),
                                 max_batch_size=t.max_batch_size, **kw)
            if hasattr(reward, "load"):  # a plugin's class need not derive from Reward
                reward.load()
            terms.append(ObjectiveTerm(label=t.label, reward=reward, weight=t.weight, role=t.role,
                                       normalize=t.normalize, combine=t.combine,
                                       sign=-1.0 if card.direction == "lower" else 1.0))
    return Objective(terms, info)


def sampling_settings(spec: Any) -> SamplingSettings:
    sp = spec.sampling
    return SamplingSettings(steps=sp.steps, guidance=sp.guidance_scale, eta=sp.eta, resolution=sp.resolution,
                            use_checkpoint=spec.train.gradient_checkpointing)


def train_settings(spec: Any, eval_prompts: list[str]) -> TrainSettings:
    t, lg = spec.train, spec.logging
    ema = spec.model.ema
    return TrainSettings(
        steps=t.steps, batch_size=t.batch_size, grad_accum=t.grad_accum,
        images_per_prompt=spec.sampling.images_per_prompt, lr=t.lr, lr_schedule=t.lr_schedule,
        warmup_steps=t.warmup_steps, optimizer=t.optimizer, weight_decay=t.weight_decay, betas=tuple(t.betas),
        grad_clip=t.grad_clip, seed=t.seed, mixed_precision=t.mixed_precision, max_nonfinite=t.max_nonfinite,
        checkpoint_every=t.checkpoint_every, keep_checkpoints=t.keep_checkpoints, log_every=lg.every,
        fused_adam=t.fused_adam,
        images_every=lg.images_every, eval_prompts=tuple(eval_prompts[:lg.eval_prompts]) * lg.eval_images_per_prompt,
        tensorboard=lg.tensorboard or "tensorboard" in lg.trackers,
        wandb_project=lg.wandb_project if "wandb" in lg.trackers else None, progress=lg.progress, progress_every_s=lg.progress_every_s,
        progress_every_steps=lg.progress_every_steps or 0, ema_decay=ema.decay if ema else None,
        ema_every=ema.update_every if ema else 1, select_by=lg.select_by)


def build_trainer(spec: Any, *, output_dir: str | Path | None = None, callbacks: Any = (),
                  progress: bool | None = None) -> Trainer:
    """Everything a run needs, built from a validated spec."""
    from rewardtune.prompts import resolve_prompts
    from rewardtune.spec.load import spec_base_dir
    from rewardtune.spec.preflight import preflight

    preflight(spec)  # what `validate` checks on this machine (prompt files, local weights, extras, device): before
    # any model loads
    info = dist_info()
    seed_everything(spec.train.seed)
    if spec.train.deterministic:
        use_deterministic_kernels()
    device = resolve_device(spec.launcher, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives use the current device
    base = spec_base_dir(spec)
    train_prompts = resolve_prompts(spec.prompts.train, base)
    eval_prompts = resolve_prompts(spec.prompts.eval, base)
    method = build_method(spec.method, base)
    settings = train_settings(spec, eval_prompts)
    # every prompt the run encodes: what the prompt cache must hold
    prompts = [*train_prompts, *settings.eval_prompts, "", *extra_prompts(method)] if spec.model.cache_prompts else None
    diff = build_diffusion(spec, device, prompts, info=info)
    objective = build_objective(spec, device, info)
    if progress is not None:
        settings = TrainSettings(**{**settings.__dict__, "progress": progress})
    out = Path(output_dir) if output_dir is not None else Path(spec.resolved_output_dir)
    if not out.is_absolute() and output_dir is None:
        out = Path.cwd() / out
    return Trainer(diff, objective, method, sampling_settings(spec), settings, train_prompts, out, spec=spec,
                   callbacks=callbacks, info=info)
