"""Each method raises its reward on fixed noise; only the trainable parameters change; where gradient flows."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import rewardtune.api as api
from rewardtune.engine.build import build_trainer
from rewardtune.registry import register_reward
from rewardtune.spec.load import load_spec

METHODS = {
    "alignprop-fixed": {"name": "alignprop", "k": 2},
    "alignprop-random-batch": {"name": "alignprop", "k_range": [1, 3], "draw": "per_batch"},
    "alignprop-random-step": {"name": "alignprop", "k_range": [1, 3], "draw": "per_step"},
    "draft_k": {"name": "draft_k", "k": 1},
    "draft_lv": {"name": "draft_lv", "n": 2},
    "refl": {"name": "refl", "stop_range": [1, 2], "loss": "neg"},
    "refl-relu": {"name": "refl", "stop_range": [1, 2]},  # ReFL's default loss, scale * relu(margin - r)
    "draft_k+kl": {"name": "draft_k", "k": 1, "kl_coeff": 1e-3},
}


#: per-step loss and objective, and the eval reward before/after, recorded from this code on the tiny twin (CPU, one
#: thread; identical in two runs). A change to a method's maths moves them; the shapes-world learning tests
#: (tests/world/test_learning.py) carry the proof that each method learns.
TRACES = {
    "alignprop-fixed": {"loss": [-0.56575465, -0.56452799, -0.56586802, -0.56691611],
                       "objective": [0.56575465, 0.56452799, 0.56586802, 0.56691611],
                       "before": 0.56326312, "after": 0.56420088},
    "alignprop-random-batch": {"loss": [-0.56475401, -0.56482476, -0.56494796, -0.56488454],
                              "objective": [0.56475401, 0.56482476, 0.56494796, 0.56488454],
                              "before": 0.56326312, "after": 0.5651857},
    "alignprop-random-step": {"loss": [-0.56623447, -0.56448102, -0.5645175, -0.56564128],
                             "objective": [0.56623447, 0.56448102, 0.5645175, 0.56564128],
                             "before": 0.56326312, "after": 0.56368005},
    "draft_k": {"loss": [-0.56575465, -0.56438172, -0.56557482, -0.56688249],
               "objective": [0.56575465, 0.56438172, 0.56557482, 0.56688249],
               "before": 0.56326312, "after": 0.56546637},
    "draft_lv": {"loss": [-1.1315022, -1.1289194, -1.1311945, -1.134317],
                "objective": [0.56575108, 0.56445968, 0.56559724, 0.56715852],
                "before": 0.56326312, "after": 0.56552377},
    "refl": {"loss": [-0.56475747, -0.56451672, -0.56479841, -0.56598723],
            "objective": [0.56475747, 0.56451672, 0.56479841, 0.56598723],
            "before": 0.56326312, "after": 0.5651665},
    "refl-relu": {"loss": [0.0014352425, 0.0014360461, 0.0014358801, 0.0014352468],
                 "objective": [0.56475747, 0.56395394, 0.56411988, 0.56475335],
                 "before": 0.56326312, "after": 0.56342354},
    "draft_k+kl": {"loss": [-0.56575465, -0.56437987, -0.56475872, -0.56642026],
                  "objective": [0.56575465, 0.56438172, 0.56476045, 0.56642181],
                  "before": 0.56326312, "after": 0.56376627},
}


@pytest.mark.parametrize("which", list(METHODS))
def test_method_raises_reward_on_fixed_noise_along_its_pinned_trace(tmp_path, spec_factory, which):
    seen = []
    r = api.run(spec_factory(METHODS[which]), output_dir=tmp_path, progress=False, callbacks=[seen.append])
    assert r.steps_done == 4 and r.skipped_steps == 0
    # eval is deterministic (fixed noise, fixed prompts), so any rise is the training's doing
    assert r.eval_after["test-brightness"] > r.eval_before["test-brightness"], (r.eval_before, r.eval_after)
    got = {"loss": [ev.metrics["loss"] for ev in seen], "objective": [ev.metrics["objective"] for ev in seen],
           "before": r.eval_before["test-brightness"], "after": r.eval_after["test-brightness"]}
    torch.testing.assert_close(got, TRACES[which], rtol=1e-4, atol=1e-6, check_dtype=False)


def test_refl_relu_loss_stops_at_its_margin(tmp_path, spec_factory):
    """ReFL's default loss, scale * relu(margin - r): rewards above the margin give no gradient. Brightness is in
    [0, 1], so with margin 0 nothing trains (the LoRA's B factors stay zero and eval is unchanged)."""
    seen = []
    r = api.run(spec_factory({"name": "refl", "stop_range": [1, 2], "margin": 0.0}), output_dir=tmp_path,
                progress=False, callbacks=[seen.append])
    assert [ev.metrics["loss"] for ev in seen] == [0.0] * 4
    assert r.eval_after == r.eval_before


@register_reward("test-antiredness", differentiable=False)
def antiredness(pixels, prompts):
    x = pixels.detach()
    return -(x[:, 0].mean(dim=(1, 2)) - x[:, 1:].mean(dim=(1, 2, 3)))


def test_ranked_moves_generation_toward_what_it_ranks_first(tmp_path, spec_factory):
    """Fine-tuning on the top-ranked sample of each prompt moves generation toward it: ranking by redness gives
    redder images than ranking by its opposite, from the same base, prompts and noise (so the ranking, not drift,
    makes the difference). On the shapes world's trained pipeline: ranked trains on its kept images re-encoded by
    the VAE, which a random twin's VAE cannot give back."""
    prompts = ["a green circle", "a blue square"]
    red = {}
    for reward in ("test-redness", "test-antiredness"):
        spec = spec_factory({"name": "ranked", "samples_per_prompt": 16, "top_m": 2, "prompts_per_round": 2,
                             "steps_per_round": 30},
                            model={"pretrained": "zoo:shapes-sd1", "trainable": {"type": "lora", "rank": 8}},
                            sampling={"steps": 10, "guidance_scale": 3.0, "resolution": 32},
                            objective=[{"reward": reward, "combine": "assemble_ranked"},
                                       {"reward": "test-redness", "name": "red", "role": "monitor"}],
                            prompts={"train": prompts, "eval": prompts}, train={"steps": 30, "lr": 1e-3})
        r = api.run(spec, output_dir=tmp_path / reward, progress=False)
        red[reward] = (r.eval_before["red"], r.eval_after["red"])
    assert red["test-redness"][0] == red["test-antiredness"][0]  # same base, same eval noise
    # measured: redness -0.0156 -> 0.0216, its opposite -0.0156 -> 0.0127 (both runs drift redder: fine-tuning on
    # its own samples moves this model by itself; the ranking's share is the gap)
    assert red["test-redness"][1] > red["test-antiredness"][1] + 0.005, red


def test_ranked_learns_only_what_sets_the_kept_images_apart(tmp_path, spec_factory):
    """Each prompt's loss weights sum to zero (+1/m on its kept images, -1/N on every image), and a prompt's images
    share one noise draw and timestep: when they are all alike there is nothing to learn and the step moves
    nothing. Plain fine-tuning on the kept images (baseline 0) learns even then: it fits what all of the model's
    own samples share, its errors, which compound round after round until the model draws noise
    (docs/methods.md#ranked)."""
    grads = {}
    for baseline in (1.0, 0.0):
        method = {**RANKED, "samples_per_prompt": 3, "baseline": baseline}
        spec = load_spec(spec_factory(method, objective=[{"reward": "test-redness", "combine": "assemble_ranked"}]))
        tr = build_trainer(spec, output_dir=tmp_path / str(baseline), progress=False)
        m = tr.method
        m.run_round(tr.ctx, 0)
        k = 3 if baseline else 1  # baseline 0 stores the kept images only
        assert m.kept_latents.shape[:2] == m.kept_weights.shape == (2, k) and len(m.kept_prompts) == 2
        if baseline:
            assert sorted(m.kept_weights[0].tolist()) == pytest.approx([-1 / 3, -1 / 3, 2 / 3])
            assert m.kept_weights.sum(1).abs().max() < 1e-6
        m.kept_latents = m.kept_latents[:, :1].expand_as(m.kept_latents).clone()  # a prompt's images all alike
        m.loss(tr.ctx, tr.make_batch(0, 0)).loss.backward()
        grads[baseline] = torch.cat([p.grad.flatten() for p in tr.params if p.grad is not None]).norm()
    assert grads[0.0] > 1e-4 and grads[1.0] < 1e-6 * grads[0.0], grads


def test_ranked_resumes_a_checkpoint_saved_before_the_loss_weights():
    """Such a checkpoint holds the kept images alone, one per row: the round continues on them at weight 1 each, as
    it was training."""
    from rewardtune.engine.methods import RankedMethod

    m = RankedMethod()
    m.load_state_dict({"kept_latents": torch.zeros(3, 4, 2, 2), "kept_prompts": ["a", "b", "c"], "round_index": 2})
    assert m.kept_latents.shape == (3, 1, 4, 2, 2) and m.kept_weights.tolist() == [[1.0]] * 3


@pytest.mark.parametrize("trainable", ["lora", "full"])
def test_ranked_kl_is_zero_at_start_then_holds_the_model_to_its_base(tmp_path, spec_factory, trainable):
    """ranked's kl_coeff compares with the frozen base on the step's own noisy images: zero while the model is its
    base (LoRA at init; the kept copy under full fine-tuning), then positive once it has moved."""
    seen = []
    model = {"trainable": {"type": "full"}} if trainable == "full" else {}
    spec = spec_factory({**RANKED, "kl_coeff": 1.0}, model=model, train={"steps": 3},
                        objective=[{"reward": "test-redness", "combine": "assemble_ranked"}])
    api.run(spec, output_dir=tmp_path, progress=False, callbacks=[lambda ev: seen.append(float(ev.metrics["kl"]))])
    assert seen[0] == 0.0 and seen[-1] > 0, seen


def test_ranked_dpo_is_diffusion_dpo_over_every_kept_other_pair():
    """loss dpo: Diffusion-DPO's -logsigmoid(-beta/2 * ((L_w - L_ref_w) - (L_l - L_ref_l))), written here as the
    paper writes it, averaged over each prompt's (kept, not kept) pairs; it saturates once the kept images are
    preferred by a wide margin, where the weighted loss keeps pushing."""
    from rewardtune.engine.methods import RankedMethod

    m = RankedMethod(samples_per_prompt=3, top_m=1, loss_kind="dpo", beta=10.0)
    model = torch.tensor([0.5, 0.2, 0.4, 0.3, 0.9, 0.1], requires_grad=True)  # 2 prompts x 3 images
    ref = torch.tensor([0.4, 0.4, 0.4, 0.3, 0.3, 0.3])
    w = torch.tensor([-0.5, 1.0, -0.5, 1.0, -0.5, -0.5])  # kept: image 1 of prompt 0, image 0 of prompt 1
    loss, metrics = m._dpo_loss(model - ref, w, 3)
    d = (model - ref).detach()
    want = [-F.logsigmoid(torch.tensor(-0.5 * 10.0 * ((model[i] - ref[i]) - (model[j] - ref[j])).item()))
            for i, j in ((1, 0), (1, 2), (3, 4), (3, 5))]
    assert loss.item() == pytest.approx(torch.stack(want).mean().item(), rel=1e-6)
    margins = [d[1] - d[0], d[1] - d[2], d[3] - d[4], d[3] - d[5]]
    assert metrics["dpo_margin"].item() == pytest.approx(torch.stack(margins).mean().item(), rel=1e-6)
    assert metrics["dpo_accuracy"].item() == pytest.approx(sum(float(x < 0) for x in margins) / 4)
    loss.backward()
    assert model.grad[0] < 0 < model.grad[1]  # a descent step lowers the kept image's loss, raises the other's

    far = torch.tensor([3.0, -3.0, 3.0], requires_grad=True)  # the kept image already far ahead
    m._dpo_loss(far, torch.tensor([-0.5, 1.0, -0.5]), 3)[0].backward()
    assert far.grad.abs().max() < 1e-6

    # 2 kept of 4: the 4 (kept, other) pairs, not the kept images with each other; a tie counts half
    two = RankedMethod(samples_per_prompt=4, top_m=2, loss_kind="dpo", beta=10.0)
    d = torch.tensor([0.1, 0.0, 0.3, 0.0])
    loss, metrics = two._dpo_loss(d, torch.tensor([0.5, 0.5, -0.5, -0.5]), 4)
    pairs = [d[i] - d[j] for i in (0, 1) for j in (2, 3)]
    assert loss.item() == pytest.approx(torch.stack([F.softplus(5.0 * x) for x in pairs]).mean().item(), rel=1e-6)
    assert metrics["dpo_accuracy"].item() == pytest.approx((1 + 0 + 1 + 0.5) / 4)  # pairs 0-2, 0-3, 1-2, 1-3


def test_ranked_dpo_settings_reach_the_method(tmp_path, spec_factory):
    spec = load_spec(spec_factory({**RANKED, "samples_per_prompt": 3, "loss": "dpo", "beta": 123.0},
                                  objective=[{"reward": "test-redness", "combine": "assemble_ranked"}]))
    m = build_trainer(spec, output_dir=tmp_path, progress=False).method
    assert (m.loss_kind, m.beta, m.samples_per_prompt) == ("dpo", 123.0, 3)


@pytest.mark.parametrize("trainable", ["lora", "full"])
def test_ranked_dpo_starts_at_log_2_on_its_base(tmp_path, spec_factory, trainable):
    """At the start the model is its base (LoRA at init; the kept copy under full fine-tuning): every pair's margin
    is 0 and the loss log 2; then the model moves away from its base on the round's pairs."""
    seen = []
    model = {"trainable": {"type": "full"}} if trainable == "full" else {}
    spec = spec_factory({**RANKED, "samples_per_prompt": 3, "loss": "dpo"}, model=model, train={"steps": 3},
                        objective=[{"reward": "test-redness", "combine": "assemble_ranked"}])
    api.run(spec, output_dir=tmp_path, progress=False,
            callbacks=[lambda ev: seen.append((float(ev.metrics["loss"]), float(ev.metrics["dpo_margin"])))])
    assert seen[0] == (pytest.approx(math.log(2)), 0.0) and seen[-1][1] != 0, seen


def test_kl_regularizer_is_zero_at_start_and_pulls_toward_base(tmp_path, spec_factory):
    free = api.run(spec_factory({"name": "draft_k", "k": 1}), output_dir=tmp_path / "free", progress=False)
    seen = []
    reg = api.run(spec_factory({"name": "draft_k", "k": 1, "kl_coeff": 50.0}), output_dir=tmp_path / "kl",
                  progress=False, callbacks=[lambda ev: seen.append(ev.metrics["kl"])])
    assert seen[0] == 0.0 and seen[-1] > 0  # same UNet with adapters disabled: identical at LoRA init
    drift = {k: abs(v["test-brightness"] - r.eval_before["test-brightness"])
             for k, v, r in (("free", free.eval_after, free), ("kl", reg.eval_after, reg))}
    assert drift["kl"] < drift["free"]


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


RANKED = {"name": "ranked", "samples_per_prompt": 2, "top_m": 1, "prompts_per_round": 2, "steps_per_round": 2}


@pytest.mark.parametrize("which", ["draft_k+kl", "refl", "draft_lv", "alignprop-random-step", "ranked", "ranked-dpo"])
def test_only_trainable_parameters_change(tmp_path, spec_factory, which):
    method = {"ranked": RANKED, "ranked-dpo": {**RANKED, "loss": "dpo"}}.get(which) or METHODS[which]
    terms = [{"reward": "test-convnet", "combine": "assemble_ranked" if which.startswith("ranked") else "weighted_sum"}]
    spec = load_spec(spec_factory(method, objective=terms, train={"steps": 2}))
    tr = build_trainer(spec, output_dir=tmp_path, progress=False)
    d = tr.diff
    base = {k: v for k, v in _snapshot(d.unet).items() if "lora_" not in k}
    lora = {k: v for k, v in _snapshot(d.unet).items() if "lora_" in k}
    vae, te = _snapshot(d.vae), _snapshot(d.text_encoder)
    rewards = [_snapshot(m) for m in tr.objective.reward_modules()]
    assert rewards, "the conv reward must expose its module"
    tr.run()
    after = _snapshot(d.unet)
    assert all(torch.equal(after[k], v) for k, v in base.items())
    assert any(not torch.equal(after[k], v) for k, v in lora.items())
    assert all(torch.equal(_snapshot(d.vae)[k], v) for k, v in vae.items())
    assert all(torch.equal(_snapshot(d.text_encoder)[k], v) for k, v in te.items())
    for snap, m in zip(rewards, tr.objective.reward_modules(), strict=True):
        assert all(torch.equal(m.state_dict()[k], v) for k, v in snap.items())
    assert {n for n, p in d.unet.named_parameters() if p.requires_grad} == set(lora)


def _calls_of_one_step(tmp_path, spec):
    tr = build_trainer(load_spec(spec), output_dir=tmp_path, progress=False)
    calls = []

    def hook(module, args, kwargs, out):
        calls.append({"t": int(args[1].reshape(-1)[0]), "batch": int(args[0].shape[0]),
                      "grad": torch.is_grad_enabled(), "noisy": args[0].detach().clone()})
    h = tr.diff.unet.register_forward_hook(hook, with_kwargs=True)
    try:
        batch = tr.make_batch(0, 0)
        out = tr.method.loss(tr.ctx, batch)
    finally:
        h.remove()
    return tr, calls, out


def test_draft_lv_redraws(tmp_path, spec_factory):
    spec = spec_factory({"name": "draft_lv", "n": 3}, sampling={"steps": 4, "guidance_scale": 2.0},
                        train={"gradient_checkpointing": False})
    tr, calls, out = _calls_of_one_step(tmp_path, spec)
    from rewardtune.engine.sampler import timesteps

    t_last = int(timesteps(tr.diff, 4)[-1])
    assert [c["grad"] for c in calls] == [False] * 4 + [True]  # full chain without grad, then one grad call
    lv = calls[-1]
    assert lv["t"] == t_last and lv["batch"] == 3 * 2 * 2  # n draws x batch x CFG, one batched call
    draws = lv["noisy"][:6].chunk(3)  # the cond/uncond halves share inputs; draws differ (fresh eps each)
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert out.pixels.shape[0] == 3 * 2 and out.loss.requires_grad


def test_refl_stop_step(tmp_path, spec_factory):
    spec = spec_factory({"name": "refl", "stop_range": [1, 4]}, sampling={"steps": 6},
                        train={"gradient_checkpointing": False})
    tr, calls, out = _calls_of_one_step(tmp_path, spec)
    stop = int(out.metrics["stop_step"])
    assert 1 <= stop <= 4
    from rewardtune.engine.sampler import timesteps

    ts = timesteps(tr.diff, 6)
    assert [c["t"] for c in calls] == [int(t) for t in ts[:stop + 1]]
    assert [c["grad"] for c in calls] == [False] * stop + [True]
    stops = set()
    for step in range(12):
        stops.add(tr.method.loss(tr.ctx, tr.make_batch(step, 0)).metrics["stop_step"])
    assert stops <= {1.0, 2.0, 3.0, 4.0} and len(stops) >= 3


def test_alignprop_random_truncation_draws(tmp_path, spec_factory):
    """per_step: a fresh K_i per denoising step (TRL, AlignProp 2023); per_batch: one K per batch (2024)."""
    spec = spec_factory({"name": "alignprop", "k_range": [2, 6], "draw": "per_step"}, sampling={"steps": 8})
    tr = build_trainer(load_spec(spec), output_dir=tmp_path, progress=False)
    per_step = [tr.method.grad_steps(tr.make_batch(s, 0), 8) for s in range(40)]
    for g in per_step:
        assert {6, 7} <= set(g) <= set(range(2, 8))  # i >= T - lo always, i < T - hi never
    assert any(g != list(range(g[0], 8)) for g in per_step)  # not always a contiguous suffix
    assert len({len(g) for g in per_step}) > 1
    tr.method.draw = "per_batch"
    per_batch = [tr.method.grad_steps(tr.make_batch(s, 0), 8) for s in range(40)]
    assert all(g == list(range(8 - len(g), 8)) and 2 <= len(g) <= 6 for g in per_batch)
    assert len({len(g) for g in per_batch}) > 1
    assert tr.method.grad_steps(tr.make_batch(3, 1), 8) == tr.method.grad_steps(tr.make_batch(3, 1), 8)


def test_mixed_objective_runs_under_a_gradient_method(tmp_path, spec_factory):
    """A differentiable term gives the gradient; a non-differentiable one weights the samples by rank."""
    seen = []
    spec = spec_factory({"name": "draft_k", "k": 1},
                        objective=[{"reward": "test-brightness"},
                                   {"reward": "test-redness", "combine": "assemble_ranked", "weight": 2.0}],
                        sampling={"images_per_prompt": 2}, train={"batch_size": 4})
    r = api.run(spec, output_dir=tmp_path, progress=False, callbacks=[seen.append])
    assert r.eval_after["test-brightness"] > r.eval_before["test-brightness"]
    ev = seen[0]
    assert ev.prompts[0] == ev.prompts[1] and ev.prompts[2] == ev.prompts[3]  # two images per prompt
    assert "reward/test-redness" in ev.metrics


def test_refl_mixes_in_the_pretraining_loss(tmp_path, spec_factory):
    seen = []
    spec = spec_factory({"name": "refl", "stop_range": [1, 2], "loss": "neg",
                         "pretrain": {"data": str(_pairs(tmp_path)), "every": 2, "batch_size": 2}})
    r = api.run(spec, output_dir=tmp_path / "out", progress=False, callbacks=[seen.append])
    assert r.steps_done == 4
    kinds = ["pretrain_loss" in ev.metrics for ev in seen]
    assert kinds == [False, True, False, True]  # every 2nd step is a denoising step
    assert all(ev.metrics["pretrain_loss"] > 0 for ev in seen if "pretrain_loss" in ev.metrics)
    assert all(ev.images is None for ev in seen if "pretrain_loss" in ev.metrics)


def test_refl_pretraining_splits_one_global_draw_over_ranks(tmp_path, spec_factory):
    """Data-parallel ReFL pretraining: `pretrain.batch_size` is global, each rank denoises its own slice of one
    draw of pairs, noise and timesteps (as sampling noise is sliced), so two ranks see distinct pairs and their mean
    loss is one rank's loss on the whole batch."""
    import dataclasses

    from rewardtune.engine.distributed import DistInfo

    data = _pairs(tmp_path)
    spec = spec_factory({"name": "refl", "stop_range": [1, 2], "pretrain": {"data": str(data), "every": 2,
                                                                            "batch_size": 2}})
    tr = build_trainer(load_spec(spec), output_dir=tmp_path / "out", progress=False)
    assert tr.method.is_pretrain_step(1)

    def loss(rank: int, world: int) -> float:
        ctx = dataclasses.replace(tr.ctx, info=DistInfo(rank, world))
        with torch.no_grad():
            return float(tr.method.loss(ctx, tr.make_batch(1, 0)).loss)

    one, r0, r1 = loss(0, 1), loss(0, 2), loss(1, 2)
    assert r0 != r1  # distinct pairs/noise per rank, not every rank the same batch
    assert one == pytest.approx((r0 + r1) / 2, rel=1e-5)
    from rewardtune.errors import UsageError

    with pytest.raises(UsageError, match="batch_size=2 must split evenly into 3 ranks"):
        loss(0, 3)


def _pairs(tmp_path):
    import json

    from PIL import Image

    data = tmp_path / "pairs"
    data.mkdir()
    lines = []
    for i, color in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (24, 24), color).save(data / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": f"a {color} square"}))
    (data / "pairs.jsonl").write_text("\n".join(lines))
    return data / "pairs.jsonl"
