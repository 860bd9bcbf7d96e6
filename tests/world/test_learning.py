"""Learning tests: on the shapes world, every method, with LoRA and with the full UNet, must raise what the
rule-based judge reads from pixels (the prompt's colour and shape) on held-out seeds. The judge is a monitor:
no gradient and no ranking comes from it, so a rise is real prompt-following, not a reward model's opinion.

Each run is `specs/demo.yaml` with its method (and trainable part) swapped: the shipped shapes-sd1 pipeline, the
shapes CLIP reward, 8 prompts per step, DDIM 20 / CFG 3, one CPU thread. The eval is the same 64 images (32
captions x 2 seeds, noise drawn from the run seed's own eval stream, never from a training batch) before and
after. The base reads 40.6% both-correct there. Margins are set well under what was measured (docs/shapes-world.md
has the table), so a pass means "learns", not "got lucky", and a broken method fails by a wide margin.

The flow-matching sibling (zoo:shapes-sd3) runs the same demo with only the pipeline swapped: backprop through
the whole sampling chain, and ReFL stopping in the early steps where the shapes form, must raise the judge there
too, and the methods whose gradient sees only the last steps must be caught raising the reward without the judge
following. The FLUX.1-architecture sibling (zoo:shapes-flux) must learn there as well, by ReFL stopping in the first
steps, and the SDXL-architecture sibling (zoo:shapes-sdxl) by the demo itself.

Budget: `nox -s learning` (also run by .ci/run) takes about 30 minutes on 2 cores, the siblings' runs included; one
fast test runs in the default suite.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rewardtune

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "specs" / "demo.yaml"

METHODS = {
    "draft_k": "method={name: draft_k, k: 1}",
    "alignprop_k5": "method={name: alignprop, k: 5}",
    "alignprop_random": "method={name: alignprop, k_range: [1, 10]}",
    "draft_lv": "method={name: draft_lv, n: 2}",
    "refl": "method={name: refl, stop_range: [15, 19], loss: neg}",
    "ranked": "method={name: ranked, samples_per_prompt: 4, top_m: 1, prompts_per_round: 8, steps_per_round: 5}",
}
TRAINABLE = {
    "lora": [],  # the demo's LoRA rank 8, lr 1e-3
    "full": ["model.trainable={type: full}", "train.lr=1e-4"],
}
#: least rise of both-correct accuracy (points of 64 held-out images) each run must show
MARGIN = {("draft_k", "lora"): 0.25, ("alignprop_k5", "lora"): 0.25, ("alignprop_random", "lora"): 0.25,
          ("draft_lv", "lora"): 0.25, ("refl", "lora"): 0.2, ("ranked", "lora"): 0.15,
          ("draft_k", "full"): 0.25, ("alignprop_k5", "full"): 0.25, ("alignprop_random", "full"): 0.25,
          ("draft_lv", "full"): 0.25, ("refl", "full"): 0.2, ("ranked", "full"): 0.25}


#: the SDXL-architecture sibling (zoo:shapes-sdxl: shapes-sd1's UNet with SDXL's added conditioning, two text
#: encoders, an all-zero unconditional branch). Its base reads 27/64 both-correct on the demo's eval (colour 62%,
#: shape 64%); the demo itself, DRaFT-1 with LoRA, lifts it as on shapes-sd1 (measured 42.2% -> 78.1%, reward 0.802
#: -> 0.912).
SDXL = ("model.pretrained=zoo:shapes-sdxl", "model.family=sdxl")
SDXL_BASE = 27 / 64
SDXL_MARGIN = 0.2


#: the FLUX.1-architecture sibling (zoo:shapes-flux: no guidance input, so it samples without CFG, as FLUX.1-schnell
#: does). Its base reads 21/64 both-correct on the demo's eval (colour 97%, shape 34%). Its shapes settle even earlier
#: than the SD3 sibling's: ReFL stopping at step 0-3 of 20 moves them (measured 32.8% -> 59.4%, reward 0.784 ->
#: 0.901, about 2 minutes), while stopping at step 1-6 raises the reward as much (0.909) and leaves the shapes
#: (35.9%).
FLUX = ("model.pretrained=zoo:shapes-flux", "model.family=flux")
FLUX_BASE = 21 / 64
FLUX_EARLY_REFL = "method={name: refl, stop_range: [0, 3], loss: neg}"


#: DRaFT+: measured at 0.01, the eval images moved 0.048 (mean abs pixel change) against 0.125 without it, and
#: both-correct rose 27 points against 41 (0.1: moved 0.016, +3 points; 1.0: the model barely moved)
KL_COEFF = 0.01
KL_MOVED_FRACTION = 0.6
KL_MIN_GAIN = 0.15
#: the default suite's fast test: DRaFT-1 LoRA for 40 steps, judged on the 32 captions with one image each
#: (measured: 40.6% -> 68.8%, 11 images up and 2 down; the run takes 56 s on one thread)
FAST_MARGIN = 0.15


#: the flow-matching sibling (zoo:shapes-sd3: an SD3-architecture transformer trained on the same world): the same
#: demo run with only the pipeline swapped; LoRA on the family's default targets (both attention streams). Its base
#: reads 28/64 both-correct here (every colour right, the shapes are its errors).
FLOW = ("model.pretrained=zoo:shapes-sd3", "model.family=sd3")
FLOW_BASE = 28 / 64
#: shapes form early on a flow path: backprop through the whole chain (DRaFT-K, K = all 20 steps) moves them
#: (measured 43.8% -> 60.9%, reward 0.881 -> 0.935) ...
FLOW_FULL_CHAIN = "method={name: draft_k, k: 20}"
#: ... while methods whose gradient sees only the last steps raise the reward as much and leave the shapes as they
#: were (measured: DRaFT-1 43.8% -> 42.2% at reward 0.910; ReFL 43.8% -> 46.9% at 0.917; AlignProp K ~ U[1, 10]
#: +8 points; DRaFT-5 +3): reward hacking that the judge catches. The day one of them learns here, this fails.
FLOW_LAST_STEPS = ("draft_k", "refl")
FLOW_LAST_STEPS_MAX_GAIN = 0.08
#: ReFL whose stop step falls where the shapes form (steps 1-6 of 20) moves them, at about a seventh of the full chain's CPU time
#: (measured 43.8% -> 70.3%, reward 0.881 -> 0.928; stopping in [0, 3]: 65.6%; in [4, 10]: 43.8%, unchanged)
FLOW_EARLY_REFL = "method={name: refl, stop_range: [1, 6], loss: neg}"
#: least rise of both-correct (and of shape) each of the two must show
FLOW_MARGIN = 0.10


class _EvalImages:
    """Keeps the eval images of a run (before and after), to measure how far training moved the model."""

    def __init__(self):
        self.images: dict[int, torch.Tensor] = {}

    def on_eval(self, ev):
        self.images[ev.step] = ev.images


def _run(tmp: Path, *overrides: str, steps: int | None = None):
    cb = _EvalImages()
    extra = [f"train.steps={steps}"] if steps else []
    res = rewardtune.run(DEMO, overrides=[*overrides, *extra], output_dir=tmp, overwrite=True, progress=False,
                         callbacks=[cb])
    return res, cb


def _gain(res, key: str = "shapes-eval") -> float:
    return res.eval_after[key] - res.eval_before[key]


@pytest.mark.learning
@pytest.mark.parametrize("trainable", sorted(TRAINABLE))
@pytest.mark.parametrize("method", list(METHODS))
def test_method_raises_the_judges_accuracy_on_held_out_seeds(method, trainable, tmp_path):
    res, _ = _run(tmp_path, METHODS[method], *TRAINABLE[trainable])
    print(f"LEARNED {method}/{trainable}: " + json.dumps({"before": res.eval_before, "after": res.eval_after}))
    assert res.steps_done == 100 and res.skipped_steps == 0
    assert res.eval_before["shapes-eval"] == pytest.approx(26 / 64)  # the shipped base, same 64 images every run
    gain = _gain(res)
    assert gain >= MARGIN[method, trainable], (
        f"{method}/{trainable}: both-correct {res.eval_before['shapes-eval']:.3f} -> {res.eval_after['shapes-eval']:.3f}")
    # colour and shape each improve, and the optimized reward rose with them
    assert _gain(res, "shapes-eval/colour_ok") > 0 and _gain(res, "shapes-eval/shape_ok") >= 0
    assert _gain(res, "clip") > 0.05


@pytest.mark.learning
@pytest.mark.parametrize("method", [FLOW_FULL_CHAIN, FLOW_EARLY_REFL], ids=["draft_full_chain", "refl_early_stop"])
def test_gradient_into_the_early_steps_raises_the_judges_accuracy_on_a_flow_matching_transformer(method, tmp_path):
    res, _ = _run(tmp_path, *FLOW, method)
    print(f"LEARNED flow {method}: " + json.dumps({"before": res.eval_before, "after": res.eval_after}))
    assert res.steps_done == 100 and res.skipped_steps == 0
    assert res.eval_before["shapes-eval"] == pytest.approx(FLOW_BASE)
    assert _gain(res) >= FLOW_MARGIN, (res.eval_before, res.eval_after)
    assert _gain(res, "shapes-eval/shape_ok") >= FLOW_MARGIN and _gain(res, "clip") > 0.03


@pytest.mark.learning
@pytest.mark.parametrize("method", FLOW_LAST_STEPS)
def test_last_step_methods_raise_the_reward_but_not_the_judge_on_a_flow_matching_transformer(method, tmp_path):
    res, _ = _run(tmp_path, *FLOW, METHODS[method])
    print(f"LEARNED flow {method}: " + json.dumps({"before": res.eval_before, "after": res.eval_after}))
    assert res.steps_done == 100 and res.skipped_steps == 0
    assert res.eval_before["shapes-eval"] == pytest.approx(FLOW_BASE)
    assert _gain(res, "clip") > 0.02  # the method optimizes the flow model's reward...
    assert _gain(res) <= FLOW_LAST_STEPS_MAX_GAIN, res.eval_after  # ...and the judge sees the shapes unchanged


@pytest.mark.learning
def test_the_demo_raises_the_judges_accuracy_on_an_sdxl_unet(tmp_path):
    """SDXL's architecture (two text encoders, pooled projection and micro-conditioning into the time embedding,
    all-zero unconditional branch) learns in the shapes world as SD 1.x's does: DRaFT-1 with LoRA, the demo."""
    res, _ = _run(tmp_path, *SDXL)
    print("LEARNED sdxl draft_k: " + json.dumps({"before": res.eval_before, "after": res.eval_after}))
    assert res.steps_done == 100 and res.skipped_steps == 0
    assert res.eval_before["shapes-eval"] == pytest.approx(SDXL_BASE)
    assert _gain(res) >= SDXL_MARGIN, (res.eval_before, res.eval_after)
    assert _gain(res, "shapes-eval/colour_ok") > 0 and _gain(res, "shapes-eval/shape_ok") >= 0
    assert _gain(res, "clip") > 0.05


@pytest.mark.learning
def test_gradient_into_the_first_steps_raises_the_judges_accuracy_on_a_flux_transformer(tmp_path):
    """FLUX.1's architecture (packed latents, double- and single-stream blocks, RoPE, no CFG) learns in the shapes
    world too, where the gradient reaches the steps that settle the shapes."""
    res, _ = _run(tmp_path, *FLUX, FLUX_EARLY_REFL)
    print("LEARNED flux refl_early: " + json.dumps({"before": res.eval_before, "after": res.eval_after}))
    assert res.steps_done == 100 and res.skipped_steps == 0
    assert res.eval_before["shapes-eval"] == pytest.approx(FLUX_BASE)
    assert _gain(res) >= FLOW_MARGIN, (res.eval_before, res.eval_after)
    assert _gain(res, "shapes-eval/shape_ok") >= FLOW_MARGIN and _gain(res, "clip") > 0.03


@pytest.mark.learning
def test_draft_plus_kl_stays_closer_to_the_base_at_a_small_cost_in_accuracy(tmp_path):
    """DRaFT+ (kl_coeff): the fine-tuned model's eval images move measurably less from the base model's images (same
    prompts, same noise) than without the regularizer, while it still learns."""
    plain, cb_plain = _run(tmp_path / "plain", METHODS["draft_k"])
    kl, cb_kl = _run(tmp_path / "kl", f"method={{name: draft_k, k: 1, kl_coeff: {KL_COEFF}}}")
    base = cb_plain.images[0]
    assert torch.equal(base, cb_kl.images[0])  # same base, same noise
    moved_plain = (cb_plain.images[plain.steps_done] - base).abs().mean().item()
    moved_kl = (cb_kl.images[kl.steps_done] - base).abs().mean().item()
    print("LEARNED kl: " + json.dumps({"moved": [moved_plain, moved_kl], "gain": [_gain(plain), _gain(kl)]}))
    assert moved_kl < KL_MOVED_FRACTION * moved_plain, (moved_kl, moved_plain)
    assert _gain(kl) >= KL_MIN_GAIN, kl.eval_after
    assert _gain(kl) <= _gain(plain) + 3 / 64  # the regularizer does not buy accuracy; it costs a little


#: logging.select_by on a run that hacks the reward (the demo's LoRA at 5x its lr): the judge peaks early and falls
#: back while the reward stays up (measured: 40.6% before, 59.4% at step 10, 43.8% at step 100, reward 0.89-0.92
#: throughout). Exporting the best eval's weights must keep the peak, well above the last step's. (On fresh noise,
#: 128 images of `rewardtune eval --seed 1000 -n 4`: the last step 53.1%, the chosen step 67.2%, the base 52.3%.)
HACKING = ("train.lr=5e-3", "logging.images_every=10", "logging.select_by=shapes-eval")
SELECT_OVER_LAST = 0.08
SELECT_OVER_BASE = 0.10


@pytest.mark.learning
def test_select_by_exports_the_weights_from_before_the_reward_was_hacked(tmp_path):
    from rewardtune.rundir import RunDir

    res, _ = _run(tmp_path, *HACKING)
    evals = {r["step"]: r["eval/shapes-eval"] for r in RunDir(tmp_path).metrics() if "eval/shapes-eval" in r}
    print("LEARNED select_by: " + json.dumps({"evals": evals, "selected": res.selected_step,
                                              "after": res.eval_after}))
    assert res.selected_step is not None and res.selected_step < res.steps_done == 100
    assert res.eval_after["shapes-eval"] == pytest.approx(evals[res.selected_step], abs=1 / 64)
    assert res.eval_after["shapes-eval"] - evals[100] >= SELECT_OVER_LAST
    assert _gain(res) >= SELECT_OVER_BASE


#: ranked's loss: dpo (Diffusion-DPO against the frozen base) over a long run at the demo's lr 1e-3 (LoRA), where
#: the weighted loss falls apart (measured: 66% at step 100, 6% at step 160; seed 1: 30%). DPO at beta 500 held
#: on: 64% at step 100, 56% at 160, 58% at 300 (seed 1: 55%, 55%, 56%). Past its saturation the loss stops
#: pushing a pair, which the zero-sum weighted loss never does.
RANKED_DPO = ("method={name: ranked, samples_per_prompt: 4, top_m: 1, prompts_per_round: 8, steps_per_round: 5, "
              "loss: dpo, beta: 500}")
RANKED_DPO_STEPS = 160
RANKED_DPO_MIN_GAIN = 0.08  # the weighted loss at 160 steps: -35 points


@pytest.mark.learning
def test_ranked_dpo_keeps_its_gain_over_a_long_run(tmp_path):
    res, _ = _run(tmp_path, RANKED_DPO, steps=RANKED_DPO_STEPS)
    print("LEARNED ranked dpo: " + json.dumps({"before": res.eval_before, "after": res.eval_after}))
    assert res.steps_done == RANKED_DPO_STEPS and res.skipped_steps == 0
    assert _gain(res) >= RANKED_DPO_MIN_GAIN, (res.eval_before, res.eval_after)
    assert _gain(res, "clip") > 0


def test_draft_k_lora_learns_in_the_default_suite(trained_demo):
    """The fast learning test: DRaFT-1 with LoRA, 40 steps, must already raise both-correct accuracy (on the 32
    captions, one image each: the run `rewardtune eval`'s tests share)."""
    _, res = trained_demo
    assert _gain(res) >= FAST_MARGIN, (res.eval_before, res.eval_after)
    assert _gain(res, "clip") > 0.03


@pytest.mark.learning
def test_ranked_keeps_images_the_judge_finds_right_more_often(tmp_path):
    """What ranked does learn from: ranking by the objective (the shapes CLIP reward) selects images that the
    judge, which the ranking never saw, reads as right more often than the round's average image."""
    from rewardtune.engine.build import build_trainer
    from rewardtune.engine.objective import top_m_per_group
    from rewardtune.spec.load import load_spec
    from rewardtune.world import shapes as W

    spec = load_spec(DEMO, overrides=["method={name: ranked, samples_per_prompt: 4, top_m: 1, prompts_per_round: 32}"])
    tr = build_trainer(spec, output_dir=tmp_path, progress=False)
    torch.set_num_threads(1)
    out = tr.method.run_round(tr.ctx, 0)
    groups = torch.arange(32).repeat_interleave(4)
    keep = top_m_per_group(out.value.rank_score.cpu(), groups, 1)
    ok = torch.tensor([v.both_ok for v in W.judge(out.pixels.permute(0, 2, 3, 1).cpu().numpy(), out.prompts)])
    assert ok[keep].float().mean() >= ok.float().mean() + 0.1, (ok[keep].float().mean(), ok.float().mean())
    assert len(tr.method.kept_prompts) == 32 and tr.method.kept_latents.shape == (32, 4, 4, 16, 16)
