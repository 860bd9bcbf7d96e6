"""The engine on a CUDA device (marker `gpu`; skipped without one): resume equivalence, bf16/fp16 autocast.

Run on a lent GPU with `pytest -m gpu tests/engine/test_engine_gpu.py`. Measured on an H100 with this test's spec: with
`train.deterministic: true`, interrupted + resumed equals uninterrupted bitwise; without it, two uninterrupted runs
already differ by up to 0.17 (weights of size ~1: Adam turns kernel-order noise in near-zero gradients into
full-size steps), and a resumed run differs from an uninterrupted one by no more than that (0.087).
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import rewardtune.api as api
from rewardtune.engine import control

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

def _spec(spec_factory, **train):
    return spec_factory({"name": "alignprop", "k_range": [1, 3], "draw": "per_batch"},
                        objective=[{"reward": "test-convnet", "normalize": "running_zscore"}],
                        sampling={"steps": 3, "eta": 1.0, "guidance_scale": 2.0},
                        train={"steps": 6, "checkpoint_every": 2, **train})


def _lora(out):
    return load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))


def test_deterministic_resume_on_cuda_is_bitwise_equal(tmp_path, spec_factory):
    spec = _spec(spec_factory, deterministic=True)
    full = api.run(spec, output_dir=tmp_path / "full", progress=False)
    assert full.steps_done == 6

    def stop_at_3(ev):
        if ev.step == 3:
            control.request_stop("test interrupt")

    api.run(spec, output_dir=tmp_path / "part", progress=False, callbacks=[stop_at_3])
    resumed = api.run(spec, output_dir=tmp_path / "part", progress=False, resume=True)
    assert resumed.resumed_from == 3 and resumed.steps_done == 6
    a, b = _lora(tmp_path / "full"), _lora(tmp_path / "part")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_fp32_lora(tmp_path, spec_factory, precision):
    spec = _spec(spec_factory, mixed_precision=precision, steps=4, checkpoint_every=100)
    res = api.run(spec, output_dir=tmp_path / precision, progress=False)
    assert res.steps_done == 4 and res.skipped_steps == 0, res
    w = _lora(tmp_path / precision)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in w.values())
    up = [v for k, v in w.items() if ".lora.up." in k or ".lora_B." in k]  # B starts at zero
    assert up and any(v.abs().max() > 0 for v in up), "LoRA B stayed at zero: nothing trained"
