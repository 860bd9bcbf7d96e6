"""Small typed records passed between the training loop and the methods (no config objects)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from rewardtune.engine.distributed import DistInfo
from rewardtune.engine.objective import Objective, ObjectiveValue
from rewardtune.engine.pipeline import Diffusion


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (run seed, step, micro-batch, purpose): stable across processes and runs."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass(frozen=True)
class SamplingSettings:
    steps: int = 50
    guidance: float = 7.5
    eta: float = 0.0
    resolution: int = 512
    use_checkpoint: bool = True  # gradient checkpointing of differentiable UNet steps and of the VAE decode


@dataclass
class Batch:
    """One micro-batch as seen by this rank. Randomness is drawn for the global batch from a generator that every
    rank seeds alike, then sliced to this rank's rows, so N ranks with batch B/N see what 1 rank with B sees."""

    prompts: list[str]
    groups: torch.Tensor  # [b] global prompt-slot ids: samples of one prompt share an id
    step: int
    micro: int
    gen: torch.Generator  # CPU, identical on every rank
    rows: slice
    global_size: int
    device: torch.device

    def randn(self, *shape: int) -> torch.Tensor:
        full = torch.randn((self.global_size, *shape), generator=self.gen, dtype=torch.float32)
        return full[self.rows].to(self.device, non_blocking=True)  # pageable: staged at once, no wait

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi], the same on every rank."""
        return int(torch.randint(lo, hi + 1, (1,), generator=self.gen).item())

    def randint_rows(self, hi: int) -> torch.Tensor:
        full = torch.randint(0, hi, (self.global_size,), generator=self.gen)
        return full[self.rows].to(self.device, non_blocking=True)

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class RunContext:
    diff: Diffusion
    objective: Objective
    sampling: SamplingSettings
    train_prompts: list[str]
    info: DistInfo
    seed: int
    batch_size: int  # per rank


@dataclass
class MethodOutput:
    loss: torch.Tensor
    value: ObjectiveValue | None = None  # None on steps that score nothing (denoising-loss steps)
    pixels: torch.Tensor | None = None  # detached [n,3,H,W] in [0,1], what the rewards saw
    prompts: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # floats, or 0-d device tensors


def kl_penalty(coeff: float, kl: torch.Tensor | None, steps: int) -> tuple[torch.Tensor | float, dict[str, Any]]:
    """DRaFT+: coeff * mean over differentiable steps of mean ||eps_theta - eps_base||^2. The `kl` metric is
    left on the device (the trainer reads all metrics in one transfer per step)."""
    if coeff <= 0 or kl is None or steps == 0:
        return 0.0, {}
    mean = kl / steps
    return coeff * mean, {"kl": mean.detach()}
