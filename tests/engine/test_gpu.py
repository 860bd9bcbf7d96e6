"""The engine on a CUDA device (marker `gpu`; skipped without one): resume tolerance, bf16/fp16 autocast.

Run on a lent GPU with `pytest -m gpu tests/engine/test_gpu.py`. CPU runs are pinned bitwise elsewhere; on CUDA,
kernels may pick different reduction orders, so resume equivalence is checked to a stated tolerance.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import rewardtune.api as api
from rewardtune.engine import control

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

#: max |w_resumed - w_full| allowed on CUDA, relative to the largest LoRA weight
GPU_RESUME_RTOL = 1e-4


def _spec(spec_factory, **train):
    return spec_factory({"name": "alignprop", "k_range": [1, 3], "draw": "per_batch"},
                        objective=[{"reward": "test-convnet", "normalize": "running_zscore"}],
                        sampling={"steps": 3, "eta": 1.0, "guidance_scale": 2.0},
                        train={"steps": 6, "checkpoint_every": 2, **train})


def _lora(out):
    return load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))


def test_resume_on_cuda_matches_uninterrupted_within_tolerance(tmp_path, spec_factory):
    spec = _spec(spec_factory)
    full = api.run(spec, output_dir=tmp_path / "full", progress=False)
    assert full.steps_done == 6

    def stop_at_3(ev):
        if ev.step == 3:
            control.request_stop("test interrupt")

    api.run(spec, output_dir=tmp_path / "part", progress=False, callbacks=[stop_at_3])
    resumed = api.run(spec, output_dir=tmp_path / "part", progress=False, resume=True)
    assert resumed.resumed_from == 3 and resumed.steps_done == 6
    a, b = _lora(tmp_path / "full"), _lora(tmp_path / "part")
    scale = max(v.abs().max().item() for v in a.values())
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"CUDA resume: max abs diff {worst:.3e} (largest weight {scale:.3e})")
    assert worst <= GPU_RESUME_RTOL * scale


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_fp32_lora(tmp_path, spec_factory, precision):
    spec = _spec(spec_factory, mixed_precision=precision, steps=4, checkpoint_every=100)
    res = api.run(spec, output_dir=tmp_path / precision, progress=False)
    assert res.steps_done == 4 and res.skipped_steps == 0, res
    w = _lora(tmp_path / precision)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in w.values())
    assert any(v.abs().max() > 0 for k, v in w.items() if "lora_B" in k), "LoRA B stayed at zero: nothing trained"
