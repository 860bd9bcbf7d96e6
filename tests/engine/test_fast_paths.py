"""The sampler's fast paths compute what the plain paths compute: LoRA folded into the weights for no-grad steps,
block-by-block checkpointing, and autocast only where the weights' dtype differs from the mixed precision dtype."""
from __future__ import annotations

import pytest
import torch

from rewardtune.engine.pipeline import FoldedLora, LoraSettings, load_diffusion
from rewardtune.engine.profiling import peak_cpu_tensor_bytes
from rewardtune.engine.sampler import decode, encode_prompts, initial_latents, model_output, sample


def _diffusion(**lora_kw):
    torch.manual_seed(0)
    d = load_diffusion("zoo:sd1", lora=LoraSettings(rank=4, **lora_kw))
    with torch.no_grad():  # gaussian init leaves B = 0, which would make folding trivially exact
        g = torch.Generator().manual_seed(1)
        for n, p in d.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=g)
    return d


@pytest.fixture(scope="module")
def diff():
    return _diffusion()


def _frozen(d):
    return {n: (p.data_ptr(), p.detach().clone()) for n, p in d.unet.named_parameters() if not p.requires_grad}


def test_folded_lora_computes_the_adapted_unet(diff):
    emb = encode_prompts(diff, ["a cat", "a dog"], 3.0)
    x = initial_latents(diff, 2, 16, torch.Generator().manual_seed(0))
    lora_a_calls = []
    hooks = [m.register_forward_hook(lambda *a: lora_a_calls.append(1))
             for n, m in diff.unet.named_modules() if n.endswith("lora_A.default")]
    before = _frozen(diff)
    folded = FoldedLora(diff)
    try:
        with torch.no_grad():
            plain = model_output(diff, x, 500, emb, 3.0)
            n_plain = len(lora_a_calls)
            folded.on()
            fast = model_output(diff, x, 500, emb, 3.0)
            folded.off()
            again = model_output(diff, x, 500, emb, 3.0)
    finally:
        folded.release()
        for h in hooks:
            h.remove()
    assert n_plain > 0 and len(lora_a_calls) == 2 * n_plain  # folded: the LoRA path did not run at all
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(again, plain)  # off() restored the very same weights
    after = _frozen(diff)
    for n, (ptr, val) in before.items():  # the frozen tensors were never written, nor replaced
        assert after[n][0] == ptr and torch.equal(after[n][1], val), n
    base_delta = (fast - model_output_without_lora(diff, x, emb)).abs().max()
    assert base_delta > 1e-3  # the LoRA matters here, so the comparison above can fail


def model_output_without_lora(d, x, emb):
    d.unet.disable_adapters()
    try:
        with torch.no_grad():
            return model_output(d, x, 500, emb, 3.0)
    finally:
        d.unet.enable_adapters()


def test_folding_is_refused_where_it_would_change_results():
    assert FoldedLora.eligible(_diffusion())
    assert not FoldedLora.eligible(_diffusion(dropout=0.1))  # dropout acts on the LoRA input only
    bf16 = load_diffusion("zoo:sd1", dtype="bfloat16", lora=LoraSettings(rank=4))
    assert not FoldedLora.eligible(bf16)  # the small update would be rounded into the bf16 weights
    amp = _diffusion()
    amp.amp_dtype = torch.bfloat16  # float32 weights under bf16 autocast: the folded weights would be rounded too
    assert not FoldedLora.eligible(amp)
    assert not FoldedLora.eligible(load_diffusion("zoo:sd1", lora=None))


def test_sampling_with_folded_prefix_matches_plain_prefix(diff, monkeypatch):
    emb = encode_prompts(diff, ["a cat"], 3.0)
    x = initial_latents(diff, 1, 16, torch.Generator().manual_seed(1))

    def run():
        for p in diff.trainable_parameters():
            p.grad = None
        res = sample(diff, x, emb, steps=6, guidance=3.0, grad_steps={2, 5}, use_checkpoint=True)
        decode(diff, res.latents).mean().backward()
        return res.latents.detach(), [p.grad.clone() for p in diff.trainable_parameters()]

    calls = []
    hook = next(m for n, m in diff.unet.named_modules() if n.endswith("lora_A.default")).register_forward_hook(
        lambda *a: calls.append(1))
    before = _frozen(diff)
    try:
        lat_fast, g_fast = run()
        n_fast = len(calls)
        monkeypatch.setattr(FoldedLora, "if_eligible", classmethod(lambda cls, d: None))
        lat_plain, g_plain = run()
        n_plain = len(calls) - n_fast
    finally:
        hook.remove()
    assert n_fast < n_plain  # the four no-grad steps skipped the LoRA path (the grad steps and recompute did not)
    torch.testing.assert_close(lat_fast, lat_plain, rtol=1e-4, atol=1e-5)
    for a, b in zip(g_fast, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
    after = _frozen(diff)
    assert all(torch.equal(after[n][1], v) for n, (_, v) in before.items())


def test_block_checkpointing_same_gradients_lower_peak(diff, monkeypatch):
    """K=1: the last differentiable UNet step and the VAE decode are checkpointed block by block. The gradients
    are those of one checkpoint around each whole call; the peak of live tensors during backward is lower."""
    emb = encode_prompts(diff, ["a cat", "a dog"], 3.0)
    x = initial_latents(diff, 2, 16, torch.Generator().manual_seed(2))

    def step():
        for p in diff.trainable_parameters():
            p.grad = None
        res = sample(diff, x, emb, steps=3, guidance=3.0, grad_steps={2}, use_checkpoint=True)
        decode(diff, res.latents).pow(2).mean().backward()

    def grads():
        return [p.grad.clone() for p in diff.trainable_parameters()]

    step()
    by_block = grads()
    peak_block = peak_cpu_tensor_bytes(step)
    monkeypatch.setattr(type(diff), "supports_block_checkpointing", lambda self, m: False)
    step()
    whole = grads()
    peak_whole = peak_cpu_tensor_bytes(step)
    for a, b in zip(by_block, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert peak_block < 0.8 * peak_whole, (peak_block, peak_whole)
    # the blocks' checkpointing is switched off again after the call: a no-checkpoint step records everything
    assert not any(getattr(m, "gradient_checkpointing", False) for m in [*diff.unet.modules(), *diff.vae.modules()])


def test_autocast_only_where_the_weights_are_not_in_the_mixed_precision_dtype():
    bf16 = load_diffusion("zoo:sd1", dtype="bfloat16", lora=LoraSettings(rank=4))
    bf16.amp_dtype = torch.bfloat16
    assert not bf16.needs_autocast(bf16.unet) and not bf16.needs_autocast(bf16.vae)
    full = load_diffusion("zoo:sd1", dtype="bfloat16", lora=None)  # full fine-tuning: float32 master weights
    full.amp_dtype = torch.bfloat16
    assert full.needs_autocast(full.unet) and not full.needs_autocast(full.vae)
    fp32 = _diffusion()
    assert not fp32.needs_autocast(fp32.unet)
    fp32.amp_dtype = torch.bfloat16
    assert fp32.needs_autocast(fp32.unet)

    seen = []
    h = bf16.unet.conv_in.register_forward_hook(
        lambda m, a, o: seen.append((torch.is_autocast_enabled("cpu"), a[0].dtype, o.dtype)))
    try:
        emb = encode_prompts(bf16, ["a cat"], 3.0)
        x = initial_latents(bf16, 1, 16, torch.Generator().manual_seed(0))
        res = sample(bf16, x, emb, steps=2, guidance=3.0, grad_steps={1})
        px = decode(bf16, res.latents)
        px.mean().backward()
    finally:
        h.remove()
    assert seen and all(s == (False, torch.bfloat16, torch.bfloat16) for s in seen)
    assert res.latents.dtype == torch.float32 and px.dtype == torch.float32  # the DDIM update stays float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in bf16.trainable_parameters())
