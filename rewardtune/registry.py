"""The reward registry: lazy, declarative, with did-you-mean and no silent collisions.

Sources, in order:
1. built-in cards (`rewards/*.yaml`, shipped in the wheel as `rewardtune/_bundled/rewards`);
2. the entry-point group `rewardtune.rewards` (third-party packages);
3. rewards registered at run time with `@register_reward` (e.g. from a spec's `imports:`).

Listing rewards or validating a spec reads cards only: no torch import, no weights. The implementation
(`module:Class`) is imported when a reward is built.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from rewardtune.errors import RegistryConflictError, UnknownRewardError, UsageError

ENTRY_POINT_GROUP = "rewardtune.rewards"
PRESET_KEYS_IMAGE = ("weights", "revision", "image_size", "mean", "std", "interpolation")


def bundled_dir(kind: str) -> Path:
    """`rewards` or `specs`: inside the installed wheel, or at the repository root in a checkout."""
    pkg = Path(__file__).resolve().parent
    inside = pkg / "_bundled" / kind
    return inside if inside.is_dir() else pkg.parent / kind


@dataclass(frozen=True)
class Card:
    name: str
    implementation: str  # "module:Class"
    differentiable: bool
    inputs: tuple[str, ...]
    presets: dict[str, dict[str, Any]]
    default_preset: str = "default"
    description: str = ""
    direction: str = "higher"
    typical_range: tuple[float, float] | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    requires: tuple[dict[str, str], ...] = ()
    citation: str = ""
    license: str = ""
    origin: str = ""  # where it came from: a card path, an entry point, a module
    factory: Callable[..., Any] | None = None  # set for rewards registered in code

    @property
    def default_weights(self) -> str | None:
        return self.presets.get(self.default_preset, {}).get("weights")

    def implemented(self) -> bool:
        """True when the implementation module exists (checked without importing it)."""
        if self.factory is not None:
            return True
        module = self.implementation.partition(":")[0]
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    def missing_requirements(self) -> list[dict[str, str]]:
        out = []
        for req in self.requires:
            mod = req.get("module") or req["package"].replace("-", "_")
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                out.append(req)
        return out


_CARD_KEYS = {"name", "implementation", "differentiable", "inputs", "presets", "default_preset", "description",
              "direction", "typical_range", "params", "requires", "citation", "license"}


def card_from_dict(data: dict[str, Any], origin: str) -> Card:
    unknown = set(data) - _CARD_KEYS
    missing = {"name", "implementation", "differentiable", "presets"} - set(data)
    if unknown or missing:
        raise RegistryConflictError(f"Reward card {origin}: " + "; ".join(
            ([f"unknown keys {sorted(unknown)}"] if unknown else []) + ([f"missing keys {sorted(missing)}"] if missing else [])))
    presets = data["presets"] or {}
    default = data.get("default_preset", "default")
    if default not in presets:
        raise RegistryConflictError(f"Reward card {origin}: default_preset '{default}' is not among its presets")
    rng = data.get("typical_range")
    return Card(
        name=str(data["name"]), implementation=str(data["implementation"]), differentiable=bool(data["differentiable"]),
        inputs=tuple(data.get("inputs") or ("pixels", "prompt")), presets={k: dict(v or {}) for k, v in presets.items()},
        default_preset=default, description=str(data.get("description") or ""),
        direction=str(data.get("direction") or "higher"), typical_range=tuple(rng) if rng else None,
        params=dict(data.get("params") or {}), requires=tuple(data.get("requires") or ()),
        citation=str(data.get("citation") or ""), license=str(data.get("license") or ""), origin=origin)


class Registry:
    def __init__(self) -> None:
        self._cards: dict[str, Card] = {}
        self._loaded_builtin = False
        self._loaded_plugins = False

    # -- loading -------------------------------------------------------------------------------------------
    def _add(self, card: Card) -> None:
        prev = self._cards.get(card.name)
        if prev is not None and prev.origin != card.origin:
            raise RegistryConflictError(
                f"Reward name '{card.name}' is registered twice: by {prev.origin} and by {card.origin}. "
                "Rename one of them (names must be unique).")
        self._cards[card.name] = card

    def _ensure(self) -> None:
        if not self._loaded_builtin:
            self._loaded_builtin = True
            import yaml

            for path in sorted(bundled_dir("rewards").glob("*.yaml")):
                with open(path) as f:
                    self._add(card_from_dict(yaml.safe_load(f), origin=f"built-in card {path.name}"))
        if not self._loaded_plugins:
            self._loaded_plugins = True
            from importlib.metadata import entry_points

            for ep in entry_points(group=ENTRY_POINT_GROUP):
                self._add(self._card_from_entry_point(ep))

    def _card_from_entry_point(self, ep) -> Card:
        origin = f"entry point '{ep.name}' ({ep.value}) of {getattr(ep.dist, 'name', '?')}"
        obj = ep.load()
        card = getattr(obj, "card", None)
        if isinstance(card, dict):
            data = {"name": ep.name, **card}
            data.setdefault("implementation", ep.value)
            return card_from_dict(data, origin)
        return Card(name=ep.name, implementation=ep.value, differentiable=bool(getattr(obj, "differentiable", True)),
                    inputs=tuple(getattr(obj, "inputs", ("pixels", "prompt"))), presets={"default": {}},
                    description=(obj.__doc__ or "").strip().split("\n")[0], origin=origin)

    def register(self, card: Card) -> None:
        self._ensure()
        self._add(card)

    # -- queries -------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._ensure()
        return sorted(self._cards)

    def cards(self) -> list[Card]:
        self._ensure()
        return [self._cards[n] for n in sorted(self._cards)]

    def get(self, name: str) -> Card:
        self._ensure()
        if name in self._cards:
            return self._cards[name]
        if ":" in name:  # module:Class used directly in a spec
            return Card(name=name, implementation=name, differentiable=True, inputs=("pixels", "prompt"),
                        presets={"default": {}}, origin=f"module path {name}")
        raise UnknownRewardError(unknown_reward_message(name, self.names()))


def did_you_mean(name: str, choices: list[str]) -> str | None:
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_reward_message(name: str, choices: list[str]) -> str:
    guess = did_you_mean(name, choices)
    msg = f"Unknown reward '{name}'."
    if guess:
        msg += f" Did you mean '{guess}'?"
    return msg + f" Registered rewards: {', '.join(choices)}. Run `rewardtune rewards` to list them."


@lru_cache(maxsize=1)
def registry() -> Registry:
    return Registry()


def get_card(name: str) -> Card:
    return registry().get(name)


# ------------------------------------------------------------------------------------------------ registration
def register_reward(name: str, *, differentiable: bool = True, inputs: tuple[str, ...] = ("pixels", "prompt"),
                    description: str = "") -> Callable:
    """Register a plain callable `fn(pixels[B,3,H,W] in [0,1], prompts: list[str]) -> Tensor[B]` or a Reward
    subclass under `name`.

        @rewardtune.register_reward("brightness")
        def brightness(pixels, prompts):
            return pixels.mean(dim=(1, 2, 3))
    """

    def deco(obj: Callable) -> Callable:
        module = getattr(obj, "__module__", "?")
        qual = getattr(obj, "__qualname__", getattr(obj, "__name__", "?"))
        card = Card(name=name, implementation=f"{module}:{qual}", differentiable=differentiable, inputs=inputs,
                    presets={"default": {}, "tiny": {}}, description=description or (obj.__doc__ or "").strip()
                    .split("\n")[0], origin=f"register_reward in {module}.{qual}", factory=obj)
        registry().register(card)
        return obj

    return deco


def import_extra(items: tuple[str, ...] | list[str], base_dir: Path | None = None) -> None:
    """Import a spec's `imports:` (Python files or module names) so they can register rewards."""
    import runpy
    import sys

    for item in items:
        p = Path(item)
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if item.endswith(".py"):
            if not p.exists():
                raise UsageError(f"imports: file '{item}' not found (looked at {p}).")
            key = f"rewardtune_user_{abs(hash(str(p.resolve())))}"
            if key not in sys.modules:
                sys.modules[key] = None  # type: ignore[assignment]  # import once per process
                runpy.run_path(str(p), run_name=key)
        else:
            try:
                importlib.import_module(item)
            except ModuleNotFoundError as e:
                raise UsageError(f"imports: module '{item}' cannot be imported ({e}).") from None


# ---------------------------------------------------------------------------------------------------- building
def resolve_class(implementation: str):
    module, _, attr = implementation.partition(":")
    if not attr:
        raise UsageError(f"Reward implementation '{implementation}' must look like 'package.module:Class'.")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise UsageError(f"Reward implementation '{implementation}': module cannot be imported ({e}).") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"Reward implementation '{implementation}': '{module}' has no attribute '{attr}'.")
        obj = getattr(obj, part)
    return obj


def load_reward(name: str, preset: str | None = None, *, device: str = "cpu", dtype: str = "float32",
                max_batch_size: int | None = None, **kwargs: Any):
    """Build a reward by registry name (or `module:Class`) and preset. Weights load lazily on first use.

        r = rewardtune.load_reward("imagereward")
        scores = r.score("a red bicycle", ["a.png", "b.png"])
    """
    card = get_card(name)
    if not card.implemented():
        raise UsageError(f"Reward '{name}' is registered but not implemented yet ({card.implementation}).")
    preset_name = preset or card.default_preset
    if preset_name not in card.presets:
        guess = did_you_mean(preset_name, list(card.presets))
        raise UsageError(f"Reward '{name}' has no preset '{preset_name}'."
                         + (f" Did you mean '{guess}'?" if guess else "")
                         + f" Presets: {', '.join(card.presets)}.")
    missing = card.missing_requirements()
    if missing:
        from rewardtune.errors import MissingDependencyError

        req = missing[0]
        raise MissingDependencyError(req["package"], req.get("extra"), f"Reward '{name}'")
    extra = {"max_batch_size": max_batch_size} if max_batch_size else {}
    if card.factory is not None:
        from rewardtune.rewards.callable import CallableReward

        obj = card.factory
        if isinstance(obj, type):
            return obj(device=device, dtype=dtype, **extra, **kwargs)
        return CallableReward(obj, name=name, differentiable=card.differentiable, device=device, dtype=dtype,
                              **extra, **kwargs)
    cls = resolve_class(card.implementation)
    # explicit arguments win over the preset (e.g. `weights=/models/local-copy`)
    return cls(**{**card.presets[preset_name], **kwargs}, device=device, dtype=dtype, **extra)
