"""benchmarks/time_to_quality.py on a tiny budget, so that its worker and evaluation paths cannot rot.

Slow (each test trains and samples the shapes world's pipeline for a minute or more on a loaded 2-core machine):
`pytest -m slow tests/test_bench_time_to_quality.py`. The TRL side runs only where TRL's venv exists.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "time_to_quality.py"

pytestmark = pytest.mark.slow


def _bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "ttq"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "0", "--out", str(out), "--keep",
                        str(tmp_path / "runs"), *args], capture_output=True, text=True, env=env, cwd=str(ROOT),
                       timeout=1800)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "# Time to quality" in out.with_suffix(".md").read_text()
    return json.loads(out.with_suffix(".json").read_text())


def test_rewardtune_side_trains_saves_and_is_judged(tmp_path):
    data = _bench(tmp_path, "--sides", "rewardtune", "--rt-steps", "2", "--every", "1", "--rt-eval-every", "0",
                  "--target", "0.01")
    (run,) = data["runs"]["rewardtune"]
    curve = run["curve"]
    assert [p["step"] for p in curve] == [0, 1, 2]
    assert [p["samples"] for p in curve] == [0, 8, 16]
    assert 0 < curve[1]["cpu_s"] < curve[2]["cpu_s"]
    assert all(0 <= p[k] <= 1 for p in curve for k in ("both", "colour", "shape"))
    assert curve[1]["reward"] != curve[0]["reward"]  # the saved LoRA reached the evaluation
    for step in (1, 2):
        assert (tmp_path / "runs" / "rewardtune-0" / f"lora-{step:05d}" / "pytorch_lora_weights.safetensors").exists()
    # the base model already gets some images right, so a 1% target is reached at the first point
    assert "| rewardtune | 1/1 | 0 (0–0) |" in (tmp_path / "ttq.md").read_text()


def test_evaluation_of_a_saved_lora_equals_the_trainers_own_eval(tmp_path):
    """The benchmark judges both sides by fusing each saved LoRA into the base UNet; that must score what the
    trainer's `evaluate` scores with the LoRA live."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import time_to_quality as ttq

    from rewardtune.engine.build import build_trainer
    from rewardtune.engine.pipeline import lora_save
    from rewardtune.spec.load import load_spec

    torch.set_num_threads(1)
    tr = build_trainer(load_spec(ttq.DEMO, overrides=["train.seed=1", "train.lr=5e-3"]),
                       output_dir=tmp_path / "run", progress=False)
    for _ in range(3):
        tr.train_step()
        tr.step += 1
    live = tr.evaluate("live", None)
    lora_save(tr.diff, str(tmp_path / "lora"))
    ev = ttq.Evaluator()
    fused = ev(1, tmp_path / "lora")
    base = ev(1, None)
    assert fused["reward"] != pytest.approx(base["reward"], abs=1e-3)  # the LoRA changed the images
    assert fused["reward"] == pytest.approx(live["eval/clip"], abs=1e-4)
    assert abs(fused["both"] - live["eval/shapes-eval"]) <= 1 / 64  # at most one of 64 verdicts flips


def test_trl_side_runs_in_its_own_venv(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _harness import default_trl_venv

    py = default_trl_venv() / "bin" / "python"
    if not py.exists():
        pytest.skip(f"TRL's venv is missing ({py}); `python benchmarks/time_to_quality.py` creates it")
    data = _bench(tmp_path, "--sides", "trl", "--trl-python", str(py), "--trl-max-steps", "1", "--trl-every", "1")
    assert data["parity"]["max_abs_diff"] <= 1e-5
    (run,) = data["runs"]["trl"]
    assert [p["step"] for p in run["curve"]] == [0, 1]
    assert data["trl_settings"]["sample_num_steps"] == 50 and data["trl_settings"]["train_batch_size"] == 8
