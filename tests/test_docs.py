"""Docs that must stay true to the code."""
import typing
from pathlib import Path

from rewardtune.spec.docs import render_reference

ROOT = Path(__file__).resolve().parents[1]


def test_spec_reference_in_sync_with_schema():
    on_disk = (ROOT / "docs" / "spec.md").read_text()
    assert on_disk == render_reference(), (
        "docs/spec.md is out of date: run `python -m rewardtune.spec.docs > docs/spec.md`")


def test_every_schema_field_documented():
    from rewardtune.spec.load import models_in
    from rewardtune.spec.schema import Spec

    seen, queue, missing = set(), [Spec], []
    while queue:
        m = queue.pop()
        if m in seen:
            continue
        seen.add(m)
        for name, f in m.model_fields.items():
            tag = typing.get_origin(f.annotation) is typing.Literal and len(typing.get_args(f.annotation)) == 1
            if not f.description and not tag:  # discriminator tags (`name: draft_k`) describe themselves
                missing.append(f"{m.__name__}.{name}")
            queue += models_in(f.annotation)
    assert not missing, f"fields without description: {missing}"
