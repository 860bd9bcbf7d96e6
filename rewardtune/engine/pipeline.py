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
    _frozen_dtypes: dict[int, torch.dtype] = field(default_factory=dict, repr=False)
    _ckpt_modules: dict[int, list[torch.nn.Module]] = field(default_factory=dict, repr=False)
    _lora_slots: list[tuple[torch.nn.Module, str, Any]] | None = field(default=None, repr=False)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def frozen_dtype(self, module: torch.nn.Module) -> torch.dtype:
        """dtype of a module's frozen weights (LoRA factors are float32 whatever the model's dtype); for a fully
        trained UNet, the dtype of its (float32 master) weights."""
        key = id(module)
        if key not in self._frozen_dtypes:
            params = list(module.parameters())
            frozen = [p.dtype for p in params if not p.requires_grad and p.is_floating_point()]
            self._frozen_dtypes[key] = frozen[0] if frozen else params[0].dtype
        return self._frozen_dtypes[key]

    def needs_autocast(self, module: torch.nn.Module) -> bool:
        """Autocast only where it changes something: a module whose frozen weights are already in the mixed
        precision dtype runs plainly in that dtype (as diffusers' half-precision inference does). Under CUDA
        autocast GroupNorm, LayerNorm and softmax produce float32 outputs, so running bf16 weights under autocast
        would keep float32 activations for backward: about twice the activation memory for nothing."""
        return self.amp_dtype is not None and self.frozen_dtype(module) != self.amp_dtype

    def supports_block_checkpointing(self, module: torch.nn.Module) -> bool:
        return bool(getattr(module, "_supports_gradient_checkpointing", False))

    def block_checkpointing(self, module: torch.nn.Module, on: bool) -> None:
        """Turn diffusers' per-block activation checkpointing of `module` on or off (each ResNet and transformer
        block of the UNet, the mid and up blocks of the VAE decoder): in backward only one block's activations are
        recomputed and alive at a time. It acts only while grad is enabled, so no-grad calls are unaffected."""
        key = id(module)
        if key not in self._ckpt_modules:
            if not on:
                return
            module.enable_gradient_checkpointing()  # installs the (non-reentrant) checkpoint function per block
            self._ckpt_modules[key] = [m for m in module.modules() if hasattr(m, "gradient_checkpointing")]
        for m in self._ckpt_modules[key]:
            m.gradient_checkpointing = on

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

    return resolve_weights(pretrained, revision, what="diffusion pipeline", setting="model.pretrained")


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


class FoldedLora:
    """The UNet's LoRA folded into its frozen weights, for UNet calls that need no gradient.

    With LoRA every adapted layer computes `W x + s * B (A x)`: two more small matrix products, a scale, an add,
    and peft's Python around them. For a call under no_grad the same function is `W' x` with `W' = W + s * B A`.
    `on()` computes W' once per sampling call (new tensors: the frozen weights are never written), points each
    adapted layer's base `nn.Linear` at it and puts that plain layer in the LoRA layer's place in the UNet; `off()`
    puts the LoRA layers back and restores the frozen tensors themselves, so nothing drifts.

    Only for float32 computation: rounding W + s * B A to bfloat16/float16 would lose the small early LoRA update
    (it falls below the weights' rounding step), where the unfolded layer keeps it. Layers with dropout, DoRA or
    other variants, or a LoRA bias are never folded (`eligible` says no).
    """

    def __init__(self, diff: Diffusion, slots: list[tuple[torch.nn.Module, str, Any]] | None = None):
        self.diff = diff
        self.slots = _lora_linear_slots(diff) if slots is None else slots  # (parent, attribute, LoRA layer)
        self.folded: list[torch.Tensor] | None = None
        self.frozen: list[torch.Tensor] = []
        self.active = False

    @staticmethod
    def eligible(diff: Diffusion) -> bool:
        return FoldedLora._slots_if_eligible(diff) is not None

    @classmethod
    def if_eligible(cls, diff: Diffusion) -> FoldedLora | None:
        slots = cls._slots_if_eligible(diff)
        return None if slots is None else cls(diff, slots)

    @staticmethod
    def _slots_if_eligible(diff: Diffusion) -> list[tuple[torch.nn.Module, str, Any]] | None:
        if diff.lora is None or diff.needs_autocast(diff.unet) or diff.frozen_dtype(diff.unet) != torch.float32:
            return None
        slots = _lora_linear_slots(diff)
        return slots if slots and all(_foldable(m) for _, _, m in slots) else None

    @torch.no_grad()
    def on(self) -> None:
        if self.active:
            return
        if self.folded is None:  # the LoRA factors do not change within one sampling call
            self.folded = []
            for _, _, m in self.slots:
                w = m.get_base_layer().weight
                delta = sum(m.get_delta_weight(a) for a in m.active_adapters if a in m.lora_A)
                self.folded.append(w + delta.to(w.dtype))
        self.frozen = []
        for (parent, name, m), w in zip(self.slots, self.folded, strict=True):
            base = m.get_base_layer()
            self.frozen.append(base.weight.data)
            base.weight.data = w
            parent._modules[name] = base  # the UNet calls the plain layer: no LoRA path, no peft Python
        self.active = True

    def off(self) -> None:
        if not self.active:
            return
        for (parent, name, m), w in zip(self.slots, self.frozen, strict=True):
            m.get_base_layer().weight.data = w
            parent._modules[name] = m
        self.frozen = []
        self.active = False

    def release(self) -> None:
        self.off()
        self.folded = None


def _lora_linear_slots(diff: Diffusion) -> list[tuple[torch.nn.Module, str, Any]]:
    """(parent, attribute, LoRA layer) for every LoRA layer of the UNet, found once: the adapters are added at
    load time and never change afterwards."""
    if diff._lora_slots is None:
        from peft.tuners.lora import LoraLayer

        diff._lora_slots = [(parent, name, child) for parent in diff.unet.modules()
                            for name, child in parent.named_children() if isinstance(child, LoraLayer)]
    return diff._lora_slots


def _foldable(m: Any) -> bool:
    """A plain LoRA linear layer with active adapters and nothing that folding would change."""
    from peft.tuners.lora import Linear

    if type(m) is not Linear or m.merged or m.disable_adapters or getattr(m, "fan_in_fan_out", False):
        return False
    active = [a for a in m.active_adapters if a in m.lora_A]
    return bool(active) and all(
        isinstance(m.lora_dropout[a], torch.nn.Identity) and not getattr(m, "lora_bias", {}).get(a, False)
        and a not in getattr(m, "lora_variant", {}) and not getattr(m, "use_dora", {}).get(a, False)
        for a in active)


def _use_sdpa(model: torch.nn.Module) -> None:
    try:
        from diffusers.models.attention_processor import AttnProcessor2_0

        model.set_attn_processor(AttnProcessor2_0())
    except (ImportError, AttributeError, ValueError):  # a diffusers without this processor API: it picks SDPA itself
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
