"""Small rewards for engine tests, registered as plain callables. A spec can load them with
`imports: [tests/engine/rewards_for_tests.py]` (used by subprocess tests)."""
from __future__ import annotations

import torch

from rewardtune.registry import register_reward


@register_reward("test-brightness", differentiable=True)
def brightness(pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Mean pixel value: a smooth, easily learnable differentiable reward."""
    return pixels.mean(dim=(1, 2, 3))


def register_card(name: str, fn, *, direction: str = "higher", differentiable: bool = False) -> None:
    """Register `fn` under a registry card, as a plugin's card would (it can say `direction: lower`, which
    `register_reward` cannot); the registry forgets it after the test."""
    from rewardtune.registry import Card, registry

    registry().register(Card(name=name, implementation=f"{__name__}:{name}", differentiable=differentiable,
                             inputs=("pixels", "prompt"), presets={"default": {}, "tiny": {}}, direction=direction,
                             origin=f"test card in {__name__}", factory=fn))


@register_reward("test-dimness", differentiable=False)
def dimness(pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """One minus the mean pixel value: falls while test-brightness is optimized (a monitor that training hurts)."""
    return 1 - pixels.detach().mean(dim=(1, 2, 3))


class ConvScorer(torch.nn.Module):
    """A fixed random conv net scoring pixels (seeded, so every test sees the same reward)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, pixels, prompts):
        h = torch.tanh(self.conv(pixels * 2 - 1)).mean(dim=(2, 3))
        return self.head(h).squeeze(-1)


_CONV = ConvScorer()
register_reward("test-convnet", differentiable=True)(_CONV)


@register_reward("test-redness", differentiable=False)
def redness(pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Non-differentiable: red minus the other channels, computed in numpy (no graph at all)."""
    x = pixels.detach().cpu().numpy()
    return torch.from_numpy(x[:, 0].mean(axis=(1, 2)) - x[:, 1:].mean(axis=(1, 2, 3))).float()


class NanOnTrainingSteps:
    """Mean pixel value, but NaN on chosen optimizer steps: the n-th reward call with gradient returns NaN when n is
    in `steps` (for draft_k without accumulation there is one such call per step). Evaluations run without
    gradient and stay finite, so which step fails does not depend on when the trainer evaluates."""

    def __init__(self):
        self.arm(())

    def arm(self, steps) -> NanOnTrainingSteps:
        """NaN on these optimizer steps (1-based), counted from now."""
        self.steps, self.calls = set(steps), 0
        return self

    def __call__(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        r = pixels.mean(dim=(1, 2, 3))
        if not torch.is_grad_enabled():
            return r
        self.calls += 1
        return r * float("nan") if self.calls in self.steps else r
