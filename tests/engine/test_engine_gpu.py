"""The engine on a CUDA device (marker `gpu`; skipped without one): resume equivalence, bf16/fp16 autocast.

Run on a lent GPU with `pytest -m gpu tests/engine/test_engine_gpu.py`. Measured on an H100 with this test's spec: with
`train.deterministic: true`, interrupted + resumed equals uninterrupted bitwise; without it, two uninterrupted runs
already differ by up to 0.17 (weights of size ~1: Adam turns kernel-order noise in near-zero gradients into
full-size steps), and a resumed run differs from an uninterrupted one by no more than that (0.087).
"""
from __future__ import annotations

import pytest
import torch
from run_helpers import assert_bitwise_equal, lora, stop_at

import rewardtune.api as api

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

def _spec(spec_factory, **train):
    return spec_factory({"name": "alignprop", "k_range": [1, 3], "draw": "per_batch"},
                        objective=[{"reward": "test-convnet", "normalize": "running_zscore"}],
                        sampling={"steps": 3, "eta": 1.0, "guidance_scale": 2.0},
                        train={"steps": 6, "checkpoint_every": 2, **train})


@pytest.mark.parametrize("fused", [False, True], ids=["read-every-step", "fused-adam-read-every-3"])
def test_deterministic_resume_on_cuda_is_bitwise_equal(tmp_path, spec_factory, fused):
    spec = _spec(spec_factory, deterministic=True, fused_adam=fused)
    if fused:
        spec["logging"] = {**spec["logging"], "every": 3}
    full = api.run(spec, output_dir=tmp_path / "full", progress=False)
    assert full.steps_done == 6

    api.run(spec, output_dir=tmp_path / "part", progress=False, callbacks=[stop_at(3)])
    resumed = api.run(spec, output_dir=tmp_path / "part", progress=False, resume=True)
    assert resumed.resumed_from == 3 and resumed.steps_done == 6
    assert_bitwise_equal(lora(tmp_path / "full"), lora(tmp_path / "part"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_fp32_lora(tmp_path, spec_factory, precision):
    spec = _spec(spec_factory, mixed_precision=precision, steps=4, checkpoint_every=100)
    res = api.run(spec, output_dir=tmp_path / precision, progress=False)
    assert res.steps_done == 4 and res.skipped_steps == 0, res
    w = lora(tmp_path / precision)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in w.values())
    up = [v for k, v in w.items() if ".lora.up." in k or ".lora_B." in k]  # B starts at zero
    assert up and any(v.abs().max() > 0 for v in up), "LoRA B stayed at zero: nothing trained"


@pytest.mark.parametrize("dtype,precision", [("bfloat16", "bf16"), ("float16", "fp16")])
def test_half_precision_weights_train_without_autocast(tmp_path, spec_factory, dtype, precision):
    """The usual GPU setup (frozen weights in bf16/fp16, LoRA in float32): the UNet and VAE run plainly in the
    weights' dtype, not under autocast (which would keep float32 norm activations), and the run still trains."""
    seen = []

    def probe(module, args, out):
        seen.append((torch.is_autocast_enabled("cuda"), out.dtype))

    spec = spec_factory({"name": "draft_k", "k": 1}, model={"dtype": dtype},
                        objective=[{"reward": "test-convnet"}], sampling={"steps": 3, "guidance_scale": 2.0},
                        train={"steps": 3, "mixed_precision": precision, "checkpoint_every": 100})
    from rewardtune.engine.build import build_trainer
    from rewardtune.spec.load import load_spec

    tr = build_trainer(load_spec(spec), output_dir=tmp_path, progress=False)
    assert not tr.diff.needs_autocast(tr.diff.unet) and not tr.diff.needs_autocast(tr.diff.vae)
    h = tr.diff.unet.conv_in.register_forward_hook(probe)
    try:
        res = tr.run()
    finally:
        h.remove()
    half = torch.bfloat16 if dtype == "bfloat16" else torch.float16
    assert seen and all(s == (False, half) for s in seen)
    assert res.steps_done == 3 and res.skipped_steps == 0, res
    w = lora(tmp_path)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in w.values())


def test_fused_adam_steps_do_not_wait_for_the_device(tmp_path, spec_factory):
    """With train.fused_adam nothing in a training step waits for the GPU (CUDA's sync debug mode raises on any
    synchronizing call); the numbers of both steps then come in one read."""
    from rewardtune.engine.build import build_trainer
    from rewardtune.spec.load import load_spec

    spec = spec_factory({"name": "alignprop", "k_range": [1, 3], "draw": "per_step"},
                        objective=[{"reward": "test-convnet"}],
                        sampling={"steps": 3, "eta": 1.0, "guidance_scale": 2.0},
                        train={"steps": 6, "grad_accum": 2, "fused_adam": True})
    tr = build_trainer(load_spec(spec), output_dir=tmp_path, progress=False)
    assert tr.defer_reads
    tr.train_step()  # the first step allocates optimizer state and device copies of the schedule
    tr.step += 1
    torch.cuda.synchronize()
    pending = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            pending.append(tr.step_async())
            tr.step += 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    read = tr.read_steps(pending)
    assert [m["skipped"] for m, _, _ in read] == [0.0, 0.0] and all(m["loss"] == m["loss"] for m, _, _ in read)


def test_fp16_skipped_step_leaves_the_loss_scaler_usable(tmp_path, spec_factory, nan_on_steps):
    """fp16 on CUDA runs with loss scaling: a NaN reward on step 2 skips that step (the scaler closes the unscale
    it opened), and the steps after it still train."""
    nan_on_steps.arm({2})
    spec = spec_factory({"name": "draft_k", "k": 1}, objective=[{"reward": "test-nan-on-steps"}],
                        train={"steps": 4, "mixed_precision": "fp16", "checkpoint_every": 100})
    res = api.run(spec, output_dir=tmp_path, progress=False)
    assert res.steps_done == 4 and res.skipped_steps == 1, res
    w = lora(tmp_path)
    up = [v for k, v in w.items() if ".lora.up." in k or ".lora_B." in k]
    assert up and all(torch.isfinite(v).all() for v in w.values()) and any(v.abs().max() > 0 for v in up)
