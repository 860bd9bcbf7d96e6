"""A SLURM job's log shows progress while the job runs (scripts/slurm/start-local-slurm.sh; `nox -s slurm`).

Before, a job's stdout was not a terminal, so the progress bar was drawn once, at the end: `submit` told the user to
`tail -f` a log that stayed empty until the job was over."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

TINY = str(Path(__file__).parent / "data" / "tiny.yaml")


def test_the_job_log_shows_progress_lines_while_the_job_runs(tmp_path, monkeypatch):
    from rewardtune.launch import slurm as L

    go = tmp_path / "go"
    monkeypatch.setenv("REWARDTUNE_TEST_HOLD", str(go))  # SLURM hands the environment to the job
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sub = L.submit(TINY, ["objective[0].reward=launch-hold", "train.steps=6", "logging.progress_every_s=0"],
                   tiny=True, output_dir=tmp_path / "run")
    log = sub.stdout[0]
    try:
        t0 = time.monotonic()
        seen = ""
        while time.monotonic() - t0 < 420:  # queue wait and start-up included
            seen = log.read_text(errors="replace") if log.exists() else ""
            if "train 2/6" in seen:
                break
            time.sleep(1)
        assert "train 1/6" in seen and "train 2/6" in seen, f"no progress in {log} after 420 s:\n{seen[-2000:]}"
        # the reward holds the job at its third step: it is running, and its log already shows two lines
        state = subprocess.run(["squeue", "-h", "-j", sub.job_id, "-o", "%T"], capture_output=True, text=True).stdout
        assert state.strip() == "RUNNING", state
        assert "reward " in seen and "eval@0 launch-hold" in seen
    finally:
        go.touch()
    sub.wait(timeout_s=420)
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("train ")]
    assert [ln.split()[1] for ln in lines] == [f"{i}/6" for i in range(1, 7)]
