"""`submit` checks the run directory before submitting anything: usable, and no run in progress in it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from rewardtune.cli.main import app

TINY = str(Path(__file__).parent / "data" / "tiny.yaml")


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})


def test_submit_refuses_a_directory_a_run_is_using(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    code = ("import sys, time; from rewardtune.rundir import RunDir; RunDir(sys.argv[1]).lock(); "
            "print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = cli("submit", TINY, "--tiny", "--cluster", "debug", "-o", str(run))
        assert res.exit_code == 2, res.output
        assert f"in use by a run (pid {holder.pid} on" in res.stderr
        assert not (run / "slurm").exists() and not (run / "checkpoints").exists(), "nothing was submitted"
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_submit_refuses_an_unusable_directory_before_submitting(tmp_path):
    (tmp_path / "f").write_text("a file")
    res = cli("submit", TINY, "--tiny", "--cluster", "debug", "-o", str(tmp_path / "f" / "run"))
    assert res.exit_code == 2, res.output
    assert "is a file, not a directory" in res.stderr and "Traceback" not in res.output
