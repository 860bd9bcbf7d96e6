"""Training methods, one file each. `build_method` maps the spec's `method` section onto a typed method."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rewardtune.engine.methods.alignprop import AlignPropMethod
from rewardtune.engine.methods.draft_k import DraftKMethod
from rewardtune.engine.methods.draft_lv import DraftLVMethod
from rewardtune.engine.methods.ranked import RankedMethod
from rewardtune.engine.methods.refl import PretrainData, ReFLMethod

__all__ = ["AlignPropMethod", "DraftKMethod", "DraftLVMethod", "RankedMethod", "ReFLMethod", "PretrainData",
           "build_method"]


def build_method(m: Any, base_dir: Path | None = None):
    """Spec `method` section -> method object (no spec objects travel further)."""
    if m.name == "alignprop":
        return AlignPropMethod(k=None if m.k == "all" else int(m.k), k_range=tuple(m.k_range) if m.k_range else None,
                               draw=m.draw, kl_coeff=m.kl_coeff)
    if m.name == "draft_k":
        return DraftKMethod(k=m.k, kl_coeff=m.kl_coeff)
    if m.name == "draft_lv":
        return DraftLVMethod(n=m.n, kl_coeff=m.kl_coeff)
    if m.name == "refl":
        pre = None
        if m.pretrain is not None:
            p = Path(m.pretrain.data)
            p = p if p.is_absolute() or base_dir is None else base_dir / p
            pre = PretrainData(p, weight=m.pretrain.weight, every=m.pretrain.every, batch_size=m.pretrain.batch_size)
        return ReFLMethod(stop_range=tuple(m.stop_range), loss_type=m.loss, margin=m.margin, scale=m.scale,
                          kl_coeff=m.kl_coeff, pretrain=pre)
    if m.name == "ranked":
        return RankedMethod(samples_per_prompt=m.samples_per_prompt, top_m=m.top_m,
                            prompts_per_round=m.prompts_per_round, steps_per_round=m.steps_per_round)
    raise ValueError(f"unknown method '{m.name}'")
