"""rewardtune.evaluate on the tiny SD-1.x twin, in seconds: the evaluation of a run reproduces the run's own
before/after eval, for a LoRA and for a full UNet export, and an export folder alone is evaluated with the settings
its model card records."""
from __future__ import annotations

import json

import pytest

import rewardtune.api as api
from rewardtune.evaluate import evaluate, paired_summary


@pytest.mark.parametrize("trainable", [{"type": "lora", "rank": 4, "alpha": 16}, {"type": "full"}])
def test_evaluate_reproduces_the_runs_own_eval(tmp_path, spec_factory, trainable):
    res = api.run(spec_factory(model={"pretrained": "zoo:sd1", "trainable": trainable},
                               train={"steps": 3, "lr": 3e-2 if trainable["type"] == "lora" else 3e-3}),
                  output_dir=tmp_path / "run", progress=False)
    assert res.weights_path.name == ("lora" if trainable["type"] == "lora" else "unet")
    report = evaluate(tmp_path / "run", device="cpu")
    s = report.summary["test-brightness"]
    assert s.n == 2
    assert s.before == pytest.approx(res.eval_before["test-brightness"], abs=1e-6)
    assert s.after == pytest.approx(res.eval_after["test-brightness"], abs=1e-6)
    assert s.after != pytest.approx(s.before, abs=1e-6)  # the trained weights were applied
    # the export folder alone: base model, sampling and seed from its model card
    alone = evaluate(res.weights_path, rewards=["test-brightness"], prompts=str(_prompts(tmp_path)), device="cpu")
    assert alone.settings.base == "zoo:sd1" and alone.settings.steps == 3 and alone.settings.resolution == 16
    assert alone.summary["test-brightness"].after == pytest.approx(s.after, abs=1e-6)
    paths = alone.write(tmp_path / "ev")
    data = json.loads(paths["json"].read_text())
    assert data["kind"] == ("lora" if trainable["type"] == "lora" else "denoiser")
    assert [r["prompt"] for r in data["per_prompt"]] == ["a cat", "a red car"]


@pytest.mark.parametrize("twin,family,guidance", [("zoo:sdxl", "sdxl", 3.0), ("zoo:sd3", "sd3", 3.0),
                                                  ("zoo:flux", "flux", 3.5)])
def test_evaluate_every_family(tmp_path, spec_factory, twin, family, guidance):
    """SDXL, SD3 and FLUX LoRAs (their tiny twins): evaluate reproduces the run's eval, so the LoRA was loaded
    into the family's denoiser (a UNet or a transformer) and sampled through its seam."""
    res = api.run(spec_factory(model={"pretrained": twin, "family": family,
                                      "trainable": {"type": "lora", "rank": 4, "alpha": 16}},
                               sampling={"steps": 3, "guidance_scale": guidance, "resolution": 16},
                               train={"steps": 2}), output_dir=tmp_path / "run", progress=False)
    report = evaluate(tmp_path / "run", device="cpu")
    s = report.summary["test-brightness"]
    assert s.before == pytest.approx(res.eval_before["test-brightness"], abs=1e-6)
    assert s.after == pytest.approx(res.eval_after["test-brightness"], abs=1e-6)
    assert s.after != pytest.approx(s.before, abs=1e-7)


def _prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("a cat\na red car\n")
    return p


def test_paired_summary_counts_and_interval():
    s = paired_summary([0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0])
    assert (s.before, s.after, s.diff_mean, s.up, s.down, s.same) == (0.25, 0.75, 0.5, 2, 0, 2)
    assert 0.0 <= s.ci95[0] <= 0.5 <= s.ci95[1] <= 1.0
    lower = paired_summary([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], direction="lower")
    assert lower.diff_mean == -1.0 and lower.better is True  # lower is better, and every image fell
