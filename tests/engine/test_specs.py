"""Every shipped spec validates and runs two steps with --tiny through the CLI (offline, tiny twins)."""
from __future__ import annotations

from pathlib import Path

import pytest
from inventory import SHIPPED_SPECS

from rewardtune.registry import get_card

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"
SPECS = [SPECS_DIR / name for name in SHIPPED_SPECS]  # the inventory (tests/test_spec.py checks it is the disk's)


def test_every_spec_has_a_how_to_run_header():
    for p in SPECS:
        head = p.read_text().splitlines()[:12]
        assert head[0].startswith("#") and any(f"rewardtune run specs/{p.name}" in ln for ln in head), p.name


def _run_tiny(path: Path, out: Path) -> int:
    from rewardtune.cli.main import main
    from rewardtune.spec.load import load_spec

    spec = load_spec(path)
    for t in spec.objective:  # a reward family not implemented yet is reported as such, never faked
        card = get_card(t.reward)
        if not card.implemented():
            pytest.fail(f"{path.name}: reward '{t.reward}' is not implemented yet ({card.implementation})")
    try:
        main(["run", str(path), "--tiny", "--no-progress", "-o", str(out), "train.steps=2", "train.warmup_steps=0",
              "logging.eval_prompts=1"])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _check_outputs(out: Path) -> None:
    assert (out / "spec.yaml").exists() and (out / "versions.json").exists()
    assert (out / "images" / "before.png").exists() and (out / "images" / "after.png").exists()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert any('"step": 2' in ln for ln in lines)
    assert (out / "lora" / "pytorch_lora_weights.safetensors").exists() or (out / "unet").is_dir()


def test_demo_spec_runs_two_steps_tiny(tmp_path):
    assert _run_tiny(SPECS_DIR / "demo.yaml", tmp_path) == 0
    _check_outputs(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted({Path(n).stem for n in SHIPPED_SPECS} - {"demo"}))
def test_spec_runs_two_steps_tiny(tmp_path, name):
    assert _run_tiny(SPECS_DIR / f"{name}.yaml", tmp_path) == 0
    _check_outputs(tmp_path)
