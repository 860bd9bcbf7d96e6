"""Load a diffusion pipeline for training: frozen VAE and text encoders, SDPA attention, and either LoRA adapters
(PEFT, float32 master weights) or the whole denoiser (UNet or transformer) as the trainable part. What differs
between model families (SD 1.x/2.x, SDXL, SD3, FLUX) is the family's (`rewardtune.engine.families`).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardtune.errors import UsageError
from rewardtune.rewards.base import parse_dtype


@dataclass
class LoraSettings:
    rank: int = 4
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: the family's default
    init: str = "gaussian"


def _sd_family() -> Any:
    from rewardtune.engine.families.sd import FAMILY

    return FAMILY


@dataclass
class Diffusion:
    """The pieces of a diffusion pipeline the engine drives, and the family that knows how to drive them."""

    denoiser: Any  # the trained network: a UNet (sd, sdxl) or a transformer (sd3, flux)
    vae: Any
    scheduler: Any
    components: dict[str, Any] = field(default_factory=dict)  # text encoders and tokenizers by pipeline name
    family: Any = field(default_factory=_sd_family)  # a rewardtune.engine.families.ModelFamily
    lora: LoraSettings | None = None
    base_denoiser: Any = None  # frozen copy, only for full fine-tuning with a KL term or ranked's DPO
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None  # autocast dtype of the denoiser and VAE calls (None = off)
    #: the empty prompt's conditioning (CFG's unconditional branch); the text encoders are frozen, so once
    uncond: Any = field(default=None, repr=False)
    #: prompt -> its conditioning (one row, on the CPU) when prompts were encoded ahead (`cache_prompts`)
    prompt_cache: dict[str, Any] | None = field(default=None, repr=False)
    extras: dict[str, Any] = field(default_factory=dict, repr=False)  # family settings read at load
    no_autocast: set[int] = field(default_factory=set, repr=False)  # modules kept in their own dtype (SDXL's VAE)
    sharded: bool = False  # the denoiser is split over the ranks (FSDP2): its parameters are DTensors
    prefix_denoiser: Any = None  # the denoiser compiled for the no-grad sampling steps (train.compile_prefix)
    _frozen_dtypes: dict[int, torch.dtype] = field(default_factory=dict, repr=False)
    _ckpt_modules: dict[int, list[torch.nn.Module]] = field(default_factory=dict, repr=False)
    _lora_slots: list[tuple[torch.nn.Module, str, Any]] | None = field(default=None, repr=False)

    @property
    def unet(self) -> Any:
        """The denoiser (the name SD code knows it by; for SD3 and FLUX it is their transformer)."""
        return self.denoiser

    @property
    def text_encoder(self) -> Any:
        return self.components.get("text_encoder")

    @property
    def tokenizer(self) -> Any:
        return self.components.get("tokenizer")

    def text_encoder_modules(self) -> list[torch.nn.Module]:
        return [m for n in self.family.text_encoders if (m := self.components.get(n)) is not None]

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

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
        return (self.amp_dtype is not None and id(module) not in self.no_autocast
                and self.frozen_dtype(module) != self.amp_dtype)

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
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors, whole (gathered from every rank when sharded: then every rank must call it)."""
        from rewardtune.engine.distributed import gather_full

        return {n: gather_full(p.detach()).clone() for n, p in self.denoiser.named_parameters()  # type: ignore
                if p.requires_grad}

    def load_trainable_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        params = dict(self.denoiser.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in sd]
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
        from rewardtune.engine.distributed import like

        with torch.no_grad():
            for n, v in sd.items():
                params[n].copy_(like(v, params[n]))


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


def _model_index(path: str | Path) -> dict[str, Any]:
    """A pipeline directory's model_index.json ({} when it has none or it is not a mapping)."""
    try:
        index = json.loads((Path(path) / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def pipeline_class_of(path: str | Path) -> str | None:
    """The diffusers pipeline class a pipeline directory was saved from (model_index.json's `_class_name`)."""
    return str(_model_index(path).get("_class_name") or "") or None


def resolve_family(path: str | Path, family: str | None, pretrained: str) -> Any:
    """The family that loads the pipeline at `path`: the one named (checked against the pipeline's class), or the
    one its class belongs to. UsageError when they disagree or rewardtune has no family for it."""
    from rewardtune.engine.families import FAMILIES, family_names_for_pipeline, get_family

    found = pipeline_class_of(path)
    if family is not None:
        fam = get_family(family)
        if found is not None and found != fam.pipeline_class:
            names = family_names_for_pipeline(found)
            fix = (f"set model.family: {names[0]}" if names else
                   f"rewardtune trains {', '.join(sorted({get_family(n).pipeline_class for n in FAMILIES}))}")
            raise UsageError(f"model.family is '{family}' ({fam.pipeline_class}), but {pretrained} holds a {found}: "
                             f"{fix}.")
        return fam
    names = family_names_for_pipeline(found) if found else []
    if not names:
        raise UsageError(f"{pretrained} holds {'a ' + found if found else 'no model_index.json'}: rewardtune trains "
                         f"{', '.join(sorted({get_family(n).pipeline_class for n in FAMILIES}))} pipelines.")
    return get_family(names[0])


def load_diffusion(pretrained: str, *, family: str | None = None, revision: str | None = None,
                   variant: str | None = None, dtype: str = "float32", device: str | torch.device = "cpu",
                   lora: LoraSettings | None = None, keep_base_copy: bool = False,
                   text_encoders: bool = True, vae_slicing: bool = False, vae_tiling: bool = False) -> Diffusion:
    """Build the training view of a pipeline. With `lora`, adapters are added to the denoiser and are the only
    trainable tensors (float32 even when the frozen weights are half precision); without, the whole denoiser trains
    in float32. `family` (a spec name: sd1, sd2, sdxl, sd3, flux) is checked against the pipeline's own class; None
    takes the pipeline's. `text_encoders=False` loads none (prompts then come from a cache: `prompt_cache`).
    `vae_slicing` decodes one image at a time, `vae_tiling` in overlapping tiles (diffusers' VAE options; both
    work under gradient, block checkpointing included)."""
    import copy

    import diffusers

    path = load_pipeline_dir(pretrained, revision)
    fam = resolve_family(path, family, pretrained)
    with _quiet_loading():  # importing the pipeline class makes transformers warn about torchvision
        pipeline_cls = getattr(diffusers, fam.pipeline_class)
    kw: dict[str, Any] = dict(fam.pipeline_kwargs())
    # components the directory was saved without (SD3 without T5: `"text_encoder_3": [null, null]`) are passed as
    # None, as diffusers asks of a caller loading such a directory
    kw.update({n: None for n, v in _model_index(path).items() if v in ([None, None], None) and n not in kw})
    if variant:
        kw["variant"] = variant
    if not text_encoders:
        kw.update({n: None for n in fam.text_encoders})
    with _quiet_loading():
        pipe = pipeline_cls.from_pretrained(path, torch_dtype=parse_dtype(dtype), **kw)
    device = torch.device(device)
    scheduler = fam.make_scheduler(pipe.scheduler.config)
    denoiser, vae = getattr(pipe, fam.denoiser_name), pipe.vae
    components = {n: getattr(pipe, n, None) for n in (*fam.text_encoders, *fam.tokenizers)}
    for name in fam.sdpa_modules():
        _use_sdpa(getattr(pipe, name))
    if vae_slicing:
        vae.enable_slicing()
    if vae_tiling:
        vae.enable_tiling()
    for m in (denoiser, vae, *(components[n] for n in fam.text_encoders)):
        if m is None:
            continue
        m.requires_grad_(False)
        m.eval()
        with _quiet_loading():  # diffusers' advice on casting after loading: the casts here are deliberate
            m.to(device)
    base = None
    if lora is not None:
        from peft import LoraConfig

        denoiser.add_adapter(LoraConfig(
            r=lora.rank, lora_alpha=lora.alpha or lora.rank, lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules or fam.lora_targets),
            init_lora_weights="gaussian" if lora.init == "gaussian" else True))
        for n, p in denoiser.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
                p.requires_grad_(True)
    else:
        if keep_base_copy:
            base = copy.deepcopy(denoiser).requires_grad_(False)
        with _quiet_loading():
            denoiser.to(torch.float32)
        denoiser.requires_grad_(True)
    diff = Diffusion(denoiser=denoiser, vae=vae, scheduler=scheduler, components=components, family=fam, lora=lora,
                     base_denoiser=base, device=device)
    fam.setup(diff, pipe)
    return diff


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


class FoldedLora:
    """The denoiser's LoRA folded into its frozen weights, for denoiser calls that need no gradient.

    With LoRA every adapted layer computes `W x + s * B (A x)`: two more small matrix products, a scale, an add,
    and peft's Python around them. For a call under no_grad the same function is `W' x` with `W' = W + s * B A`.
    `on()` computes W' once per sampling call (new tensors: the frozen weights are never written), points each
    adapted layer's base `nn.Linear` at it and puts that plain layer in the LoRA layer's place in the model; `off()`
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
        if (diff.lora is None or diff.sharded or diff.needs_autocast(diff.denoiser)
                or diff.frozen_dtype(diff.denoiser) != torch.float32):
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
            parent._modules[name] = base  # the model calls the plain layer: no LoRA path, no peft Python
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
    """(parent, attribute, LoRA layer) for every LoRA layer of the denoiser, found once: the adapters are added at
    load time and never change afterwards."""
    if diff._lora_slots is None:
        from peft.tuners.lora import LoraLayer

        diff._lora_slots = [(parent, name, child) for parent in diff.denoiser.modules()
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


def lora_save(diff: Diffusion, out_dir: str, *, write: bool = True) -> str:
    """Write the denoiser's LoRA in diffusers' format for the family's pipeline: its `load_lora_weights(out_dir)`
    loads it. Sharded, every rank must call it (the LoRA is gathered) and one writes (`write`)."""
    from peft.utils import get_peft_model_state_dict

    from rewardtune.engine.distributed import gather_full

    assert diff.lora is not None
    layers = {k: gather_full(v.detach()).to("cpu", torch.float32).contiguous()  # type: ignore[attr-defined]
              for k, v in get_peft_model_state_dict(diff.denoiser).items()}
    meta = {"r": diff.lora.rank, "lora_alpha": diff.lora.alpha or diff.lora.rank,
            "target_modules": list(diff.lora.target_modules or diff.family.lora_targets), "lora_dropout": 0.0}
    if write:
        diff.family.save_lora(diff, layers, meta, out_dir)
    return out_dir


def full_save(diff: Diffusion, out_dir: str, *, write: bool = True) -> str:
    """Write the fine-tuned denoiser (safetensors, diffusers layout) under out_dir/unet or out_dir/transformer,
    where the family's pipeline looks for it. Sharded, every rank must call it (the weights are gathered) and one
    writes (`write`)."""
    import os

    target = os.path.join(out_dir, diff.family.denoiser_name)
    if not diff.sharded:
        if write:
            diff.denoiser.save_pretrained(target, safe_serialization=True)
        return target
    from rewardtune.engine.distributed import gather_full

    full = {k: gather_full(v).to("cpu").contiguous() for k, v in diff.denoiser.state_dict().items()}  # type: ignore
    if write:
        _save_state_dict(diff.denoiser, full, target)
    return target


def _save_state_dict(model: Any, state: dict[str, torch.Tensor], target: str, max_shard: str = "10GB") -> None:
    """`save_pretrained` for weights held apart from the model (gathered from shards): its config, then the
    safetensors files (sharded with an index past `max_shard`) under the names diffusers loads."""
    import os

    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    os.makedirs(target, exist_ok=True)
    model.save_config(target)
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard,
                                               filename_pattern="diffusion_pytorch_model{suffix}.safetensors")
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, os.path.join(target, filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        with open(os.path.join(target, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
