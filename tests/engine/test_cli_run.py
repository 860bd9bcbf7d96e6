"""`rewardtune run` from the command line: overrides, shipped spec names, preemption signal, full UNet export."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from run_helpers import cli

import rewardtune.api as api
from rewardtune.engine import control
from rewardtune.rundir import RunDir


def _write(tmp_path: Path, spec: dict) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_bad_override_is_a_usage_error(tmp_path, spec_factory, capsys):
    p = _write(tmp_path, spec_factory())
    assert cli(["run", str(p), "train.stpes=3", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "train.stpes" in err and "steps" in err
    assert cli(["run", str(p), "train.steps=0", "-o", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_unknown_spec_lists_shipped_ones(capsys):
    assert cli(["run", "no-such-spec"]) == 2
    assert "demo" in capsys.readouterr().err


@pytest.mark.parametrize("via", ["api", "cli"])
def test_existing_run_is_refused_unless_resumed_or_overwritten(tmp_path, spec_factory, capsys, via):
    """Both seams refuse to start a fresh run over a finished one (exit 2, naming the way out in their own terms:
    the library never names CLI flags), and both resume (re-export) or start over when asked."""
    from rewardtune.errors import ExistingRunError

    spec = spec_factory(train={"steps": 1})
    p, out = _write(tmp_path, spec), tmp_path / "o"

    def go(resume: bool = False, overwrite: bool = False) -> int:
        if via == "cli":
            return cli(["run", str(p), "-o", str(out), "--no-progress"] + ["--resume"] * resume
                        + ["--overwrite"] * overwrite)
        try:
            api.run(spec, output_dir=out, progress=False, resume=resume, overwrite=overwrite)
        except ExistingRunError as e:
            print(e, file=__import__("sys").stderr)
            return e.exit_code
        return 0

    assert go() == 0
    assert go() == 2  # bad input: the directory holds a run
    err = capsys.readouterr().err
    if via == "cli":
        assert "--resume" in err and "--overwrite" in err
    else:
        assert "Resume it" in err and "--" not in err
    assert go(overwrite=True) == 0
    assert go(resume=True) == 0  # already done: re-exports


def test_sigusr2_checkpoints_and_stops_then_resume_finishes(tmp_path, spec_factory):
    previous = control.install_signal_handlers()
    try:
        def preempt(ev):
            if ev.step == 2:
                os.kill(os.getpid(), signal.SIGUSR2)

        r = api.run(spec_factory(train={"steps": 4}), output_dir=tmp_path, progress=False, callbacks=[preempt])
    finally:
        control.restore_signal_handlers(previous)
    assert r.stopped_early and r.steps_done == 2 and "SIGUSR2" in r.stop_reason
    assert (tmp_path / "checkpoints" / "step_00000002" / "state.json").exists()
    r2 = api.run(spec_factory(train={"steps": 4}), output_dir=tmp_path, progress=False, resume=True)
    assert r2.resumed_from == 2 and r2.steps_done == 4 and not r2.stopped_early


def test_full_unet_training_exports_the_unet_and_its_kl_pulls_toward_the_frozen_base(tmp_path, spec_factory):
    """Full fine-tuning with a KL term keeps a frozen copy of the base UNet: the KL is 0 at the first step (the copy
    equals the trained UNet), grows as the trained one moves (the copy stays put), and pulls the weights toward
    the base (a run without it drifts further)."""
    from diffusers import UNet2DConditionModel

    from rewardtune.rewards._weights import resolve_weights

    base = UNet2DConditionModel.from_pretrained(Path(resolve_weights("zoo:sd1")) / "unet").state_dict()
    drift, kl = {}, []
    for coeff in (0.0, 50.0):
        spec = spec_factory({"name": "draft_k", "k": 1, "kl_coeff": coeff},
                            model={"pretrained": "zoo:sd1", "trainable": {"type": "full"}},
                            train={"steps": 3, "lr": 1e-4}, logging={"eval_prompts": 1})
        r = api.run(spec, output_dir=tmp_path / str(coeff), progress=False,
                    callbacks=[lambda ev: kl.append(ev.metrics["kl"]) if "kl" in ev.metrics else None])
        tuned = UNet2DConditionModel.from_pretrained(r.weights_path).state_dict()
        assert tuned.keys() == base.keys()
        drift[coeff] = sum(float((tuned[n] - base[n]).float().pow(2).sum()) for n in base)
    assert drift[0.0] > 0  # the export is the trained UNet
    assert len(kl) == 3 and kl[0] == 0.0 and kl[-1] > 0, kl
    assert drift[50.0] < drift[0.0], drift


@pytest.mark.skipif(not __import__("importlib").util.find_spec("tensorboard"), reason="tensorboard not installed")
def test_tensorboard_events_written(tmp_path, spec_factory):
    api.run(spec_factory(train={"steps": 1}, logging={"tensorboard": True}), output_dir=tmp_path, progress=False)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_ema_weights_are_exported(tmp_path, spec_factory):
    from safetensors.torch import load_file

    plain = api.run(spec_factory(train={"steps": 3}), output_dir=tmp_path / "plain", progress=False)
    ema = api.run(spec_factory(train={"steps": 3}, model={"pretrained": "zoo:sd1", "ema": {"decay": 0.5},
                                                          "trainable": {"type": "lora", "rank": 4, "alpha": 16}}),
                  output_dir=tmp_path / "ema", progress=False)
    a = load_file(str(plain.weights_path / "pytorch_lora_weights.safetensors"))
    b = load_file(str(ema.weights_path / "pytorch_lora_weights.safetensors"))
    up = [k for k in a if "lora_B" in k or "lora.up" in k]
    # B starts at zero, so the EMA (decay 0.5) trails the raw weights: smaller, and not equal
    assert sum(float(b[k].abs().sum()) for k in up) < sum(float(a[k].abs().sum()) for k in up)


def test_ema_survives_an_interrupt_and_resume(tmp_path, spec_factory):
    """The EMA weights are checkpointed and restored: stopped at step 2 and resumed, the exported (EMA) LoRA is the
    uninterrupted run's, bit for bit."""
    from safetensors.torch import load_file

    spec = spec_factory(train={"steps": 4, "checkpoint_every": 2},
                        model={"pretrained": "zoo:sd1", "ema": {"decay": 0.5},
                               "trainable": {"type": "lora", "rank": 4, "alpha": 16}})
    whole = api.run(spec, output_dir=tmp_path / "whole", progress=False)
    part = api.run(spec, output_dir=tmp_path / "part", progress=False,
                   callbacks=[lambda ev: ev.step == 2 and control.request_stop("t")])
    assert part.stopped_early and part.steps_done == 2
    resumed = api.run(spec, output_dir=tmp_path / "part", progress=False, resume=True)
    assert resumed.resumed_from == 2 and resumed.eval_after == whole.eval_after
    a = load_file(str(whole.weights_path / "pytorch_lora_weights.safetensors"))
    b = load_file(str(resumed.weights_path / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mid_run_eval_grids_every_images_every_steps(tmp_path, spec_factory):
    """`logging.images_every: 2` over 5 steps: eval grids and eval metrics at steps 2 and 4, between 'before' and
    'after' (the last step's eval is the 'after' one)."""
    evals = []

    class Recorder:
        def on_eval(self, ev):
            evals.append(ev)

    r = api.run(spec_factory(train={"steps": 5}, logging={"images_every": 2}), output_dir=tmp_path,
                progress=False, callbacks=[Recorder()])
    assert [Path(e.grid_path).name for e in evals] == ["before.png", "step_000002.png", "step_000004.png",
                                                       "after.png"]
    assert [e.step for e in evals] == [0, 2, 4, 5]
    assert all((tmp_path / "images" / n).is_file() for n in ("step_000002.png", "step_000004.png"))
    logged = {rec["step"]: rec for rec in RunDir(tmp_path).metrics() if "eval/test-brightness" in rec}
    assert sorted(logged) == [0, 2, 4, 5]
    assert logged[5]["eval/test-brightness"] == r.eval_after["test-brightness"]
    assert logged[2]["eval/test-brightness"] != logged[0]["eval/test-brightness"]  # the weights of step 2


def test_adamw8bit_without_bitsandbytes_names_the_extra(tmp_path, spec_factory):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed")
    from rewardtune.spec.preflight import PreflightError

    with pytest.raises(PreflightError, match=r"rewardtune\[bnb\]") as ei:  # checked before any model loads
        api.run(spec_factory(train={"steps": 1, "optimizer": "adamw8bit"}), output_dir=tmp_path, progress=False)
    assert ei.value.exit_code == 4


def test_resumed_run_reports_the_original_before_eval(tmp_path, spec_factory):
    first = api.run(spec_factory(train={"steps": 2}), output_dir=tmp_path, progress=False,
                    callbacks=[lambda ev: ev.step == 1 and control.request_stop("t")])
    assert first.stopped_early
    second = api.run(spec_factory(train={"steps": 2}), output_dir=tmp_path, progress=False, resume=True)
    assert second.eval_before == first.eval_before
    # the 'after' eval is of the resumed run's final weights: what an uninterrupted run reports
    whole = api.run(spec_factory(train={"steps": 2}), output_dir=tmp_path / "whole", progress=False)
    assert second.eval_after == whole.eval_after and set(whole.eval_after) == {"test-brightness", "objective"}
    assert second.eval_after != second.eval_before


def test_tiny_runs_default_to_a_separate_dir_and_can_be_rerun(tmp_path, monkeypatch, spec_factory):
    monkeypatch.chdir(tmp_path)
    p = _write(tmp_path, spec_factory(train={"steps": 1}))
    for _ in range(2):
        assert cli(["run", str(p), "--tiny", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "t-tiny" / "lora").is_dir() and not (tmp_path / "runs" / "t").exists()


def test_shipped_spec_by_name(tmp_path):
    out = tmp_path / "o"
    assert cli(["run", "demo", "--tiny", "--no-progress", "-o", str(out), "train.steps=1", "sampling.steps=2",
                 "logging.eval_prompts=1"]) == 0
    assert (out / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert yaml.safe_load((out / "spec.yaml").read_text())["name"] == "demo"


def test_the_library_checks_spec_directory_and_weights_before_loading(tmp_path, spec_factory, monkeypatch):
    """`rewardtune.run` makes the checks `rewardtune run` makes, in its order, before any model loads: the spec's
    preflight, then the output directory, then every checkpoint (one message naming each missing one and the
    command that fetches them). A failed check leaves no directory behind."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # a missing checkpoint is reported, never fetched
    from rewardtune.errors import MissingWeightsError, OutputDirError
    from rewardtune.spec.preflight import PreflightError

    absent = {"pretrained": "someone/absent-pipeline"}
    spec = spec_factory(model={"pretrained": str(tmp_path / "no-such-pipeline")})
    with pytest.raises(PreflightError, match="no-such-pipeline"):
        api.run(spec, output_dir=tmp_path / "o", progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="is a file"):
        api.run(spec_factory(model=absent), output_dir=tmp_path / "file", progress=False)
    p = _write(tmp_path, spec_factory(model=absent))
    with pytest.raises(MissingWeightsError) as e:
        api.run(p, ["train.steps=2"], output_dir=tmp_path / "a" / "o", progress=False)
    assert "someone/absent-pipeline" in str(e.value)
    assert f"`rewardtune weights {p} train.steps=2 --download`" in str(e.value)
    assert "offline mode is on" in str(e.value)
    assert not (tmp_path / "a").exists() and not (tmp_path / "o").exists()
    # a tiny pipeline (run on one thread) with a reward whose weights are missing: the caller's threads are kept
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(MissingWeightsError, match="someone/absent-reward"):
            api.run(spec_factory(objective=[{"reward": "clip", "weights": "someone/absent-reward"}]),
                    output_dir=tmp_path / "o", progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_ctrl_c_stops_the_checks_and_downloads_before_loading_at_once():
    """`rewardtune run` installs handlers that only set a flag (a run checkpoints, then stops); before any model
    loads nothing is written, and a download never reads the flag, so there Ctrl-C must interrupt at once."""
    previous = control.install_signal_handlers((signal.SIGINT,))
    try:
        with pytest.raises(KeyboardInterrupt), control.plain_signals():
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler before the next statement
        assert not control.stop_requested()
        os.kill(os.getpid(), signal.SIGINT)  # outside: the run's handler, which only asks for a stop
        assert control.stop_requested()
    finally:
        control.restore_signal_handlers(previous)
        control.clear_stop()
