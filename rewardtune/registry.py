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


class CardError(UsageError):
    """A reward card that does not follow the card format; the message names the card and each fix."""


@lru_cache(maxsize=1)
def _card_model():
    """The card format as a strict pydantic model (built on first use: importing the registry stays cheap)."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

    strict = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    class Param(BaseModel):
        model_config = strict
        type: StrictStr
        default: Any = None
        help: StrictStr = ""

    class Requirement(BaseModel):
        model_config = strict
        package: StrictStr
        extra: StrictStr | None = None
        module: StrictStr | None = None

    class CardData(BaseModel):
        model_config = strict
        name: StrictStr = Field(min_length=1)
        implementation: StrictStr = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
        differentiable: StrictBool
        inputs: tuple[Literal["pixels", "prompt"], ...] = Field(("pixels", "prompt"), min_length=1)
        presets: dict[StrictStr, dict[StrictStr, Any] | None] = Field(min_length=1)
        default_preset: StrictStr = "default"
        description: StrictStr | None = None
        direction: Literal["higher", "lower"] = "higher"
        typical_range: tuple[float, float] | None = None
        params: dict[StrictStr, Param] | None = None
        requires: tuple[Requirement, ...] | None = None
        citation: StrictStr | None = None
        license: StrictStr | None = None

        @model_validator(mode="after")
        def _consistent(self):
            if self.default_preset not in self.presets:
                raise ValueError(f"default_preset '{self.default_preset}' is not among its presets "
                                 f"({', '.join(self.presets)})")
            if self.typical_range is not None and self.typical_range[0] > self.typical_range[1]:
                raise ValueError("typical_range must be [low, high] with low <= high")
            return self

    return CardData


def _card_error_line(err: dict[str, Any], fields: list[str]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "<card>"
    given = err.get("input")
    typ = err["type"]
    if typ == "bool_type":
        return (f"{loc}: must be true or false, got {given!r}"
                + (" (text: write it without quotes)" if isinstance(given, str) else ""))
    if typ == "literal_error":
        expected = str(err.get("ctx", {}).get("expected", ""))
        options = [o.strip().strip("'") for o in expected.replace(" or ", ",").split(",") if o.strip()]
        guess = did_you_mean(str(given), options)
        return (f"{loc}: {given!r} is not allowed" + (f". Did you mean '{guess}'?" if guess else "")
                + f" Use one of: {', '.join(options)}")
    if typ == "extra_forbidden":
        guess = did_you_mean(str(err["loc"][-1]), fields) if len(err["loc"]) == 1 else None
        return f"{loc}: unknown key" + (f". Did you mean '{guess}'?" if guess else "") + (
            f" Card keys: {', '.join(fields)}" if len(err["loc"]) == 1 else "")
    if typ == "missing":
        return f"{loc}: required key is missing; add `{err['loc'][-1]}:`"
    if typ == "value_error":  # a check across keys: its message names them
        return err["msg"].removeprefix("Value error, ")
    return f"{loc}: {err['msg']} (got {given!r})"


def card_from_dict(data: Any, origin: str) -> Card:
    """Validate a card (strictly: `differentiable: "false"` or `direction: lowr` are errors) and build it."""
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise CardError(f"Reward card {origin}: must be a mapping of key: value (got {type(data).__name__}). "
                        "Start from a card in rewards/.")
    model = _card_model()
    try:
        c = model.model_validate(data)
    except ValidationError as e:
        lines = [_card_error_line(err, list(model.model_fields)) for err in e.errors()]
        raise CardError(f"Reward card {origin} is invalid ({len(lines)} problem{'s' if len(lines) != 1 else ''}):\n"
                        + "\n".join("  " + line for line in lines)) from None
    return Card(
        name=c.name, implementation=c.implementation, differentiable=c.differentiable, inputs=tuple(c.inputs),
        presets={k: dict(v or {}) for k, v in c.presets.items()}, default_preset=c.default_preset,
        description=c.description or "", direction=c.direction, typical_range=c.typical_range,
        params={k: p.model_dump() for k, p in (c.params or {}).items()},
        requires=tuple({k: v for k, v in r.model_dump().items() if v is not None} for r in c.requires or ()),
        citation=c.citation or "", license=c.license or "", origin=origin)


def load_card_file(path: Path, origin: str | None = None) -> Card:
    """Read and validate a card file (the spec's YAML rules: UTF-8, no duplicate keys, no YAML bombs)."""
    from rewardtune.errors import SpecError
    from rewardtune.spec.load import source_from_bytes

    try:
        src = source_from_bytes(path.read_bytes(), name=str(path))
    except SpecError as e:
        raise CardError(f"Reward card {path}: " + "; ".join(p.format() for p in e.problems)) from None
    except OSError as e:
        raise CardError(f"Reward card {path} cannot be read: {e.strerror or e}") from None
    if src.problems:
        raise CardError(f"Reward card {path}: " + "; ".join(p.format() for p in src.problems))
    return card_from_dict(src.data, origin or str(path))


@dataclass(frozen=True)
class SkippedPlugin:
    """An entry point of the `rewardtune.rewards` group that failed to load."""

    name: str
    value: str
    dist: str
    error: str

    def message(self) -> str:
        return (f"reward plugin '{self.name}' ({self.value}) of {self.dist} failed to load and was skipped: "
                f"{self.error}")


class Registry:
    def __init__(self) -> None:
        self._cards: dict[str, Card] = {}
        self._loaded_builtin = False
        self._loaded_plugins = False
        self.skipped: list[SkippedPlugin] = []  # plugins that failed to load (reported, not fatal)

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
            for path in sorted(bundled_dir("rewards").glob("*.yaml")):
                self._add(load_card_file(path, origin=f"built-in card {path.name}"))
        if not self._loaded_plugins:
            self._loaded_plugins = True
            from importlib.metadata import entry_points

            for ep in entry_points(group=ENTRY_POINT_GROUP):
                try:
                    card = self._card_from_entry_point(ep)
                except (Exception, SystemExit) as e:  # noqa: BLE001 - a plugin may raise anything on import;
                    # one broken plugin must not break every command: it is reported (`skipped`) and left out
                    self.skipped.append(SkippedPlugin(ep.name, ep.value, getattr(ep.dist, "name", None) or "?",
                                                      f"{type(e).__name__}: {e}"))
                    continue
                self._add(card)

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
        broken = [p for p in self.skipped if p.name == name]
        if broken:
            raise UnknownRewardError(f"Reward '{name}' is not available: its {broken[0].message()}. Fix or "
                                     f"reinstall {broken[0].dist}.")
        raise UnknownRewardError(unknown_reward_message(name, self.names()))


def did_you_mean(name: str, choices: list[str], cutoff: float = 0.6) -> str | None:
    """The choice closest to a misspelt `name` (difflib's ratio at least `cutoff`), or None: every "Did you mean"
    of rewardtune comes from here."""
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=cutoff)
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
