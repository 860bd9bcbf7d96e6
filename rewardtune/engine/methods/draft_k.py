"""DRaFT-K (Clark et al., 2023): the first T-K steps run entirely under no_grad, the last K with grad; the loss is
the negated objective of the decoded final image (plus the DRaFT+ KL term when kl_coeff > 0).

That is AlignProp with a fixed K, so it is one: the same sampling, loss and metrics, under its own name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rewardtune.engine.methods.alignprop import AlignPropMethod
from rewardtune.engine.methods.base import register_method


def DraftKMethod(k: int = 1, kl_coeff: float = 0.0) -> AlignPropMethod:  # noqa: N802 (reads as the class it gives)
    """DRaFT-K: `AlignPropMethod` with a fixed K, named draft_k."""
    return AlignPropMethod(k=k, kl_coeff=kl_coeff, name="draft_k")


@register_method("draft_k")
def build(m: Any, base_dir: Path | None = None) -> AlignPropMethod:
    return DraftKMethod(k=m.k, kl_coeff=m.kl_coeff)
