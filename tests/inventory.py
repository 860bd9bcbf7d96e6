"""What the project ships, listed once for every test that needs the list (tests import it by putting tests/ on
sys.path, as they do spec_fuzz). A new reward card or spec is added here; test_registry and test_spec check that
the lists match the disk (globbed recursively, counted)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: built-in reward cards (rewards/*.yaml)
SHIPPED_REWARDS = ["aesthetic", "blip2-caption", "clip", "hpsv2", "imagereward", "pickscore", "sam-llm", "shapes-eval"]
DIFFERENTIABLE_REWARDS = {"aesthetic", "clip", "hpsv2", "imagereward", "pickscore"}
#: example specs (specs/**/*.yaml), relative to specs/
SHIPPED_SPECS = ["alignprop.yaml", "demo.yaml", "draft_k.yaml", "draft_lv.yaml", "finerewards.yaml", "flux.yaml",
                 "ranked.yaml", "refl.yaml", "sd3.yaml", "sdxl.yaml"]


def reward_cards_on_disk() -> list[str]:
    return sorted(p.stem for p in (ROOT / "rewards").rglob("*.yaml"))


def specs_on_disk() -> list[str]:
    return sorted(p.relative_to(ROOT / "specs").as_posix() for p in (ROOT / "specs").rglob("*.yaml"))
