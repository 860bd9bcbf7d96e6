"""Load a spec: YAML with line numbers and duplicate-key errors, CLI overrides, validation that reports every
problem at once (dotted path, YAML line, did-you-mean, fix), and the `--tiny` transform.

No torch is imported here.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rewardtune.errors import Problem, SpecError
from rewardtune.spec.schema import GRADIENT_METHODS, Spec

PathT = tuple[str | int, ...]


@dataclass
class SpecSource:
    """Raw spec data plus where each value came from."""

    data: Any
    lines: dict[PathT, int] = field(default_factory=dict)
    name: str = "<spec>"
    base_dir: Path = field(default_factory=Path.cwd)
    problems: list[Problem] = field(default_factory=list)


def dotted(path: PathT) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# ------------------------------------------------------------------------------------------------------ YAML
def _construct(node: yaml.Node, path: PathT, src: SpecSource) -> Any:
    src.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        seen: dict[Any, int] = {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                src.problems.append(Problem(dotted(path), "YAML merge keys (<<) are not supported",
                                            knode.start_mark.line + 1, "write the keys out"))
                continue
            key = yaml.SafeLoader.construct_object(_LOADER, knode, deep=True)
            if not isinstance(key, str):
                key = str(key)
            if key in seen:
                src.problems.append(Problem(
                    dotted((*path, key)), f"duplicate key '{key}' (first on line {seen[key]})",
                    knode.start_mark.line + 1, "remove one of them; YAML would silently keep only the last"))
            seen[key] = knode.start_mark.line + 1
            src.lines[(*path, key)] = knode.start_mark.line + 1
            out[key] = _construct(vnode, (*path, key), src)
            src.lines[(*path, key)] = knode.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, (*path, i), src) for i, v in enumerate(node.value)]
    return yaml.SafeLoader.construct_object(_LOADER, node, deep=True)


_LOADER = yaml.SafeLoader("")


def parse_yaml(text: str, name: str = "<spec>", base_dir: Path | None = None) -> SpecSource:
    src = SpecSource(data=None, name=name, base_dir=base_dir or Path.cwd())
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        what = getattr(e, "problem", None) or str(e)
        ctx, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if ctx and cmark is not None and mark is not None and cmark.line != mark.line:
            what += f" ({ctx} that starts on line {cmark.line + 1})"
        raise SpecError([Problem("", f"malformed YAML: {what}", line,
                                 "check indentation, colons and quotes around that line")], name) from None
    src.data = {} if node is None else _construct(node, (), src)
    if not isinstance(src.data, dict):
        raise SpecError([Problem("", "a spec must be a YAML mapping (key: value), got "
                                     f"{type(src.data).__name__}", 1, "start from a file in specs/")], name)
    return src


def find_spec_file(path: str | Path) -> Path | None:
    """`path` itself, or, when it does not exist, the shipped spec of that name (`specs/demo.yaml`, `demo`),
    so `rewardtune run specs/demo.yaml` works from an installed wheel outside the repository."""
    p = Path(path)
    if p.exists():
        return p
    from rewardtune.registry import bundled_dir

    if p.is_absolute():
        return None
    rel = p.parts[1:] if p.parts[:1] == ("specs",) else p.parts
    shipped = bundled_dir("specs").joinpath(*rel) if rel else None
    if shipped is not None and shipped.suffix not in (".yaml", ".yml"):
        shipped = shipped.with_suffix(".yaml")
    return shipped if shipped is not None and shipped.is_file() else None


def read_spec_source(path: str | Path) -> SpecSource:
    p = find_spec_file(path)
    if p is None:
        from rewardtune.registry import bundled_dir

        names = sorted(x.stem for x in bundled_dir("specs").rglob("*.yaml"))
        raise SpecError([Problem("", f"spec file '{path}' not found", None,
                                 "check the path; shipped specs: " + (", ".join(names) or "none"))], str(path))
    return parse_yaml(p.read_text(), name=str(path) if Path(path).exists() else str(p), base_dir=p.resolve().parent)


# ------------------------------------------------------------------------------------------------ overrides
_SEG = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_override_path(key: str) -> PathT:
    parts: list[str | int] = []
    pos = 0
    for m in _SEG.finditer(key):
        if m.start() != pos and key[pos:m.start()] != ".":
            raise ValueError(key)
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if pos != len(key) or not parts:
        raise ValueError(key)
    return tuple(parts)


def apply_overrides(src: SpecSource, overrides: list[str] | tuple[str, ...]) -> None:
    """Apply `a.b[0].c=value` overrides (value parsed as YAML) in place; bad ones become problems."""
    for ov in overrides:
        key, eq, raw = ov.partition("=")
        if not eq or not key:
            src.problems.append(Problem(ov, "override must look like key=value, e.g. train.lr=3e-4", None,
                                        "write dotted.path=value"))
            continue
        try:
            path = parse_override_path(key.strip())
        except ValueError:
            src.problems.append(Problem(key, f"bad override path '{key}'", None,
                                        "use dots and [index], e.g. objective[0].weight=2"))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = src.data
        ok = True
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    src.problems.append(Problem(dotted(path[:i + 1]), f"override index {part} is out of range",
                                                None, f"the list has {len(node) if isinstance(node, list) else 0} "
                                                      "items"))
                    ok = False
                    break
                node = node[part]
            else:
                if not isinstance(node, dict):
                    ok = False
                    src.problems.append(Problem(dotted(path[:i + 1]), "cannot set a key inside a non-mapping",
                                                None, None))
                    break
                if part not in node or node[part] is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
        if not ok:
            continue
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last > len(node):
                src.problems.append(Problem(dotted(path), f"override index {last} is out of range", None, None))
                continue
            if last == len(node):
                node.append(value)
            else:
                node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        src.lines[path] = 0  # 0 marks "from the command line"


# ---------------------------------------------------------------------------------------------- validation
def _line_for(src: SpecSource, path: PathT) -> int | None:
    p = tuple(path)
    while p:
        if p in src.lines:
            return src.lines[p]  # 0 means "set on the command line"
        p = p[:-1]
    return None


def _model_at(path: PathT) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of `path` (for did-you-mean on unknown keys)."""
    from rewardtune.spec import schema as S

    model: Any = S.Spec
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        f = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if f is None:
            return None
        ann = f.annotation
        candidates = models_in(ann)
        model = candidates[0] if len(candidates) == 1 else (candidates if candidates else None)
        if isinstance(model, list):
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def models_in(ann: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a type annotation (through unions, Annotated, tuples)."""
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type[BaseModel]] = []
    for a in typing.get_args(ann):
        out += models_in(a)
    return out


def _problem_from_error(err: dict[str, Any], src: SpecSource) -> Problem:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
    path = dotted(loc)
    line = _line_for(src, loc)
    typ = err["type"]
    msg = err["msg"]
    fix = None
    if typ == "extra_forbidden":
        key = loc[-1]
        model = _model_at(loc)
        if model is not None:
            options = list(model.model_fields)
            guess = difflib.get_close_matches(str(key), options, n=1, cutoff=0.6)
            msg = f"unknown key '{key}'" + (f". Did you mean '{guess[0]}'?" if guess else "")
            fix = f"allowed keys here: {', '.join(options)}"
        else:
            msg = f"unknown key '{key}'"
    elif typ == "missing":
        msg = "required field is missing"
        fix = f"add `{loc[-1]}:`"
    elif typ in ("literal_error", "union_tag_invalid"):
        ctx = err.get("ctx", {})
        expected = ctx.get("expected") or ctx.get("expected_tags")
        given = err.get("input")
        if typ == "union_tag_invalid":
            given = ctx.get("tag")
            key = str(ctx.get("discriminator", "")).strip("'")
            path = dotted((*loc, key))
            line = _line_for(src, (*loc, key))
        if expected:
            opts = [o.strip().strip("'") for o in str(expected).replace(" or ", ",").split(",") if o.strip()]
            guess = difflib.get_close_matches(str(given), opts, n=1, cutoff=0.5)
            msg = f"'{given}' is not allowed" + (f". Did you mean '{guess[0]}'?" if guess else "")
            fix = f"use one of: {', '.join(opts)}"
    elif typ == "union_tag_not_found":
        key = str(err.get("ctx", {}).get("discriminator", "")).strip("'")
        msg = f"missing `{key}:` that says which kind this is"
        fix = f"add `{key}:`"
    elif typ.endswith("_type") or typ.endswith("_parsing"):
        msg = f"{msg} (got {err.get('input')!r})"
    elif typ == "value_error":
        msg = msg.removeprefix("Value error, ")
    return Problem(path, msg, line, fix)


_UNION_TAGS = {"lora", "full", "alignprop", "draft_k", "draft_lv", "refl", "ranked", "local", "slurm"}


def _registry_problems(raw: dict[str, Any], src: SpecSource) -> list[Problem]:
    """Reward names, presets and kwargs, checked on raw data so they are reported alongside schema errors."""
    from rewardtune.registry import did_you_mean, registry, unknown_reward_message

    problems: list[Problem] = []
    reg = registry()
    objective = raw.get("objective")
    if not isinstance(objective, list):
        return problems
    names = reg.names()
    for i, term in enumerate(objective):
        if not isinstance(term, dict) or not isinstance(term.get("reward"), str):
            continue
        rname = term["reward"]
        base = ("objective", i)
        if ":" in rname:
            mod = rname.partition(":")[0]
            import importlib.util

            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                problems.append(Problem(dotted((*base, "reward")), f"module '{mod}' not found", _line_for(src, (*base, "reward")),
                                        "install the package that provides it, or list its file under `imports:`"))
            continue
        if rname not in names:
            guess = did_you_mean(rname, names)
            problems.append(Problem(dotted((*base, "reward")), unknown_reward_message(rname, names).split(" Registered")[0],
                                    _line_for(src, (*base, "reward")),
                                    f"use '{guess}'" if guess else "run `rewardtune rewards` for the list"))
            continue
        card = reg.get(rname)
        preset = term.get("preset")
        if isinstance(preset, str) and preset not in card.presets:
            guess = did_you_mean(preset, list(card.presets))
            problems.append(Problem(dotted((*base, "preset")), f"reward '{rname}' has no preset '{preset}'"
                                    + (f". Did you mean '{guess}'?" if guess else ""), _line_for(src, (*base, "preset")),
                                    f"presets of {rname}: {', '.join(card.presets)}"))
        kwargs = term.get("kwargs")
        if isinstance(kwargs, dict) and card.factory is None:
            for k in kwargs:
                if k not in card.params:
                    guess = did_you_mean(str(k), list(card.params))
                    problems.append(Problem(
                        dotted((*base, "kwargs", k)), f"reward '{rname}' takes no argument '{k}'"
                        + (f". Did you mean '{guess}'?" if guess else ""), _line_for(src, (*base, "kwargs", k)),
                        f"arguments of {rname}: {', '.join(card.params) or '(none)'}"))
    return problems


def _semantic_problems(spec: Spec, src: SpecSource) -> list[Problem]:
    from rewardtune.registry import registry

    problems: list[Problem] = []
    reg = registry()

    def add(path: PathT, msg: str, fix: str | None = None) -> None:
        problems.append(Problem(dotted(path), msg, _line_for(src, path), fix))

    # term names unique
    seen: dict[str, int] = {}
    for i, t in enumerate(spec.objective):
        if t.label in seen:
            add(("objective", i, "name" if t.name else "reward"),
                f"term name '{t.label}' is used twice (also objective[{seen[t.label]}])",
                "give one of them a distinct `name:`")
        seen.setdefault(t.label, i)
    optimized = [t for t in spec.objective if t.role == "optimize"]
    if not optimized:
        add(("objective",), "no term has role 'optimize'; there is nothing to train on",
            "set `role: optimize` on at least one term")
    steps = spec.sampling.steps
    m = spec.method
    if m.name in ("alignprop", "draft_k"):
        k = getattr(m, "k", None)
        if isinstance(k, int) and k > steps:
            add(("method", "k"), f"truncation k={k} exceeds sampling.steps={steps}",
                f"use k <= {steps}, or k: all")
        rng = getattr(m, "k_range", None)
        if rng and rng[1] > steps:
            add(("method", "k_range"), f"k_range upper bound {rng[1]} exceeds sampling.steps={steps}",
                f"use an upper bound <= {steps}")
    if m.name == "refl" and m.stop_range[1] >= steps:
        add(("method", "stop_range"), f"stop_range {list(m.stop_range)} must lie within the {steps} sampling steps "
                                      f"(indices 0..{steps - 1})",
            f"e.g. stop_range: [{max(0, steps * 3 // 4 - 1)}, {steps - 1}], or raise sampling.steps")
    if m.name in GRADIENT_METHODS:
        for i, t in enumerate(spec.objective):
            if t.role != "optimize" or t.combine == "assemble_ranked":
                continue
            try:
                card = reg.get(t.reward)
            except Exception:
                continue
            if not card.differentiable:
                add(("objective", i, "combine"),
                    f"reward '{t.reward}' has no gradient, so it cannot be optimized with `combine: weighted_sum` "
                    f"under the gradient method '{m.name}'",
                    "set `combine: assemble_ranked`, `role: monitor`, or use `method: {name: ranked}`")
        if all(t.combine == "assemble_ranked" and not _differentiable(reg, t.reward) for t in optimized) and optimized:
            add(("objective",), f"method '{m.name}' needs at least one differentiable optimized term to give a "
                                "gradient", "add a differentiable reward, or use `method: {name: ranked}`")
    # engine checks
    g = spec.sampling.images_per_prompt
    if spec.train.batch_size % g:
        add(("train", "batch_size"), f"train.batch_size={spec.train.batch_size} is not a multiple of "
                                     f"sampling.images_per_prompt={g}",
            f"use a batch_size that is a multiple of {g}")
    for i, t in enumerate(spec.objective):
        if t.combine == "assemble_ranked" and t.role == "optimize" and t.weight <= 0:
            add(("objective", i, "weight"), f"assemble_ranked term '{t.label}' needs a positive weight "
                                            f"(got {t.weight}); ranks already say which way is better",
                "use a weight > 0, or `role: monitor`")
    if m.name in GRADIENT_METHODS and optimized and not all(
            t.combine == "assemble_ranked" and not _differentiable(reg, t.reward) for t in optimized) and not any(
            t.combine == "weighted_sum" and _differentiable(reg, t.reward) for t in optimized):
        add(("objective",), f"method '{m.name}' takes its gradient from differentiable `combine: weighted_sum` "
                            "terms, and there is none (assemble_ranked terms only weight the samples)",
            "set `combine: weighted_sum` on a differentiable term, or use `method: {name: ranked}`")
    if m.name in GRADIENT_METHODS and g == 1 and any(
            t.combine == "assemble_ranked" and t.role == "optimize" for t in spec.objective):
        add(("sampling", "images_per_prompt"), "assemble_ranked terms under a gradient method rank the images of "
                                               "each prompt, but sampling.images_per_prompt is 1 (nothing to rank)",
            "set sampling.images_per_prompt to 2 or more")
    # prompts files exist
    for which in ("train", "eval"):
        ps = getattr(spec.prompts, which)
        if ps.file is not None:
            p = Path(ps.file)
            p = p if p.is_absolute() else src.base_dir / p
            if not p.exists():
                add(("prompts", which, "file"), f"prompts file '{ps.file}' not found (looked at {p})",
                    "fix the path (relative to the spec file)")
        if ps.builtin is not None:
            from rewardtune.prompts import BUILTIN_SETS

            if ps.builtin not in BUILTIN_SETS:
                guess = difflib.get_close_matches(ps.builtin, list(BUILTIN_SETS), n=1)
                add(("prompts", which, "builtin"), f"unknown built-in prompt set '{ps.builtin}'"
                    + (f". Did you mean '{guess[0]}'?" if guess else ""),
                    f"built-in sets: {', '.join(BUILTIN_SETS)}")
    if m.name == "refl" and m.pretrain is not None:
        p = Path(m.pretrain.data)
        p = p if p.is_absolute() else src.base_dir / p
        if not p.exists():
            add(("method", "pretrain", "data"), f"pretraining data '{m.pretrain.data}' not found (looked at {p})",
                "fix the path (relative to the spec file)")
    return problems


def _differentiable(reg, name: str) -> bool:
    try:
        return reg.get(name).differentiable
    except Exception:
        return True


def validate_source(src: SpecSource) -> Spec:
    """Validate raw data; raise SpecError with every problem at once."""
    from rewardtune.registry import import_extra

    problems = list(src.problems)
    raw = src.data if isinstance(src.data, dict) else {}
    imports = raw.get("imports")
    if isinstance(imports, list) and imports:
        try:
            import_extra([str(x) for x in imports], src.base_dir)
        except Exception as e:  # report, keep going
            problems.append(Problem("imports", str(e), _line_for(src, ("imports",)), None))
    if "objective" in raw and isinstance(raw["objective"], list) and not raw["objective"]:
        problems.append(Problem("objective", "the objective is empty", _line_for(src, ("objective",)),
                                "add at least one term, e.g. `- reward: pickscore`"))
    spec = None
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        for err in e.errors():
            if err["type"] == "too_short" and err["loc"] == ("objective",):
                continue  # reported above with a better message
            problems.append(_problem_from_error(err, src))
    problems += _registry_problems(raw, src)
    if spec is not None and not problems:
        problems += _semantic_problems(spec, src)
    if problems:
        # stable order: by line, then path
        problems.sort(key=lambda p: (p.line or 10**9, p.path))
        raise SpecError(problems, src.name)
    assert spec is not None
    return spec


def load_spec(path_or_data: str | Path | dict[str, Any] | Spec, overrides: list[str] | tuple[str, ...] = (),
              tiny: bool = False) -> Spec:
    """Load, override and validate a spec from a path, a dict or a Spec. Raises SpecError."""
    if isinstance(path_or_data, Spec):
        src = SpecSource(data=path_or_data.model_dump(mode="json"), name=f"<spec {path_or_data.name}>")
    elif isinstance(path_or_data, dict):
        import copy

        src = SpecSource(data=copy.deepcopy(path_or_data), name="<dict>")
    else:
        src = read_spec_source(path_or_data)
    if overrides:
        apply_overrides(src, list(overrides))
    spec = validate_source(src)
    spec = spec.model_copy(update={})  # frozen copy
    object.__setattr__(spec, "_base_dir", src.base_dir)
    return to_tiny(spec) if tiny else spec


def spec_base_dir(spec: Spec) -> Path:
    """Directory that relative paths in the spec (prompt files, data) are resolved against."""
    return getattr(spec, "_base_dir", None) or Path.cwd()


# ------------------------------------------------------------------------------------------------------ tiny
TINY_PIPELINE = "zoo:sd1"
TINY_RESOLUTION = 16


def to_tiny(spec: Spec) -> Spec:
    """Swap every model of a spec for its tiny twin of the same family (offline, seconds on a CPU)."""
    from rewardtune.registry import registry

    reg = registry()
    terms = []
    for t in spec.objective:
        card = reg.get(t.reward)
        preset = "tiny" if "tiny" in card.presets else t.preset
        terms.append(t.model_copy(update={"preset": preset, "dtype": None, "weights": None}))
    model = spec.model.model_copy(update={"pretrained": TINY_PIPELINE, "revision": None, "variant": None,
                                          "family": "sd1", "dtype": "float32"})
    sampling = spec.sampling.model_copy(update={"resolution": TINY_RESOLUTION})
    train = spec.train.model_copy(update={"mixed_precision": "no"})
    out = spec.model_copy(update={"model": model, "objective": tuple(terms), "sampling": sampling, "train": train})
    object.__setattr__(out, "_base_dir", spec_base_dir(spec))
    return out
