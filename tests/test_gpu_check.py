"""benchmarks/gpu_check.py, the one command a lent GPU runs: its --dry-run goes through the same stages on a CPU
(tiny models), so the script is known to work before any device time is spent on it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def test_dry_run_runs_every_stage_and_writes_the_results(tmp_path):
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out-dir", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900, env=_env())
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and report["device"] == "cpu"
    tests = report["tests"]
    assert tests["counts"].get("failed", 0) == 0 and sum(tests["counts"].values()) >= 20  # collected, skipped here
    assert sorted(tests["bitwise_resume"]) == [
        "test_engine_gpu::test_deterministic_resume_on_cuda_is_bitwise_equal[fused-adam-read-every-3]",
        "test_engine_gpu::test_deterministic_resume_on_cuda_is_bitwise_equal[read-every-step]"]
    scale = report["gpu_scale"]
    assert scale["rc"] == 0
    rows = {r["label"]: r for r in scale["rows"]}
    assert rows["rewardtune draft_k K=1"]["n"] == 1 and rows["rewardtune draft_k K=1"]["sps"]["median"] > 0
    levers = scale["levers"]
    assert list(levers) == ["base", "nosync", "cl", "flash", "nosync+cl+b4", "compile"]
    assert all(v["ok"] and v["step_s"] > 0 for v in levers.values()), levers
    md = (tmp_path / "gpu_scale.md").read_text()
    assert "## Levers" in md and "| nosync | 2 |" in md and "| nosync+cl+b4 | 4 |" in md and "CPU, REDUCED SIZE" in md
    assert "bitwise resume under train.deterministic" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_asks_for_a_gpu_or_the_dry_run(tmp_path):
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out-dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=_env())
    assert p.returncode == 2 and "--dry-run" in p.stderr and not (tmp_path / "gpu_check.json").exists()


def test_the_families_stage_runs_every_family_in_its_dry_size(tmp_path):
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--stages", "families", "--out-dir",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900, env=_env())
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "tests" not in report and "gpu_scale" not in report
    cells = report["gpu_families"]["cells"]
    assert list(cells) == ["sdxl", "sd3", "flux"]
    assert all(c["ok"] and c["step_s"][0] > 0 and c["flops_per_sample"] > 0 for c in cells.values()), cells
    md = (tmp_path / "gpu_families.md").read_text()
    assert "DRY RUN" in md and all(n in md for n in ("| SDXL base 1.0 |", "| SD3.5 Medium |", "| FLUX.1-dev |"))


def test_the_family_cells_are_the_published_architectures(monkeypatch):
    """The configs written out in gpu_families.py, built on the meta device: the published parameter counts (a
    wrong width, depth or head count would change them)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_families as g

    def n(m) -> int:
        return sum(p.numel() for p in m.parameters())

    with torch.device("meta"):
        assert n(diffusers.UNet2DConditionModel(**g.FULL["sdxl"]["unet"])) == 2_567_463_684  # SDXL base UNet
        assert round(n(diffusers.SD3Transformer2DModel(**g.FULL["sd3"]["transformer"])) / 1e9, 2) == 2.24  # 3.5 M
        assert n(diffusers.FluxTransformer2DModel(**g.FULL["flux"]["transformer"])) == 11_901_408_320  # FLUX.1-dev
        assert n(CLIPTextModel(CLIPTextConfig(**g.CLIP_L))) == 123_060_480  # CLIP ViT-L/14 text
        assert n(CLIPTextModelWithProjection(CLIPTextConfig(**g.CLIP_G))) == 694_659_840  # OpenCLIP bigG text
        assert n(T5EncoderModel(T5Config(**g.T5_XXL))) == 4_762_310_656  # T5 v1.1 XXL encoder
        assert n(diffusers.AutoencoderKL(**g.FULL["sdxl"]["vae"])) == 83_653_863
