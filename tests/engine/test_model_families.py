"""Every model family through the one seam, on its tiny twin (float32, CPU):

- sampling parity: the engine's no-grad sampler reproduces the family's diffusers pipeline (latents and pixels);
- the exported LoRA loads with the pipeline's own `load_lora_weights` and changes its output as in training;
- a full fine-tune exports a denoiser the pipeline loads and samples with as the trained model did;
- every method trains on every family, only the trainable weights change, and resume stays bitwise;
- the flow-matching step, x0 prediction, re-noising and denoising target are FlowMatchEulerDiscreteScheduler's.
"""
from __future__ import annotations

import json

import pytest
import torch
from run_helpers import assert_bitwise_equal, cli, lora, stop_at

import rewardtune.api as api
from rewardtune.engine.build import build_trainer
from rewardtune.engine.families.flux import pack, unpack
from rewardtune.engine.pipeline import LoraSettings, full_save, load_diffusion, lora_save
from rewardtune.engine.sampler import encode_prompts, initial_latents, sample, schedule
from rewardtune.spec.load import load_spec
from rewardtune.zoo import materialize

# twin, guidance, family (spec name)
TWINS = {
    "sd1": ("zoo:sd1", 3.0, "sd1"),
    "sdxl": ("zoo:sdxl", 3.0, "sdxl"),
    "sd3": ("zoo:sd3", 3.0, "sd3"),
    "flux": ("zoo:flux", 3.5, "flux"),  # distilled guidance input, as FLUX.1-dev
    "flux-schnell": ("zoo:flux.schnell", 0.0, "flux"),  # no guidance input, as FLUX.1-schnell
}
PROMPTS = ["a red car", "a cat"]
RES = 16


def _pipeline(diff, ref: str):
    """The family's own diffusers pipeline from the twin's directory (DDIM families get the DDIM scheduler the
    engine samples with, built from the pipeline's scheduler config)."""
    import diffusers

    pipe = getattr(diffusers, diff.family.pipeline_class).from_pretrained(str(materialize(ref)),
                                                                         **diff.family.pipeline_kwargs())
    if not diff.family.flow:
        pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_pipeline(pipe, diff, x: torch.Tensor, steps: int, guidance: float, output_type: str) -> torch.Tensor:
    kw = {}
    if diff.family.flow:  # the twins' T5 tokenizers allow 16 tokens; the engine uses min(default, that)
        kw["max_sequence_length"] = 16
    flux = diff.family.name == "flux"
    out = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, latents=pack(x) if flux else x,
               output_type=output_type, height=RES, width=RES, **kw).images
    return unpack(out, *x.shape[-2:]) if flux and output_type == "latent" else out


def _engine_sample(diff, x: torch.Tensor, steps: int, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
    from rewardtune.engine.sampler import decode

    with torch.no_grad():
        z = sample(diff, x, encode_prompts(diff, PROMPTS, guidance), steps=steps, guidance=guidance).latents
        return z, decode(diff, z)


@pytest.mark.parametrize("which", list(TWINS))
def test_sampling_matches_the_diffusers_pipeline(which):
    ref, guidance, family = TWINS[which]
    diff = load_diffusion(ref, family=family)
    x = initial_latents(diff, len(PROMPTS), RES, torch.Generator().manual_seed(0))
    z, px = _engine_sample(diff, x, 4, guidance)
    pipe = _pipeline(diff, ref)
    want_z = _run_pipeline(pipe, diff, x, 4, guidance, "latent")
    want_px = _run_pipeline(pipe, diff, x, 4, guidance, "pt")
    torch.testing.assert_close(z, want_z, rtol=0, atol=1e-5)
    torch.testing.assert_close(px, want_px, rtol=0, atol=1e-5)
    # the comparison can fail: one step more, or the noise itself, is far outside the tolerance
    assert (_run_pipeline(pipe, diff, x, 5, guidance, "latent") - z).abs().max() > 1e-2
    assert (z - x).abs().max() > 1e-1 and px.std() > 1e-3


@pytest.mark.parametrize("which", ["sd1", "sdxl", "sd3", "flux"])
def test_saved_lora_loads_in_the_pipeline_and_changes_it_as_in_training(tmp_path, which):
    ref, guidance, family = TWINS[which]
    torch.manual_seed(0)
    diff = load_diffusion(ref, family=family, lora=LoraSettings(rank=4, alpha=8))
    with torch.no_grad():  # as after training: B != 0
        g = torch.Generator().manual_seed(1)
        for n, p in diff.denoiser.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=g)
    x = initial_latents(diff, len(PROMPTS), RES, torch.Generator().manual_seed(0))
    z, _ = _engine_sample(diff, x, 3, guidance)
    diff.denoiser.disable_adapters()
    z_base, _ = _engine_sample(diff, x, 3, guidance)
    diff.denoiser.enable_adapters()
    lora_save(diff, str(tmp_path))
    pipe = _pipeline(diff, ref)
    pipe.load_lora_weights(str(tmp_path))
    got = _run_pipeline(pipe, diff, x, 3, guidance, "latent")
    assert (z - z_base).abs().max() > 0.1  # the LoRA changes the output far beyond the tolerance below
    torch.testing.assert_close(got, z, rtol=0, atol=5e-5)  # float32; the engine folds the LoRA into the weights


@pytest.mark.parametrize("which", ["sd1", "sdxl", "sd3", "flux"])
def test_full_finetune_exports_a_denoiser_the_pipeline_samples_with(tmp_path, spec_factory, which):
    ref, guidance, family = TWINS[which]
    spec = spec_factory({"name": "draft_k", "k": 1}, model={"pretrained": ref, "family": family,
                                                           "trainable": {"type": "full"}},
                        sampling={"guidance_scale": guidance}, train={"steps": 1, "lr": 1e-3})
    tr = build_trainer(load_spec(spec), output_dir=tmp_path / "run", progress=False)
    r = tr.run()
    name = tr.diff.family.denoiser_name
    assert r.weights_path == tmp_path / "run" / name and (r.weights_path / "config.json").exists()
    x = initial_latents(tr.diff, len(PROMPTS), RES, torch.Generator().manual_seed(0))
    z, _ = _engine_sample(tr.diff, x, 3, guidance)
    pipe = _pipeline(tr.diff, ref)
    base = _run_pipeline(pipe, tr.diff, x, 3, guidance, "latent")
    model_cls = type(getattr(pipe, name))
    setattr(pipe, name, model_cls.from_pretrained(str(r.weights_path)))
    got = _run_pipeline(pipe, tr.diff, x, 3, guidance, "latent")
    assert (base - z).abs().max() > 1e-4  # the step changed the model
    torch.testing.assert_close(got, z, rtol=0, atol=1e-5)


def test_full_save_writes_where_the_family_pipeline_looks(tmp_path):
    diff = load_diffusion("zoo:flux", lora=None)
    assert full_save(diff, str(tmp_path)) == str(tmp_path / "transformer")


GRAD_METHODS = {
    "alignprop": {"name": "alignprop", "k_range": [1, 2], "draw": "per_step"},
    # the random twins' reward gradients are ~1e-4 (grad norm), so a small KL weight keeps the reward in charge
    "draft_k+kl": {"name": "draft_k", "k": 1, "kl_coeff": 1e-5},
    "draft_lv": {"name": "draft_lv", "n": 2},
    "refl": {"name": "refl", "stop_range": [1, 2], "loss": "neg"},
}
RANKED = {"name": "ranked", "samples_per_prompt": 2, "top_m": 1, "prompts_per_round": 2, "steps_per_round": 2}


def _family_spec(spec_factory, which: str, method: dict, **sections):
    ref, guidance, family = TWINS[which]
    sampling = {"guidance_scale": guidance, **sections.pop("sampling", {})}
    return spec_factory(method, model={"pretrained": ref, "family": family,
                                       "trainable": {"type": "lora", "rank": 4, "alpha": 16}},
                        sampling=sampling, **sections)


@pytest.mark.parametrize("method", list(GRAD_METHODS))
@pytest.mark.parametrize("which", ["sdxl", "sd3", "flux"])
def test_gradient_methods_raise_the_reward_on_every_family(tmp_path, spec_factory, which, method):
    seen = []
    r = api.run(_family_spec(spec_factory, which, GRAD_METHODS[method]), output_dir=tmp_path, progress=False,
                callbacks=[seen.append])
    assert r.steps_done == 4 and r.skipped_steps == 0
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").exists()
    # eval is deterministic (fixed noise and prompts): the rise is the training's
    assert r.eval_after["test-brightness"] > r.eval_before["test-brightness"] + 2e-4, (r.eval_before, r.eval_after)
    if "kl" in method:  # DRaFT+ in the family's output space: zero while the LoRA is still the identity
        assert seen[0].metrics["kl"] == 0.0 and seen[-1].metrics["kl"] > 0


RANKED_VARIANTS = {"weighted": RANKED, "weighted+kl": {**RANKED, "kl_coeff": 1e-3},
                   "dpo": {**RANKED, "loss": "dpo"}}


@pytest.mark.parametrize("variant", list(RANKED_VARIANTS))
@pytest.mark.parametrize("which", ["sdxl", "sd3", "flux"])
def test_ranked_trains_with_the_family_denoising_loss(tmp_path, spec_factory, which, variant):
    seen = []
    spec = _family_spec(spec_factory, which, RANKED_VARIANTS[variant],
                        objective=[{"reward": "test-redness", "combine": "assemble_ranked"}])
    r = api.run(spec, output_dir=tmp_path, progress=False, callbacks=[seen.append])
    assert r.steps_done == 4 and r.skipped_steps == 0
    losses = [ev.metrics["denoise_loss"] for ev in seen]
    assert all(0 < v < 100 for v in losses), losses
    assert _trained(lora(tmp_path))
    # the base's output on the same inputs, FLUX's guidance input included: the model is its base at the start
    if "kl" in variant:
        assert seen[0].metrics["kl"] == 0.0 and seen[-1].metrics["kl"] > 0, [ev.metrics["kl"] for ev in seen]
    if variant == "dpo":
        assert seen[0].metrics["dpo_margin"] == 0.0 and seen[-1].metrics["dpo_margin"] != 0, seen[-1].metrics


def _trained(weights: dict[str, torch.Tensor]) -> bool:
    """Some LoRA up-projection moved from its zero init (diffusers' key names: lora_B, or lora.up for UNets)."""
    return any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k or "lora.up" in k)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("which", ["sdxl", "sd3", "flux"])
def test_only_the_lora_changes(tmp_path, spec_factory, which):
    spec = load_spec(_family_spec(spec_factory, which, {"name": "draft_k", "k": 2}, train={"steps": 2}))
    tr = build_trainer(spec, output_dir=tmp_path, progress=False)
    d = tr.diff
    encoders = d.text_encoder_modules()
    assert len(encoders) == len(d.family.text_encoders)  # every text encoder loaded (SD3: CLIP-L, CLIP-G, T5)
    frozen = [_snapshot(m) for m in (d.vae, *encoders)]
    base = {k: v for k, v in _snapshot(d.denoiser).items() if "lora_" not in k}
    lora = {k: v for k, v in _snapshot(d.denoiser).items() if "lora_" in k}
    tr.run()
    after = _snapshot(d.denoiser)
    assert all(torch.equal(after[k], v) for k, v in base.items())
    assert any(not torch.equal(after[k], v) for k, v in lora.items())
    for snap, m in zip(frozen, (d.vae, *encoders), strict=True):
        assert all(torch.equal(m.state_dict()[k], v) for k, v in snap.items())


@pytest.mark.parametrize("which", ["sdxl", "sd3", "flux"])
def test_resume_after_interrupt_is_bitwise_equal(tmp_path, spec_factory, which):
    spec = _family_spec(spec_factory, which, {"name": "alignprop", "k_range": [1, 3], "draw": "per_batch"},
                        objective=[{"reward": "test-convnet", "normalize": "running_zscore"}],
                        sampling={"steps": 3},
                        train={"steps": 4, "grad_accum": 2, "lr_schedule": "cosine", "warmup_steps": 1,
                               "checkpoint_every": 2})
    api.run(spec, output_dir=tmp_path / "full", progress=False)

    part = api.run(spec, output_dir=tmp_path / "part", progress=False, callbacks=[stop_at(2)])
    assert part.stopped_early and part.steps_done == 2
    resumed = api.run(spec, output_dir=tmp_path / "part", progress=False, resume=True)
    assert resumed.resumed_from == 2 and resumed.steps_done == 4
    assert_bitwise_equal(lora(tmp_path / "full"), lora(tmp_path / "part"))
    assert _trained(lora(tmp_path / "full"))


# ------------------------------------------------------------------------------------------------ flow matching
@pytest.fixture(scope="module")
def flux():
    return load_diffusion("zoo:flux", lora=None)


@pytest.fixture(scope="module")
def sd3():
    return load_diffusion("zoo:sd3", lora=None)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_flow_step_and_x0_match_the_scheduler(request, name):
    from diffusers import FlowMatchEulerDiscreteScheduler

    diff = request.getfixturevalue(name)
    steps, hw = 6, (8, 8)
    sched = schedule(diff, steps, hw)
    ref = FlowMatchEulerDiscreteScheduler.from_config(diff.scheduler.config)
    kw = diff.family.schedule_kwargs(diff, steps, hw)
    if name == "flux":  # FluxPipeline passes its own sigmas, shifted by mu
        import numpy as np

        kw["sigmas"] = np.linspace(1.0, 1 / steps, steps)
    ref.set_timesteps(steps, **kw)
    assert torch.equal(sched.timesteps, ref.timesteps)
    g = torch.Generator().manual_seed(0)
    x, v, eps = (torch.randn(2, 16, *hw, generator=g) for _ in range(3))
    for i in (0, 3, steps - 1):
        want = ref.step(v, ref.timesteps[i], x, return_dict=False)[0]
        ref._step_index = None  # look the index up from the timestep again
        got, x0 = diff.family.step(diff, sched, i, x, v)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        sigma = float(ref.sigmas[i])
        torch.testing.assert_close(x0, x - sigma * v)  # x0 = x_t - sigma v
        # re-noising moves x0 back along the flow path: what the scheduler's forward process gives at step i
        ref.set_begin_index(i)
        torch.testing.assert_close(diff.family.renoise(diff, sched, i, x0, eps),
                                   ref.scale_noise(x0, ref.timesteps[i:i + 1], eps), rtol=0, atol=1e-6)
        ref._begin_index = None


def test_flow_denoising_pair_regresses_the_velocity(sd3):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 16, 8, 8, generator=g), torch.randn(3, 16, 8, 8, generator=g)
    idx = torch.tensor([0, 500, 999])
    x_t, t, target = sd3.family.training_pair(sd3, x0, eps, idx)
    sigma = (t / 1000).view(-1, 1, 1, 1)
    torch.testing.assert_close(target, eps - x0)
    torch.testing.assert_close(x_t, (1 - sigma) * x0 + sigma * eps)
    # the training sigmas are the scheduler's own (SD3's shift 3.0 pushes them toward noise)
    assert float(t[1]) > 500 and float(t[0]) == pytest.approx(1000.0)
    # a model predicting exactly eps - x0 recovers x0 with one Euler step to sigma 0
    torch.testing.assert_close(x_t - sigma * target, x0, rtol=1e-5, atol=1e-5)


def test_refl_decodes_the_flow_x0_prediction_at_its_stop_step(tmp_path, spec_factory):
    spec = _family_spec(spec_factory, "flux", {"name": "refl", "stop_range": [2, 2], "loss": "neg"},
                        sampling={"steps": 4}, train={"gradient_checkpointing": False})
    tr = build_trainer(load_spec(spec), output_dir=tmp_path, progress=False)
    outs = []
    h = tr.diff.denoiser.register_forward_hook(lambda m, a, k, o: outs.append((k["hidden_states"], o[0])),
                                               with_kwargs=True)
    try:
        out = tr.method.loss(tr.ctx, tr.make_batch(0, 0))
    finally:
        h.remove()
    assert len(outs) == 3 and out.metrics["stop_step"] == 2.0  # steps 0, 1 without grad, the stop step with
    x_in, v = outs[-1]
    sched = schedule(tr.diff, 4, (8, 8))
    x0 = unpack(x_in - float(sched.sigmas[2]) * v, 8, 8)
    from rewardtune.engine.sampler import decode

    with torch.no_grad():
        torch.testing.assert_close(out.pixels, decode(tr.diff, x0), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ specs


def test_a_family_that_does_not_match_the_pipeline_is_bad_input(tmp_path, spec_factory, capsys):
    spec = spec_factory({"name": "draft_k", "k": 1}, model={"pretrained": "zoo:sd3", "family": "flux"})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert cli(["run", str(path), "--no-progress", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "StableDiffusion3Pipeline" in err and "set model.family: sd3" in err and "Traceback" not in err


@pytest.mark.parametrize("change, where", [
    ({"sampling": {"eta": 0.5}}, "sampling.eta"),
    ({"sampling": {"resolution": 24}}, "sampling.resolution"),
    ({"sampling": {"scheduler": "ddim"}}, "sampling.scheduler"),
])
def test_flow_families_refuse_ddim_only_settings(spec_factory, change, where):
    from rewardtune.errors import SpecError

    spec = spec_factory({"name": "draft_k", "k": 1}, model={"pretrained": "zoo:flux", "family": "flux"})
    for k, v in change.items():
        spec[k] = {**spec[k], **v}
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert where in str(e.value)


@pytest.mark.parametrize("family, twin", [("sdxl", "zoo:sdxl"), ("sd3", "zoo:sd3"), ("flux", "zoo:flux")])
def test_tiny_runs_the_twin_of_the_spec_family(tmp_path, spec_factory, family, twin):
    spec = spec_factory({"name": "draft_k", "k": 1}, model={"pretrained": "some-org/some-model", "family": family,
                                                           "dtype": "bfloat16"},
                        sampling={"resolution": 1024}, train={"steps": 1, "mixed_precision": "bf16"})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert cli(["run", str(path), "--tiny", "--no-progress", "-o", str(tmp_path / "out")]) == 0
    saved = (tmp_path / "out" / "spec.yaml").read_text()
    assert f"pretrained: {twin}" in saved and f"family: {family}" in saved


def test_sd3_saved_without_t5_loads_and_trains(tmp_path, spec_factory):
    """SD3.5 is often run without T5 (`text_encoder_3=None`): a directory saved that way loads (its null components
    are passed as None, as diffusers asks), its prompts are encoded as StableDiffusion3Pipeline encodes them (zeros
    in place of T5), and it trains."""
    from diffusers import StableDiffusion3Pipeline

    from rewardtune.zoo import materialize

    pipe = StableDiffusion3Pipeline.from_pretrained(materialize("zoo:sd3"), text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(tmp_path / "no-t5")
    diff = load_diffusion(str(tmp_path / "no-t5"), lora=None)
    cond = diff.family.encode_text(diff, ["a red circle"])
    emb, _, pooled, _ = pipe.encode_prompt("a red circle", "a red circle", "a red circle",
                                           do_classifier_free_guidance=False)  # the pipeline's own T5 length
    torch.testing.assert_close(cond.emb, emb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cond.pooled, pooled, rtol=1e-5, atol=1e-5)
    spec = spec_factory({"name": "draft_k", "k": 1}, model={"pretrained": str(tmp_path / "no-t5"), "family": "sd3"},
                        train={"steps": 1})
    assert api.run(spec, output_dir=tmp_path / "run", progress=False).steps_done == 1
