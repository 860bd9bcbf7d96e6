"""What the project ships, listed once for every test that needs the list (tests import it by putting tests/ on
sys.path, as they do spec_fuzz). A new reward card, spec or shipped model is added here; test_registry, test_spec
and test_shipped_models check that the lists match the disk (globbed recursively, counted)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: built-in reward cards (rewards/*.yaml)
SHIPPED_REWARDS = ["aesthetic", "blip2-caption", "clip", "hpsv2", "imagereward", "pickscore", "sam-llm", "shapes-eval"]
DIFFERENTIABLE_REWARDS = {"aesthetic", "clip", "hpsv2", "imagereward", "pickscore"}
#: example specs (specs/**/*.yaml), relative to specs/
SHIPPED_SPECS = ["alignprop.yaml", "demo.yaml", "draft_k.yaml", "draft_lv.yaml", "finerewards.yaml", "flux.yaml",
                 "ranked.yaml", "refl.yaml", "sd3.yaml", "sdxl.yaml"]


#: the shapes world's trained models (rewardtune/data/models/NAME, loaded as zoo:NAME): the pipelines, then the reward
SHIPPED_PIPELINES = ["shapes-sd1", "shapes-sdxl", "shapes-sd3", "shapes-flux"]
SHIPPED_MODELS = [*SHIPPED_PIPELINES, "shapes-clip"]
MODELS_DIR = ROOT / "rewardtune" / "data" / "models"


def shipped_models_on_disk() -> list[str]:
    return sorted(p.name for p in MODELS_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def shipped_model_files() -> list[str]:
    """Every file of the shipped models, relative to rewardtune/data/models (what a wheel must hold)."""
    return sorted(f.relative_to(MODELS_DIR).as_posix() for name in SHIPPED_MODELS
                  for f in (MODELS_DIR / name).rglob("*") if f.is_file())


def reward_cards_on_disk() -> list[str]:
    return sorted(p.stem for p in (ROOT / "rewards").rglob("*.yaml"))


def specs_on_disk() -> list[str]:
    return sorted(p.relative_to(ROOT / "specs").as_posix() for p in (ROOT / "specs").rglob("*.yaml"))
