"""`submit` copies the resolved spec into the job folder: the job never reads the spec from the caller's working
directory, so a shipped name or a relative path works on the node, and an edit after submitting changes nothing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rewardtune.cli.main import app
from rewardtune.launch import slurm as L

DATA = Path(__file__).parent / "data"
SMALL = ["train.steps=1", "sampling.steps=2", "logging.eval_prompts=1", "logging.eval_images_per_prompt=1"]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory with no checkout in it, and no sbatch on PATH."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_a_shipped_spec_submitted_outside_the_repository_runs(elsewhere, tmp_path):
    """Before: the job looked for <cwd>/demo and failed on the node with 'spec file not found'."""
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["submit", "demo", "--tiny", *SMALL, "--cluster", "debug", "-o", str(run)],
                             env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "spec: the shipped spec 'demo'" in res.stderr
    copy = run / "slurm" / L.SUBMITTED_SPEC
    assert copy.read_bytes() == (Path(__file__).resolve().parents[2] / "specs" / "demo.yaml").read_bytes()
    assert L.read_job_record(run)["spec_copy"] == str(copy)
    assert (run / "lora").is_dir()


def test_the_job_reads_the_copy_not_the_file_it_was_submitted_from(elsewhere, tmp_path):
    """Submitted with a relative path whose spec imports a file next to it; the original is then changed and moved
    away before the job starts: the job runs the spec as submitted, with its imports found beside the original."""
    spec_dir = tmp_path / "specdir"
    spec_dir.mkdir()
    # its own reward file and name: launch_rewards.py, imported by other tests of this process from tests/launch/data,
    # registered launch-brightness already, and a second registration of a name is an error
    (spec_dir / "copy_rewards.py").write_text(
        "import rewardtune\n\n\n@rewardtune.register_reward('launch-copy-brightness')\n"
        "def brightness(pixels, prompts):\n    return pixels.mean(dim=(1, 2, 3))\n")
    text = (DATA / "tiny.yaml").read_text().replace("[launch_rewards.py]", "[copy_rewards.py]").replace(
        "reward: launch-brightness", "reward: launch-copy-brightness")
    (spec_dir / "tiny.yaml").write_text(text)
    os.chdir(spec_dir)
    run = tmp_path / "run"
    sub = L.submit("tiny.yaml", SMALL, tiny=True, cluster="local", output_dir=run)
    (spec_dir / "tiny.yaml").write_text("this is no longer a spec: {")  # edited after submitting...
    os.chdir(elsewhere)  # ...and the caller's working directory is elsewhere
    sub.wait(timeout_s=600)
    assert "name: launch-tiny" in (run / "spec.yaml").read_text()
    assert [e["event"] for e in L.read_events(run)][-1] == "finished"
    assert (run / "slurm" / L.SUBMITTED_SPEC).read_text() == text
