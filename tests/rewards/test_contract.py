"""One contract for every registered reward, shipped or from a plugin (as diffusers runs one mixin over every
pipeline), on its `tiny` preset: shape, dtype, device, lazy loading, determinism, batch splitting, frozen weights,
and gradient exactly when the card says differentiable."""
from __future__ import annotations

import inspect

import pytest
import torch
from inventory import DIFFERENTIABLE_REWARDS, SHIPPED_REWARDS

from rewardtune.registry import get_card, load_reward, registry, resolve_class

MINE = DIFFERENTIABLE_REWARDS
SHIPPED = set(SHIPPED_REWARDS)
# Card-backed rewards (built-in and entry points). Callables that other test modules register at import time are
# test doubles of the engine's tests, not shipped rewards, so they are left out here.
REWARDS = sorted(c.name for c in registry().cards() if c.implemented() and c.factory is None)
DIFFERENTIABLE = sorted(n for n in REWARDS if get_card(n).differentiable)
PROMPTS = ["a photo of a cat", "a red car parked on the street", "a bowl of soup", "a dog running on green grass",
           "a painting of a mountain lake at sunset"]
#: rewards that judge a closed prompt language are given prompts in it
LANGUAGE = {"shapes-eval": ["a red circle", "a blue square", "a green triangle", "a pink diamond", "a cyan circle"]}


def _prompts(reward, n=5):
    return list(LANGUAGE.get(reward.name, PROMPTS)[:n])


def test_every_shipped_reward_is_in_the_suite():
    assert set(REWARDS) >= SHIPPED, f"missing: {SHIPPED - set(REWARDS)}"
    assert set(DIFFERENTIABLE) >= MINE and not set(DIFFERENTIABLE) & (SHIPPED - MINE)


def _pixels(b=5, h=40, w=52, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


@pytest.fixture(scope="module", params=REWARDS)
def reward(request):
    r = load_reward(request.param, "tiny", max_batch_size=64)
    assert not r.loaded and r.load_count == 0, "weights must load lazily, on first use"
    return r


def test_shape_dtype_device_and_lazy_load_once(reward):
    out = reward(_pixels(), _prompts(reward))
    assert out.shape == (5,) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.isfinite(out).all()
    reward(_pixels(2), _prompts(reward, 2))
    reward.score(_prompts(reward, 1)[0], torch.rand(3, 24, 24))
    assert reward.load_count == 1


def test_gradient_exactly_when_differentiable(reward):
    x = _pixels().requires_grad_(True)
    out = reward(x, _prompts(reward))
    if not get_card(reward.name).differentiable:
        assert not out.requires_grad  # no graph to the pixels: methods must not backpropagate through it
        return
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # every image gets its own gradient
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()


def test_batch_splitting_equals_one_batch(reward):
    """A separate instance that splits every batch into 2s scores as the whole batch does (separate, so no cache
    a reward keeps, such as captions or judgements, answers for it)."""
    x = _pixels(seed=1)
    whole = reward(x, _prompts(reward))
    split = load_reward(reward.name, "tiny", max_batch_size=2)(x, _prompts(reward))
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)


def test_deterministic_and_input_dependent(reward):
    """On shapes-world scenes (structure every reward can tell apart), captioned right except for two swapped."""
    from rewardtune.world.shapes import sample

    images, scenes = sample(5, seed=2, res=40)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    prompts = [sc.caption for sc in scenes]
    prompts[0], prompts[1] = prompts[1], prompts[0]
    a, b = reward(x, prompts), reward(x.clone(), list(prompts))
    assert torch.equal(a, b)
    # a reward that ignores its input would pass everything above
    assert (a.max() - a.min()).item() > 1e-4


def test_weights_frozen_and_eval(reward):
    reward.load()
    for m in reward.modules():
        assert not m.training
        assert all(not p.requires_grad for p in m.parameters())


@pytest.mark.parametrize("name", sorted(MINE))
def test_low_precision_returns_float32_close(name):
    full = load_reward(name, "tiny")
    half = load_reward(name, "tiny", dtype="bfloat16")
    x = _pixels(3, seed=3)
    a, b = full(x, PROMPTS[:3]), half(x, PROMPTS[:3])
    assert b.dtype == torch.float32
    assert next(half.modules()[0].parameters()).dtype == torch.bfloat16
    scale = a.abs().max().item() + 1.0
    assert (a - b).abs().max().item() < 0.1 * scale


@pytest.mark.parametrize("name", REWARDS)
def test_card_keys_are_constructor_kwargs(name):
    """Every preset key and every `params:` key of the card is a keyword of its class, with the card's default."""
    card = get_card(name)
    cls = resolve_class(card.implementation)
    sig = inspect.signature(cls.__init__)
    names = {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    assert {"device", "dtype", "max_batch_size"} <= names, card.name
    for pname, preset in card.presets.items():
        unknown = set(preset) - names
        assert not unknown, f"{card.name}.{pname}: {sorted(unknown)} are not {cls.__name__} kwargs"
    unknown = set(card.params) - names
    assert not unknown, f"{card.name} params {sorted(unknown)} are not {cls.__name__} kwargs"
    for pname, spec in card.params.items():
        assert {"type", "default", "help"} <= set(spec), f"{card.name}.params.{pname}"
        assert sig.parameters[pname].default == spec["default"], f"{card.name}.params.{pname} default differs"
    assert "tiny" in card.presets, card.name
    if card.name != "shapes-eval":  # the shapes world's judge is rules: no weights at all
        assert card.presets["tiny"]["weights"].startswith("zoo:"), card.name


@pytest.mark.parametrize("name", sorted(MINE))
def test_default_preset_points_at_real_checkpoint(name):
    from rewardtune.registry import get_card

    card = get_card(name)
    w = card.presets["default"]["weights"]
    assert not w.startswith("zoo:") and w.count("/") == 1, w
