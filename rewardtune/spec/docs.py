"""Render the spec reference (docs/spec.md) from the schema, so the two cannot drift.

    python -m rewardtune.spec.docs > docs/spec.md
"""
from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from rewardtune.spec import schema as S
from rewardtune.spec.load import models_in

HEADER = """# Spec reference

An experiment spec is one YAML file. Every mapping is strict: an unknown key is an error (with a did-you-mean),
duplicate keys are errors, and `rewardtune validate SPEC` reports every problem at once with its YAML line.
Override any field from the command line with `key=value` (`train.lr=3e-4`, `objective[0].weight=2`); overrides
go through the same validation. Each run writes its resolved spec to `OUTPUT_DIR/spec.yaml`.

Beyond the schema, `validate` checks what a run would reject on this machine, and `run` checks the same before it
loads any model: prompt files that are missing, empty or malformed; local weights directories (`model.pretrained`,
a term's `weights`) that do not exist; `logging.tensorboard` without tensorboard and `train.optimizer: adamw8bit`
without bitsandbytes (exit 4: install the extra named); a `launcher.device` this machine lacks. Exit codes: 0
valid, 2 bad input, 4 only an extra missing.

Limits: a spec is UTF-8 text (a byte-order mark is fine; UTF-16, Latin-1 and binary files are refused) of at most
1 MiB, nested at most 64 levels deep. YAML aliases may not expand to more than 10,000 values beyond those written
out (a "billion laughs" bomb is refused before anything is built), and merge keys (`<<`), tags (`!foo`,
`!!python/...`, `!!set`), keys that are not plain text and integers of more than 100 digits are errors. NaN and
infinity are refused in every number field (and in a term's `kwargs`). An override must name a field that exists
(`train.steps.x=1` and `objective.weight=5` are errors, with a did-you-mean).

**A spec is code, like a Python config.** Its `imports:` are imported (their top-level code runs) and a
`reward: "package.module:Class"` is looked up, which imports `package`, whenever the spec is validated: by
`rewardtune validate`, `rewardtune submit --dry-run` and `rewardtune run`. Check a spec from someone else with
`rewardtune validate --no-imports SPEC` (and `submit --dry-run --no-imports`): it runs none of that code and lists
the names it therefore could not check. Installed reward plugins (the `rewardtune.rewards` entry points) are
installed code and are loaded as usual; one that fails to load is reported and skipped.

This page is generated from `rewardtune/spec/schema.py` by `python -m rewardtune.spec.docs > docs/spec.md`;
a test fails when it is out of date.
"""


def type_name(ann: Any, markdown: bool = True) -> str:
    """A field's type in words: markdown for docs/spec.md, plain text for `validate --explain`."""
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    bar = " \\| " if markdown else " | "
    if origin is typing.Literal:
        if markdown:
            return bar.join(f"`{a}`" for a in args)
        return bar.join(repr(a) if isinstance(a, str) else str(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0], markdown)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return bar.join(type_name(a, markdown) for a in args)
    if origin in (tuple, list):
        if len(args) == 2 and args[1] is Ellipsis:
            inner = type_name(args[0], markdown)
            return f"list[{inner}]" if markdown else f"list of {inner}"
        return "[" + ", ".join(type_name(a, markdown) for a in args) + "]"
    if origin is dict:
        return "mapping"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"[{ann.__name__}](#{ann.__name__.lower()})" if markdown else ann.__name__
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def default_text(field: Any, markdown: bool = True) -> str:
    """A field's default in words (markdown code spans for docs/spec.md, plain for `validate --explain`)."""
    def code(text: str) -> str:
        return f"`{text}`" if markdown else text

    if field.default is PydanticUndefined:
        if field.default_factory is None:
            return "**required**" if markdown else "none (required)"
        val = field.default_factory()
        if isinstance(val, BaseModel):
            return "see below" if markdown else "its fields' defaults"
        return code(repr(val)) if val not in ({}, [], ()) else "empty"
    d = field.default
    if d is None:
        return code("null")
    if isinstance(d, bool):
        return code(str(d).lower())
    if isinstance(d, tuple):
        return code(str(list(d)))
    return code(str(d))


def render_reference() -> str:
    parts = [HEADER]
    seen: set[type[BaseModel]] = set()
    queue: list[type[BaseModel]] = [S.Spec]
    while queue:
        model = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        title = "Spec (top level)" if model is S.Spec else model.__name__
        parts.append(f"\n## {title}\n<a id=\"{model.__name__.lower()}\"></a>\n")
        doc = (model.__doc__ or "").strip()
        if doc and model is not S.Spec and not doc.startswith(("!!!", "Usage docs")):
            parts.append(doc + "\n")
        parts.append("| field | type | default | meaning |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
            parts.append(f"| `{name}` | {type_name(field.annotation)} | {default_text(field)} | {desc} |")
            queue += [m for m in models_in(field.annotation) if m not in seen]
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
