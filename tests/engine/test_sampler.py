"""The DDIM sampler: matches diffusers, truncation decides where gradient flows, memory does not grow with T."""
from __future__ import annotations

import pytest
import torch

from rewardtune.engine.families.sd import ddim_step, prev_timestep
from rewardtune.engine.sampler import decode, encode_prompts, initial_latents, sample, timesteps


def _record_unet_calls(diff):
    calls = []

    def hook(module, args, kwargs, out):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        calls.append({"t": int(t.reshape(-1)[0]), "batch": int(args[0].shape[0]),
                      "grad": torch.is_grad_enabled(), "out": out.sample})
    return calls, diff.unet.register_forward_hook(hook, with_kwargs=True)


def test_ddim_step_matches_diffusers(tiny_diffusion):
    from diffusers import DDIMScheduler

    d = tiny_diffusion
    ref = DDIMScheduler.from_config(d.scheduler.config)
    ref.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in ref.timesteps[[0, 5, 9]]:
        want = ref.step(eps, t, x, eta=0.0)
        got, x0 = ddim_step(d, x, eps, int(t), prev_timestep(d, int(t), 10))
        torch.testing.assert_close(got, want.prev_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x0, want.pred_original_sample, rtol=1e-5, atol=1e-5)


def test_decode_maps_to_unit_range_exactly_once(tiny_diffusion):
    d = tiny_diffusion
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        raw = d.vae.decode(z / d.vae.config.scaling_factor).sample
        px = decode(d, z)
    torch.testing.assert_close(px, (raw / 2 + 0.5).clamp(0, 1))
    twice = ((raw / 2 + 0.5).clamp(0, 1) / 2 + 0.5).clamp(0, 1)
    assert (px - twice).abs().max() > 0.05  # a second mapping (AlignProp 2024's bug) would be visible


@pytest.mark.parametrize("k", [1, 3, 5])
def test_truncation_decides_which_steps_carry_grad(tiny_diffusion, k):
    d, steps = tiny_diffusion, 5
    emb = encode_prompts(d, ["a cat", "a dog"], 2.0)
    x = initial_latents(d, 2, 16, torch.Generator().manual_seed(0))
    calls, h = _record_unet_calls(d)
    try:
        res = sample(d, x, emb, steps=steps, guidance=2.0, grad_steps=range(steps - k, steps), use_checkpoint=False)
    finally:
        h.remove()
    assert [r.grad for r in res.records] == [i >= steps - k for i in range(steps)]
    assert [c["grad"] for c in calls] == [i >= steps - k for i in range(steps)]  # prefix truly under no_grad
    assert all(c["batch"] == 4 for c in calls)  # CFG: one batched call on [uncond; cond]
    outs = [c["out"] for c in calls]
    for o in outs:
        if o.requires_grad:
            o.retain_grad()
    decode(d, res.latents, use_checkpoint=False).mean().backward()
    flowed = [o.grad is not None and bool(o.grad.abs().sum() > 0) for o in outs]
    assert flowed == [i >= steps - k for i in range(steps)]
    lora_grads = [p.grad for p in d.trainable_parameters()]
    assert all(g is not None for g in lora_grads) and any(g.abs().sum() > 0 for g in lora_grads)
    for m in (d.vae, d.text_encoder):
        assert all(p.grad is None for p in m.parameters())


def _saved_tensor_bytes(d, steps, k, use_checkpoint):
    emb = encode_prompts(d, ["a cat"], 2.0)
    x = initial_latents(d, 1, 16, torch.Generator().manual_seed(0))
    total = {"n": 0, "bytes": 0}

    def pack(t):
        total["n"] += 1
        total["bytes"] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        res = sample(d, x, emb, steps=steps, guidance=2.0, grad_steps=range(steps - k, steps),
                     use_checkpoint=use_checkpoint)
        decode(d, res.latents, use_checkpoint=use_checkpoint).mean()
    return total


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_memory_does_not_grow_with_steps_for_k1(tiny_diffusion, use_checkpoint):
    d = tiny_diffusion
    few = _saved_tensor_bytes(d, 2, 1, use_checkpoint)
    many = _saved_tensor_bytes(d, 12, 1, use_checkpoint)
    assert few["n"] > 0
    assert many == few  # the no-grad prefix saves nothing, however long it is
    full_few = _saved_tensor_bytes(d, 2, 2, use_checkpoint)
    full_many = _saved_tensor_bytes(d, 6, 6, use_checkpoint)
    # the same count grows for K = T (so the test can fail)
    if use_checkpoint:  # the earlier differentiable steps are checkpointed whole: they keep only their inputs
        assert full_many["n"] > full_few["n"] and full_many["bytes"] > full_few["bytes"]
    else:
        assert full_many["bytes"] > 2 * full_few["bytes"]


def test_checkpointing_saves_less_than_plain_backprop(tiny_diffusion):
    plain = _saved_tensor_bytes(tiny_diffusion, 3, 3, False)
    ckpt = _saved_tensor_bytes(tiny_diffusion, 3, 3, True)
    assert ckpt["bytes"] * 5 < plain["bytes"]


def test_stop_at_returns_x0_prediction_at_that_step(tiny_diffusion):
    d = tiny_diffusion
    emb = encode_prompts(d, ["a cat"], 1.0)
    x = initial_latents(d, 1, 16, torch.Generator().manual_seed(0))
    ts = timesteps(d, 6)
    calls, h = _record_unet_calls(d)
    try:
        res = sample(d, x, emb, steps=6, guidance=1.0, grad_steps=(3,), stop_at=3, use_checkpoint=False)
    finally:
        h.remove()
    assert [c["t"] for c in calls] == [int(t) for t in ts[:4]]
    assert [c["grad"] for c in calls] == [False, False, False, True]
    assert res.x0_pred is not None and res.x0_pred.requires_grad


def test_v_prediction_ddim_step_matches_diffusers(tiny_diffusion):
    """SD 2.x (768) models predict v; the DDIM update must convert it exactly as diffusers does."""
    import dataclasses

    from diffusers import DDIMScheduler

    d = dataclasses.replace(tiny_diffusion, scheduler=DDIMScheduler.from_config(
        tiny_diffusion.scheduler.config, prediction_type="v_prediction"))
    ref = DDIMScheduler.from_config(d.scheduler.config)
    ref.set_timesteps(8)
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in ref.timesteps[[0, 4, 7]]:
        want = ref.step(v, t, x, eta=0.0)
        got, x0 = ddim_step(d, x, v, int(t), prev_timestep(d, int(t), 8))
        torch.testing.assert_close(got, want.prev_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x0, want.pred_original_sample, rtol=1e-5, atol=1e-5)


def test_eta_noise_matches_diffusers(tiny_diffusion):
    from diffusers import DDIMScheduler

    d = tiny_diffusion
    ref = DDIMScheduler.from_config(d.scheduler.config)
    ref.set_timesteps(5)
    g = torch.Generator().manual_seed(3)
    x, eps, z = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    t = ref.timesteps[2]
    want = ref.step(eps, t, x, eta=0.7, variance_noise=z).prev_sample
    got, _ = ddim_step(d, x, eps, int(t), prev_timestep(d, int(t), 5), eta=0.7, noise=z)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_latent_path_is_never_detached(tiny_diffusion):
    """Non-contiguous differentiable steps (per-step random truncation): gradient from the image reaches step 1's
    eps through step 2, whose own eps is detached, along the latent path."""
    d, steps = tiny_diffusion, 4
    emb = encode_prompts(d, ["a cat"], 1.0)
    x = initial_latents(d, 1, 16, torch.Generator().manual_seed(0))
    calls, h = _record_unet_calls(d)
    try:
        res = sample(d, x, emb, steps=steps, guidance=1.0, grad_steps={1, 3}, use_checkpoint=False)
    finally:
        h.remove()
    assert [r.grad for r in res.records] == [False, True, False, True]
    outs = [c["out"] for c in calls]
    outs[1].retain_grad()
    decode(d, res.latents, use_checkpoint=False).mean().backward()
    assert outs[1].grad is not None and float(outs[1].grad.abs().sum()) > 0
    assert not outs[2].requires_grad and not outs[0].requires_grad
