"""Checkpoints, resume equivalence, non-finite steps, callbacks and the exported LoRA."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cli_process
import pytest
import torch
from run_helpers import assert_bitwise_equal, lora, stop_at

import rewardtune.api as api
from rewardtune.engine.build import build_trainer
from rewardtune.engine.outputs import latest_resumable
from rewardtune.engine.trainer import NonFiniteError
from rewardtune.rundir import RunDir
from rewardtune.spec.load import load_spec


def _steps(run_dir: Path) -> list[int]:
    return [c.step for c in RunDir(run_dir).checkpoints()]


def _resume_spec(spec_factory):
    # randomness everywhere it can hide: random K per batch, DDIM eta noise, grad accumulation, z-score stats,
    # warmup + cosine LR, a monitor term
    return spec_factory({"name": "alignprop", "k_range": [1, 3], "draw": "per_batch"},
                        objective=[{"reward": "test-convnet", "normalize": "running_zscore"},
                                   {"reward": "test-brightness", "role": "monitor"}],
                        sampling={"steps": 3, "eta": 1.0, "guidance_scale": 2.0},
                        train={"steps": 6, "grad_accum": 2, "lr_schedule": "cosine", "warmup_steps": 2,
                               "checkpoint_every": 2})


def _ranked_resume_spec(spec_factory):
    return spec_factory({"name": "ranked", "samples_per_prompt": 3, "top_m": 1, "prompts_per_round": 2,
                         "steps_per_round": 4},
                        objective=[{"reward": "test-redness", "combine": "assemble_ranked"}],
                        train={"steps": 6, "checkpoint_every": 2, "lr": 1e-3})


@pytest.mark.parametrize("make", [_resume_spec, _ranked_resume_spec], ids=["alignprop", "ranked"])
def test_resume_after_interrupt_is_bitwise_equal(tmp_path, spec_factory, make):
    spec = make(spec_factory)
    full = api.run(spec, output_dir=tmp_path / "full", progress=False)
    assert full.steps_done == 6 and not full.stopped_early

    part = api.run(spec, output_dir=tmp_path / "part", progress=False, callbacks=[stop_at(3)])
    assert part.stopped_early and part.steps_done == 3 and part.weights_path is None
    assert _steps(tmp_path / "part")[-1] == 3
    resumed = api.run(spec, output_dir=tmp_path / "part", progress=False, resume=True)
    assert resumed.resumed_from == 3 and resumed.steps_done == 6
    assert_bitwise_equal(lora(tmp_path / "full"), lora(tmp_path / "part"))
    # metrics of the resumed run continue the interrupted one without duplicated steps
    steps = [json.loads(x)["step"] for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if s > 0]
    assert sorted(set(train_steps)) == [1, 2, 3, 4, 5, 6]
    full_ck = latest_resumable(RunDir(tmp_path / "full")).state
    part_ck = latest_resumable(RunDir(tmp_path / "part")).state
    assert full_ck["objective"] == part_ck["objective"]  # running z-score stats saved and restored
    assert full_ck["method"].keys() == part_ck["method"].keys()


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, spec_factory):
    spec = _resume_spec(spec_factory)
    full = api.run(spec, output_dir=tmp_path / "full", progress=False)
    uninterrupted = lora(tmp_path / "full")
    run = RunDir(tmp_path / "full")
    assert _steps(run.path) == [4, 6]  # keep_checkpoints=2 pruned step 2
    # what a kill -9 can leave: a half-written temp directory, and (were rename not atomic) a truncated newest file
    (run.checkpoints_dir / ".tmp-step_00000008.x1y2").mkdir()
    (run.checkpoints_dir / ".tmp-step_00000008.x1y2" / "tensors.safetensors").write_bytes(b"partial")
    newest = run.checkpoint_dir(6) / "tensors.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    found = latest_resumable(run)
    assert found.ref.step == 4 and found.state["step"] == 4 and [r.step for r, _ in found.skipped] == [6]
    resumed = api.run(spec, output_dir=tmp_path / "full", progress=False, resume=True)
    assert resumed.resumed_from == 4 and resumed.steps_done == 6
    # the fallback resumed from step 4's state: steps 5-6 replayed give the uninterrupted run's weights again
    assert resumed.weights_path == full.weights_path
    assert_bitwise_equal(uninterrupted, lora(tmp_path / "full"))
    # the unreadable checkpoint was set aside (kept, never pruned in favour of), the crash's temp dir removed
    assert _steps(run.path) == [4, 6] and (run.checkpoints_dir / "corrupt-step_00000006").is_dir()
    assert not [p for p in run.checkpoints_dir.iterdir() if p.name.startswith(".tmp-")]


def test_non_finite_steps_are_skipped_and_bounded(tmp_path, spec_factory, nan_on_steps):
    spec = load_spec(spec_factory(objective=[{"reward": "test-nan-on-steps"}],
                                  train={"steps": 4, "max_nonfinite": 1}, logging={"eval_prompts": 1}))
    tr = build_trainer(spec, output_dir=tmp_path, progress=False)
    nan_on_steps.arm({2})
    before = {k: v.clone() for k, v in tr.diff.trainable_state_dict().items()}
    m1, _, bad1 = tr.train_step()
    tr.step += 1
    after1 = {k: v.clone() for k, v in tr.diff.trainable_state_dict().items()}
    m2, _, bad2 = tr.train_step()  # step 2's reward is NaN
    after2 = tr.diff.trainable_state_dict()
    assert not bad1 and bad2 and m2["skipped"] == 1.0 and tr.skipped == 1
    assert any(not torch.equal(before[k], after1[k]) for k in before)
    assert all(torch.equal(after1[k], after2[k]) for k in after1)  # the NaN step changed nothing
    assert all(torch.isfinite(v).all() for v in after2.values())
    # a run with more non-finite steps than allowed stops with a clear error, its weights finite
    nan_on_steps.arm({2, 3, 4})
    tr2 = build_trainer(spec, output_dir=tmp_path / "b", progress=False)
    with pytest.raises(NonFiniteError, match="max_nonfinite=1"):
        tr2.run()
    assert tr2.step == 3 and all(torch.isfinite(v).all() for v in tr2.diff.trainable_state_dict().values())


def test_non_finite_step_with_loss_scaling_leaves_the_scaler_usable(tmp_path, spec_factory, nan_on_steps):
    """fp16 loss scaling: a skipped step must close the unscale it opened, or the next step fails with 'unscale_()
    has already been called'. A run enables the scaler only for fp16 on CUDA, where tests/engine/test_engine_gpu.py
    runs this through the spec; CPU has no fp16 autocast, so here the scaler's CPU twin is put into the trainer by hand
    (CI has no other way to reach this path)."""
    spec = load_spec(spec_factory(objective=[{"reward": "test-nan-on-steps"}], train={"steps": 3}))
    tr = build_trainer(spec, output_dir=tmp_path, progress=False)
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, enabled=True)
    nan_on_steps.arm({1})
    _, _, bad1 = tr.train_step()
    tr.step += 1
    before = {k: v.clone() for k, v in tr.diff.trainable_state_dict().items()}
    m2, _, bad2 = tr.train_step()
    assert bad1 and not bad2 and tr.skipped == 1 and m2["loss"] == m2["loss"]
    after = tr.diff.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the next step trained


def test_callbacks_receive_metrics_images_prompts_and_rewards(tmp_path, spec_factory):
    steps, evals, ends = [], [], []

    class Recorder:
        def on_eval(self, ev):
            evals.append(ev)

        def on_train_end(self, result):
            ends.append(result)

    r = api.run(spec_factory(objective=[{"reward": "test-brightness"}, {"reward": "test-convnet", "role": "monitor"}],
                             train={"steps": 2}),
                output_dir=tmp_path, progress=False, callbacks=[steps.append, Recorder()])
    assert [e.step for e in steps] == [1, 2]
    ev = steps[0]
    assert ev.images.shape == (2, 3, 16, 16) and float(ev.images.min()) >= 0 and float(ev.images.max()) <= 1
    assert len(ev.prompts) == 2 and set(ev.rewards) == {"test-brightness", "test-convnet"}
    torch.testing.assert_close(torch.tensor(ev.rewards["test-brightness"]), ev.images.mean(dim=(1, 2, 3)))
    for k in ("loss", "grad_norm", "lr", "time/step_s", "reward/test-brightness", "reward_norm/test-convnet"):
        assert k in ev.metrics
    assert [Path(e.grid_path).name for e in evals] == ["before.png", "after.png"]
    assert ends and ends[0] is r
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/test-convnet" in x and "reward_norm/test-convnet" in x for x in lines)
    assert (tmp_path / "spec.yaml").exists() and "torch" in json.loads((tmp_path / "versions.json").read_text())


def test_exported_lora_loads_into_diffusers_and_matches_the_trained_model(tmp_path, spec_factory):
    from diffusers import StableDiffusionPipeline

    from rewardtune.engine.sampler import decode, encode_prompts, initial_latents, sample
    from rewardtune.engine.types import generator
    from rewardtune.rewards._weights import resolve_weights

    spec = load_spec(spec_factory(sampling={"steps": 3, "guidance_scale": 2.0}, train={"steps": 3, "lr": 5e-2}))
    tr = build_trainer(spec, output_dir=tmp_path, progress=False)
    result = tr.run()
    assert (result.weights_path / "pytorch_lora_weights.safetensors").exists()
    pipe = StableDiffusionPipeline.from_pretrained(str(resolve_weights("zoo:sd1")), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    x_t = initial_latents(tr.diff, 2, 16, generator(7))
    kw = dict(prompt=["a cat", "a dog"], num_inference_steps=3, guidance_scale=2.0, height=16, width=16,
              output_type="pt", latents=x_t.clone())
    base = pipe(**kw).images
    pipe.load_lora_weights(str(result.weights_path))
    tuned = pipe(**kw).images
    assert (tuned - base).abs().max() > 1e-3  # the LoRA changes the images
    with torch.no_grad():
        emb = encode_prompts(tr.diff, ["a cat", "a dog"], 2.0)
        ours = decode(tr.diff, sample(tr.diff, x_t, emb, steps=3, guidance=2.0).latents)
    torch.testing.assert_close(tuned, ours, rtol=1e-4, atol=1e-4)  # same weights, same sampler


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_is_bitwise_equal(tmp_path, spec_factory):
    """A real SIGKILL of the CLI process (possibly mid-save), then `--resume`, equals an uninterrupted run."""
    import yaml

    spec = _resume_spec(spec_factory)
    spec["train"].update(steps=12, checkpoint_every=1)
    spec["imports"] = [str(Path(__file__).with_name("rewards_for_tests.py"))]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "rewardtune.cli.main", "run", str(path), "--no-progress"]
    env = cli_process.env(OMP_NUM_THREADS="1")
    subprocess.run(cmd + ["-o", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd + ["-o", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None and len(_steps(tmp_path / "killed")) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "lora").exists(), "the run finished before it could be killed"
    subprocess.run(cmd + ["-o", str(tmp_path / "killed"), "--resume"], check=True, env=env, capture_output=True)
    assert_bitwise_equal(lora(tmp_path / "full"), lora(tmp_path / "killed"))
