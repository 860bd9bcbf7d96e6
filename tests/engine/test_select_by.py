"""`logging.select_by`: export the weights of the mid-run eval that a chosen term ranks best, not the last step's,
when training hurts that term (a reward being hacked while a held-out judge watches)."""
from __future__ import annotations

import json

import pytest
import yaml
from rewards_for_tests import register_card
from run_helpers import assert_bitwise_equal, cli, lora, stop_at

import rewardtune.api as api
from rewardtune.engine import control
from rewardtune.errors import SpecError
from rewardtune.rundir import RunDir
from rewardtune.spec.load import load_spec


def _spec(spec_factory, select_by: str = "test-dimness", **train):
    # brightness is optimized, so the dimness monitor falls eval after eval: its best is the first mid-run eval
    return spec_factory(objective=[{"reward": "test-brightness"}, {"reward": "test-dimness", "role": "monitor"}],
                        train={"steps": 6, "keep_checkpoints": 1, **train},
                        logging={"images_every": 2, "select_by": select_by})


def _steps(out) -> list[int]:
    return [c.step for c in RunDir(out).checkpoints()]


def test_the_best_mid_run_eval_is_exported_and_its_checkpoint_kept(tmp_path, spec_factory):
    res = api.run(_spec(spec_factory), output_dir=tmp_path / "sel", progress=False)
    assert res.steps_done == 6 and res.selected_step == 2 and not res.stopped_early
    run = RunDir(tmp_path / "sel")
    best = run.read_best()
    assert best["step"] == 2 and best["metric"] == "test-dimness"
    assert _steps(run.path) == [2, 6]  # keep_checkpoints=1 keeps the newest, and the best beside it
    logged = {r["step"]: r for r in run.metrics() if "eval/test-dimness" in r}
    assert logged[2]["eval/test-dimness"] > logged[4]["eval/test-dimness"] > logged[6]["eval/test-dimness"]
    # the result and the card describe the exported weights: step 2's eval again, on the same fixed noise
    assert res.eval_after["test-dimness"] == pytest.approx(logged[2]["eval/test-dimness"], abs=1e-6)
    assert res.eval_after["test-dimness"] > logged[6]["eval/test-dimness"]
    card = (tmp_path / "sel" / "lora" / "README.md").read_text()
    assert "selected_step: 2" in card and "weights of step 2" in card
    assert json.loads(run.result_file.read_text())["selected_step"] == 2
    # the export is step 2's weights: the LoRA of the same run stopped there
    two = api.run(_spec(spec_factory, steps=2, keep_checkpoints=1) | {"logging": {"images_every": 0,
                                                                                  "eval_prompts": 2}},
                  output_dir=tmp_path / "two", progress=False)
    assert two.selected_step is None
    assert_bitwise_equal(lora(tmp_path / "sel"), lora(tmp_path / "two"))


def test_the_run_command_says_which_step_it_exported(tmp_path, spec_factory, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec(spec_factory)))
    assert cli(["run", str(path), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "eval (held out), step 2 of 6 (select_by)" in out and "done 6 steps" in out


def test_the_last_step_is_exported_when_it_is_the_best(tmp_path, spec_factory):
    res = api.run(_spec(spec_factory, select_by="test-brightness"), output_dir=tmp_path / "last", progress=False)
    assert res.selected_step is None
    api.run(_spec(spec_factory) | {"logging": {"images_every": 2, "eval_prompts": 2}},
            output_dir=tmp_path / "plain", progress=False)
    assert_bitwise_equal(lora(tmp_path / "last"), lora(tmp_path / "plain"))
    assert "selected_step" not in (tmp_path / "last" / "lora" / "README.md").read_text()


def test_a_resumed_run_remembers_the_best_eval(tmp_path, spec_factory):
    spec = _spec(spec_factory, checkpoint_every=100)
    full = api.run(spec, output_dir=tmp_path / "full", progress=False)
    part = api.run(spec, output_dir=tmp_path / "part", progress=False, callbacks=[stop_at(5)])
    assert part.stopped_early and RunDir(tmp_path / "part").read_best()["step"] == 2
    resumed = api.run(spec, output_dir=tmp_path / "part", progress=False, resume=True)
    assert resumed.resumed_from == 5 and resumed.selected_step == full.selected_step == 2
    assert_bitwise_equal(lora(tmp_path / "full"), lora(tmp_path / "part"))
    # --overwrite starts the choice afresh
    api.run(spec_factory(train={"steps": 2}), output_dir=tmp_path / "part", progress=False, overwrite=True)
    assert RunDir(tmp_path / "part").read_best() is None


@pytest.mark.parametrize("logging, needle", [
    ({"select_by": "test-dimnes", "images_every": 2}, "Did you mean 'test-dimness'"),
    ({"select_by": "test-dimness", "images_every": 0}, "the last step's is the only one"),
    ({"select_by": "test-dimness", "images_every": 6}, "set logging.images_every between 1 and 5"),
])
def test_select_by_names_a_term_and_needs_mid_run_evals(spec_factory, logging, needle):
    spec = spec_factory(objective=[{"reward": "test-brightness"}, {"reward": "test-dimness", "role": "monitor"}],
                        train={"steps": 6}, logging=logging)
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert needle in str(e.value) and "logging.select_by" in str(e.value)
    assert load_spec({**spec, "logging": {**spec["logging"], "select_by": "objective", "images_every": 2}})


def test_a_lower_is_better_term_picks_its_lowest_eval(tmp_path, spec_factory):
    # brightness again, under a card that says lower is better: training raises it, so its best is the first eval
    register_card("test-glare", lambda pixels, prompts: pixels.detach().mean(dim=(1, 2, 3)), direction="lower")
    spec = _spec(spec_factory, select_by="test-glare")
    spec["objective"][1] = {"reward": "test-glare", "role": "monitor"}
    res = api.run(spec, output_dir=tmp_path, progress=False)
    assert res.selected_step == 2 and RunDir(tmp_path).read_best()["step"] == 2


def test_a_tie_keeps_the_earlier_eval(tmp_path, spec_factory):
    import torch

    register_card("test-flat", lambda pixels, prompts: torch.full((len(prompts),), 0.5))
    spec = _spec(spec_factory, select_by="test-flat")
    spec["objective"][1] = {"reward": "test-flat", "role": "monitor"}
    res = api.run(spec, output_dir=tmp_path, progress=False)
    assert res.selected_step == 2  # every eval reads 0.5: the first one stays the best, the last one included


def test_best_json_names_the_exported_step_and_a_stale_one_is_dropped_on_resume(tmp_path, spec_factory):
    last = api.run(_spec(spec_factory, select_by="test-brightness"), output_dir=tmp_path / "last", progress=False)
    assert last.selected_step is None and RunDir(tmp_path / "last").read_best()["step"] == 6  # the last step won
    # a record from past the checkpoint a run resumes from (left by a longer attempt) is removed, not trusted
    spec = _spec(spec_factory, checkpoint_every=100)
    api.run(spec, output_dir=tmp_path / "part", progress=False, callbacks=[stop_at(1)])
    run = RunDir(tmp_path / "part")
    run.write_best({"metric": "test-dimness", "step": 4, "value": 9.0, "signed": 9.0, "eval": {}})

    class StopAtOnce:  # stopped again before its first eval: nothing of this attempt replaces the record
        def on_train_start(self, info):
            control.request_stop("test interrupt")

    again = api.run(spec, output_dir=tmp_path / "part", progress=False, resume=True, callbacks=[StopAtOnce()])
    assert again.stopped_early and again.steps_done == 1 and run.read_best() is None
    res = api.run(spec, output_dir=tmp_path / "part", progress=False, resume=True)
    assert res.resumed_from == 1 and res.selected_step == 2 and run.read_best()["step"] == 2
