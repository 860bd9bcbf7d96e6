"""Load a Stable Diffusion 1.x/2.x pipeline for training: frozen VAE and text encoder, SDPA attention, and either
LoRA adapters (PEFT, float32 master weights) or the full UNet as the trainable part.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from rewardtune.rewards.base import parse_dtype


@dataclass
class LoraSettings:
    rank: int = 4
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    init: str = "gaussian"


@dataclass
class Diffusion:
    """The pieces of a Stable Diffusion pipeline the engine drives."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    lora: LoraSettings | None = None
    base_unet: Any = None  # frozen copy, only for full fine-tuning with a KL regularizer
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None  # autocast dtype of the UNet and VAE calls (None = off)
    #: embedding of the empty prompt (CFG's unconditional branch); the text encoder is frozen, so it is computed once
    uncond_embedding: torch.Tensor | None = field(default=None, repr=False)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.unet.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        params = dict(self.unet.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in sd]
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
        with torch.no_grad():
            for n, v in sd.items():
                params[n].copy_(v)


def load_pipeline_dir(pretrained: str, revision: str | None = None) -> str:
    """Hub id, local dir or `zoo:` twin -> local directory (MissingWeightsError names the fix)."""
    from rewardtune.rewards._weights import resolve_weights

    return resolve_weights(pretrained, revision, what="diffusion pipeline")


@contextlib.contextmanager
def _quiet_loading():
    """Loading reports, progress bars and deprecation chatter of diffusers/transformers off while loading: the
    run's own progress display is what users read."""
    import warnings

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = (dlog.get_verbosity(), tlog.get_verbosity())
    bars = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        if bars[0]:
            dlog.enable_progress_bar()
        if bars[1]:
            tlog.enable_progress_bar()


def load_diffusion(pretrained: str, *, revision: str | None = None, variant: str | None = None,
                   dtype: str = "float32", device: str | torch.device = "cpu", lora: LoraSettings | None = None,
                   keep_base_copy: bool = False) -> Diffusion:
    """Build the training view of a pipeline. With `lora`, adapters are added to the UNet and are the only
    trainable tensors (float32 even when the frozen weights are half precision); without, the whole UNet trains
    in float32."""
    import copy

    with _quiet_loading():  # importing the pipeline class makes transformers warn about torchvision
        from diffusers import DDIMScheduler, StableDiffusionPipeline

    path = load_pipeline_dir(pretrained, revision)
    kw: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    if variant:
        kw["variant"] = variant
    with _quiet_loading():
        pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=parse_dtype(dtype), **kw)
    device = torch.device(device)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    _use_sdpa(unet)
    _use_sdpa(vae)
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
        m.eval()
        m.to(device)
    base_unet = None
    if lora is not None:
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(
            r=lora.rank, lora_alpha=lora.alpha or lora.rank, lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            init_lora_weights="gaussian" if lora.init == "gaussian" else True))
        for n, p in unet.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
                p.requires_grad_(True)
    else:
        if keep_base_copy:
            base_unet = copy.deepcopy(unet).requires_grad_(False)
        unet.to(torch.float32)
        unet.requires_grad_(True)
    return Diffusion(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=pipe.tokenizer, scheduler=scheduler,
                     lora=lora, base_unet=base_unet, device=device)


def _use_sdpa(model: torch.nn.Module) -> None:
    try:
        from diffusers.models.attention_processor import AttnProcessor2_0

        model.set_attn_processor(AttnProcessor2_0())
    except Exception:  # noqa: BLE001  (older/newer diffusers choose SDPA by default)
        pass


def lora_save(diff: Diffusion, out_dir: str) -> str:
    """Write the UNet LoRA in diffusers' format: `StableDiffusionPipeline.load_lora_weights(out_dir)` loads it."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(diff.unet))
    layers = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in layers.items()}
    assert diff.lora is not None
    meta = {"r": diff.lora.rank, "lora_alpha": diff.lora.alpha or diff.lora.rank,
            "target_modules": list(diff.lora.target_modules), "lora_dropout": 0.0}
    StableDiffusionPipeline.save_lora_weights(out_dir, unet_lora_layers=layers, unet_lora_adapter_metadata=meta)
    return out_dir


def full_unet_save(diff: Diffusion, out_dir: str) -> str:
    """Write the fine-tuned UNet (safetensors, diffusers layout) under out_dir/unet."""
    import os

    target = os.path.join(out_dir, "unet")
    diff.unet.save_pretrained(target, safe_serialization=True)
    return target
