"""Training methods, one file each, registered by name (`base.register_method`). `build_method` maps the spec's
`method` section onto a typed method object; no spec object travels further.

A new method is one file (a class implementing `base.Method` and a builder decorated with
`@register_method("name")`) plus its module name in `BUILTIN`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from rewardtune.engine.methods.base import Method, builder, extra_prompts, register_method, registered_methods

#: the built-in methods' modules (importing one registers its builder)
BUILTIN = ("alignprop", "draft_k", "draft_lv", "refl", "ranked")

for _name in BUILTIN:
    importlib.import_module(f"rewardtune.engine.methods.{_name}")

from rewardtune.engine.methods.alignprop import AlignPropMethod  # noqa: E402
from rewardtune.engine.methods.draft_k import DraftKMethod  # noqa: E402
from rewardtune.engine.methods.draft_lv import DraftLVMethod  # noqa: E402
from rewardtune.engine.methods.ranked import RankedMethod  # noqa: E402
from rewardtune.engine.methods.refl import PretrainData, ReFLMethod  # noqa: E402

__all__ = ["AlignPropMethod", "DraftKMethod", "DraftLVMethod", "Method", "PretrainData", "RankedMethod", "ReFLMethod",
           "build_method", "extra_prompts", "register_method", "registered_methods"]


def build_method(m: Any, base_dir: Path | None = None) -> Method:
    """Spec `method` section -> method object."""
    return builder(m.name)(m, base_dir)
