"""Memory for large models: the prompt cache (text encoders leave, or are never loaded), and VAE slicing and tiling
for the decode under gradient."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import rewardtune.engine.build as build
from rewardtune.engine.build import build_trainer
from rewardtune.engine.pipeline import load_diffusion
from rewardtune.engine.profiling import peak_cpu_tensor_bytes
from rewardtune.engine.sampler import decode, encode_prompts
from rewardtune.spec.load import load_spec


def _spec(spec_factory, **model):
    return load_spec(spec_factory({"name": "draft_k", "k": 1}, model={"pretrained": "zoo:flux", "family": "flux",
                                                                      **model},
                                  sampling={"guidance_scale": 3.5}, train={"steps": 2}))


@pytest.fixture
def loads(monkeypatch):
    """The text_encoders= argument of every load_diffusion call the builder makes."""
    seen = []

    def spy(*a, **kw):
        seen.append(kw.get("text_encoders", True))
        return load_diffusion(*a, **kw)
    monkeypatch.setattr(build, "load_diffusion", spy)
    return seen


def test_prompt_cache_encodes_once_then_never_loads_the_text_encoders(tmp_path, spec_factory, monkeypatch, loads):
    monkeypatch.setenv("REWARDTUNE_CACHE", str(tmp_path / "cache"))
    spec = _spec(spec_factory, cache_prompts=True)
    first = build_trainer(spec, output_dir=tmp_path / "a", progress=False)
    assert loads == [True]  # nothing cached yet: the encoders load, encode every prompt, and leave
    assert first.diff.text_encoder_modules() == []
    assert (tmp_path / "cache" / "prompts").is_dir() and len(list((tmp_path / "cache" / "prompts").iterdir())) == 1
    want = {*spec.prompts.train.inline, *spec.prompts.eval.inline[:spec.logging.eval_prompts], ""}
    assert set(first.diff.prompt_cache) == want
    first.run()
    second = build_trainer(spec, output_dir=tmp_path / "b", progress=False)
    assert loads == [True, False]  # everything cached: the text encoders are not even loaded
    assert second.diff.text_encoder_modules() == []
    second.run()
    a = load_file(str(tmp_path / "a" / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "lora" / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same training from the file as from the fresh encoding


def test_cached_embeddings_are_the_encoders_own(tmp_path, spec_factory, monkeypatch):
    monkeypatch.setenv("REWARDTUNE_CACHE", str(tmp_path / "cache"))
    for family, twin in (("sdxl", "zoo:sdxl"), ("sd3", "zoo:sd3"), ("flux", "zoo:flux")):
        spec = load_spec(spec_factory({"name": "draft_k", "k": 1},
                                      model={"pretrained": twin, "family": family, "cache_prompts": True},
                                      sampling={"guidance_scale": 3.0}))
        cached = build_trainer(spec, output_dir=tmp_path / family, progress=False).diff
        fresh = load_diffusion(twin, family=family)
        got = encode_prompts(cached, ["a cat", "a dog"], 3.0)
        want = encode_prompts(fresh, ["a cat", "a dog"], 3.0)
        torch.testing.assert_close(got.emb, want.emb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.pooled, want.pooled, rtol=1e-5, atol=1e-6)
        if family == "sdxl":  # its unconditional branch stays all zeros (force_zeros_for_empty_prompt)
            assert not got.emb[:2].any() and got.emb[2:].abs().sum() > 0
        with pytest.raises(KeyError, match="not in the prompt cache"):
            encode_prompts(cached, ["a prompt the run never named"], 3.0)


def test_a_prompt_added_later_is_encoded_and_cached(tmp_path, spec_factory, monkeypatch, loads):
    monkeypatch.setenv("REWARDTUNE_CACHE", str(tmp_path / "cache"))
    build_trainer(_spec(spec_factory, cache_prompts=True), output_dir=tmp_path / "a", progress=False)
    more = spec_factory({"name": "draft_k", "k": 1}, model={"pretrained": "zoo:flux", "family": "flux",
                                                          "cache_prompts": True},
                        sampling={"guidance_scale": 3.5}, prompts={"train": ["a green tree"], "eval": ["a cat"]})
    tr = build_trainer(load_spec(more), output_dir=tmp_path / "b", progress=False)
    assert loads == [True, True] and "a green tree" in tr.diff.prompt_cache
    build_trainer(load_spec(more), output_dir=tmp_path / "c", progress=False)
    assert loads[-1] is False


def _decode_grad(diff, z):
    z = z.clone().requires_grad_(True)
    px = decode(diff, z)
    (px * torch.linspace(0, 1, px.numel()).view_as(px)).sum().backward()
    return px.detach(), z.grad


def test_vae_slicing_gives_the_same_decode_and_gradient_with_less_memory():
    plain = load_diffusion("zoo:sd3", lora=None)
    sliced = load_diffusion("zoo:sd3", lora=None, vae_slicing=True)
    z = torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    px_a, g_a = _decode_grad(plain, z)
    px_b, g_b = _decode_grad(sliced, z)
    torch.testing.assert_close(px_b, px_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_b, g_a, rtol=1e-4, atol=1e-6)
    peak_plain = peak_cpu_tensor_bytes(lambda: _decode_grad(plain, z))
    peak_sliced = peak_cpu_tensor_bytes(lambda: _decode_grad(sliced, z))
    assert peak_sliced < 0.75 * peak_plain, (peak_sliced, peak_plain)  # measured 0.64 (batch 4, checkpointed)


def test_vae_tiling_decodes_large_images_under_gradient_with_less_memory():
    plain = load_diffusion("zoo:flux", lora=None)
    tiled = load_diffusion("zoo:flux", lora=None, vae_tiling=True)
    z = torch.randn(1, 16, 48, 48, generator=torch.Generator().manual_seed(0))  # 96 px: 6x6 of the twin's 16 px tiles
    px_a, _ = _decode_grad(plain, z)
    px_b, g_b = _decode_grad(tiled, z)
    assert px_b.shape == px_a.shape and torch.isfinite(g_b).all() and g_b.abs().sum() > 0
    assert (px_b - px_a).abs().mean() < 0.1  # tiles are blended at their seams: close, not equal
    peak_plain = peak_cpu_tensor_bytes(lambda: _decode_grad(plain, z))
    peak_tiled = peak_cpu_tensor_bytes(lambda: _decode_grad(tiled, z))
    assert peak_tiled < 0.75 * peak_plain, (peak_tiled, peak_plain)  # measured 0.62 (96 px, checkpointed)
