"""The objective: rewards combined into what a method maximizes.

Terms with `combine: weighted_sum` add `weight * r` (r optionally normalized by a running z-score). Terms with
`combine: assemble_ranked` enter through their within-prompt ranks (FineRewards), which need no gradient:

    rank_ij   rank of sample i among the samples of its prompt for term j; 1 = best, ties get the average rank
    s_ij      = (n_g - rank_ij) / (n_g - 1)         in [0, 1], 1 for the best; 0.5 when the prompt has 1 sample
    a_j       = w_j / sum_j' w_j'                   over the assemble_ranked terms (weights > 0)
    m_i       = 2 * sum_j a_j s_ij                  detached; its mean over each prompt's samples is exactly 1
    J         = mean_i  m_i * sum_k w_k * r_ik      over the differentiable weighted_sum terms k

so the gradient comes only from differentiable terms, and samples the non-differentiable terms rank higher get a
larger share of it. With no assemble_ranked term, m_i = 1 and J is the plain weighted sum. The `ranked` method
selects by the combined score c_i = sum_j a_j s_ij over all its optimized terms.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from rewardtune.engine.distributed import DistInfo, all_reduce_sum


def within_group_ranks(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Rank of each value among those of its group: 1 = best (highest), ties averaged (like scipy's rankdata on
    the negated values). Note this is a rank, not `argsort` (the position of the i-th sorted element)."""
    v = values.detach().double().reshape(-1)
    g = groups.reshape(-1)
    same = g[:, None] == g[None, :]
    greater = (v[None, :] > v[:, None]) & same  # [i, j]: j beats i
    equal = (v[None, :] == v[:, None]) & same
    return 1.0 + greater.sum(1).double() + 0.5 * (equal.sum(1).double() - 1.0)


def rank_scores(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """s = (n_g - rank) / (n_g - 1) in [0, 1], 1 for the best of its group; 0.5 for a group of one."""
    ranks = within_group_ranks(values, groups)
    g = groups.reshape(-1)
    n = (g[:, None] == g[None, :]).sum(1).double()
    return torch.where(n > 1, (n - ranks) / (n - 1).clamp(min=1), torch.full_like(ranks, 0.5))


def top_m_per_group(score: torch.Tensor, groups: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the m highest scores of each group (ties: the earlier sample wins), groups in order of first
    appearance, best first within a group."""
    out: list[int] = []
    g = groups.reshape(-1).tolist()
    order: list[Any] = []
    for x in g:
        if x not in order:
            order.append(x)
    s = score.detach().double().reshape(-1).tolist()
    for grp in order:
        idx = [i for i, x in enumerate(g) if x == grp]
        idx.sort(key=lambda i: (-s[i], i))
        out.extend(idx[:m])
    return torch.tensor(out, dtype=torch.long)


class RunningZScore:
    """Per-term running mean and std (Chan's parallel update; float64), synchronized across ranks."""

    def __init__(self, labels: list[str], eps: float = 1e-6):
        self.eps = eps
        self.count = {k: 0.0 for k in labels}
        self.mean = {k: 0.0 for k in labels}
        self.m2 = {k: 0.0 for k in labels}

    def update(self, label: str, values: torch.Tensor, info: DistInfo) -> None:
        v = values.detach().double().reshape(-1)
        stats = torch.stack([torch.tensor(float(v.numel()), dtype=torch.float64, device=v.device), v.sum(),
                             (v * v).sum()])
        stats = all_reduce_sum(stats, info).cpu()
        n_b, s, ss = (float(x) for x in stats)
        if n_b == 0:
            return
        mean_b = s / n_b
        m2_b = max(ss - n_b * mean_b * mean_b, 0.0)
        n_a, mean_a, m2_a = self.count[label], self.mean[label], self.m2[label]
        n = n_a + n_b
        delta = mean_b - mean_a
        self.mean[label] = mean_a + delta * n_b / n
        self.m2[label] = m2_a + m2_b + delta * delta * n_a * n_b / n
        self.count[label] = n

    def std(self, label: str) -> float:
        n = self.count[label]
        return (self.m2[label] / (n - 1)) ** 0.5 if n > 1 else 1.0

    def normalize(self, label: str, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean[label]) / (self.std(label) + self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {"count": dict(self.count), "mean": dict(self.mean), "m2": dict(self.m2)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for k in ("count", "mean", "m2"):
            getattr(self, k).update(sd[k])


@dataclass
class ObjectiveTerm:
    label: str
    reward: Any  # rewardtune.rewards.base.Reward
    weight: float = 1.0
    role: str = "optimize"  # or "monitor"
    normalize: str = "none"  # or "running_zscore"
    combine: str = "weighted_sum"  # or "assemble_ranked"
    sign: float = 1.0  # -1 when the reward's direction is "lower is better"

    @property
    def differentiable(self) -> bool:
        return bool(getattr(self.reward, "differentiable", True))

    @property
    def gives_gradient(self) -> bool:
        return self.role == "optimize" and self.combine == "weighted_sum" and self.differentiable


@dataclass
class ObjectiveValue:
    per_sample: torch.Tensor  # [B], the quantity to maximize (graph through differentiable terms)
    raw: dict[str, torch.Tensor] = field(default_factory=dict)  # detached, as the reward returned it
    normalized: dict[str, torch.Tensor] = field(default_factory=dict)  # detached, after direction and z-score
    multiplier: torch.Tensor | None = None  # m_i from assemble_ranked terms (None when there are none)
    rank_score: torch.Tensor | None = None  # c_i over all optimized terms (used by `ranked`)

    def finite_flag(self) -> torch.Tensor:
        """True (a 0-d bool tensor on the values' device, so reading it is left to the caller) when every value
        is finite."""
        vals = [self.per_sample.detach(), *(v.to(self.per_sample.device) for v in self.raw.values())]
        return torch.stack([torch.isfinite(v).all() for v in vals]).all()


class Objective:
    def __init__(self, terms: list[ObjectiveTerm], info: DistInfo | None = None):
        self.terms = terms
        self.info = info or DistInfo()
        self.stats = RunningZScore([t.label for t in terms])

    @property
    def labels(self) -> list[str]:
        return [t.label for t in self.terms]

    def reward_modules(self) -> list[torch.nn.Module]:
        out: list[torch.nn.Module] = []
        for t in self.terms:
            mods = getattr(t.reward, "modules", None)
            if callable(mods):
                out.extend(mods())
        return out

    def evaluate(self, pixels: torch.Tensor, prompts: list[str], groups: torch.Tensor, *,
                 update_stats: bool = True, need_grad: bool = True, rank_all: bool = False) -> ObjectiveValue:
        """Score pixels [B,3,H,W] in [0,1]. `rank_all` ranks every optimized term (the `ranked` method)."""
        device = pixels.device
        raw: dict[str, torch.Tensor] = {}
        norm: dict[str, torch.Tensor] = {}
        with_grad: dict[str, torch.Tensor] = {}
        for t in self.terms:
            keep = need_grad and t.gives_gradient and not rank_all and torch.is_grad_enabled()
            with torch.set_grad_enabled(keep):
                r = t.reward(pixels if keep else pixels.detach(), prompts).to(device).float()
            raw[t.label] = r.detach()
            if t.normalize == "running_zscore" and update_stats:
                d = r.detach()  # every rank takes part in the all-reduce; non-finite values are left out
                self.stats.update(t.label, d[torch.isfinite(d)], self.info)
            v = self.stats.normalize(t.label, r) if t.normalize == "running_zscore" else r
            v = t.sign * v
            norm[t.label] = v.detach()
            if keep:
                with_grad[t.label] = v
        total = torch.zeros(pixels.shape[0], device=device)
        ranked = [t for t in self.terms if t.role == "optimize" and (rank_all or t.combine == "assemble_ranked")]
        multiplier = rank_score = None
        if ranked:
            wsum = sum(t.weight for t in ranked)
            rank_score = sum((t.weight / wsum) * rank_scores(norm[t.label], groups).to(device).float()
                             for t in ranked)
            multiplier = 2.0 * rank_score
        for t in self.terms:
            if t.label in with_grad:
                total = total + t.weight * with_grad[t.label]
        if multiplier is not None and not rank_all:
            total = multiplier.detach() * total
        return ObjectiveValue(total, raw, norm, multiplier, rank_score)

    def weighted(self, values: Mapping[str, Any]) -> Any:
        """The objective as an eval reports it: sum over the optimized terms of weight * sign * value, for the
        raw values of each term (a mean, or per-image arrays)."""
        return sum(t.weight * t.sign * values[t.label] for t in self.terms if t.role == "optimize")

    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.stats.load_state_dict(sd["stats"])


def explain_rewards(rewards: Mapping[str, Any], pixels: torch.Tensor, prompts: list[str]
                    ) -> tuple[dict[str, list[float]], dict[str, list[str]], list[bool] | None]:
    """Per-image details of the rewards that explain themselves at eval (`explain_in_eval`, e.g. the shapes judge),
    as (numeric fields per image, keyed `LABEL/FIELD`; verdict strings per label; the first judge's `both_ok` per
    image, or None). The trainer's eval and `rewardtune eval` both read them here."""
    fields: dict[str, list[float]] = {}
    verdicts: dict[str, list[str]] = {}
    ok: list[bool] | None = None
    for label, r in rewards.items():
        if not getattr(r, "explain_in_eval", False):
            continue
        details = r.explain(pixels, prompts)
        if not details:
            continue
        for key in details[0]:
            vals = [d.get(key) for d in details]
            if all(isinstance(v, bool | int | float) for v in vals):
                fields[f"{label}/{key}"] = [float(v) for v in vals]
        if all("verdict" in d for d in details):
            verdicts[label] = [str(d["verdict"]) for d in details]
            if ok is None and all(isinstance(d.get("both_ok"), bool) for d in details):
                ok = [d["both_ok"] for d in details]
    return fields, verdicts, ok
