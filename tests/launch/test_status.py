"""`rewardtune status` reads only what the project wrote (JSON records and logs), never a pickle from the run
directory: a crafted result pickle next to a failed job must not run."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

from typer.testing import CliRunner

from rewardtune.cli.main import app
from rewardtune.launch import slurm as L

TRACEBACK = ('Traceback (most recent call last):\n  File "/x/rewardtune/launch/slurm.py", line 311, in __call__\n'
             '    result = _engine_run(...)\n  File "/t/launch_rewards.py", line 12, in explode\n'
             '    raise ValueError("boom")\nValueError: boom\n')


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _failed_run(tmp_path: Path, cluster: str = "local") -> tuple[Path, Path]:
    """A run directory as a submitted job that failed leaves it, plus a crafted result pickle where submitit
    keeps the real one."""
    run = tmp_path / "run"
    folder = run / "slurm" / "42"
    folder.mkdir(parents=True)
    err = folder / "42_0_log.err"
    err.write_text("some log line\n")
    L.write_job_record(run, {"cluster": cluster, "job_id": "42", "job_ids": ["42"], "folders": [str(folder)],
                             "stdout": [str(folder / "42_0_log.out")], "stderr": [str(err)],
                             "run_dirs": [str(run)]})
    for ev, data in [("submitted", {}), ("started", {"job_id": "42"}),
                     ("failed", {"job_id": "42", "error": "ValueError: boom", "traceback": TRACEBACK})]:
        L.append_event(run, ev, **data)
    marker = tmp_path / "PWNED"
    with open(folder / "42_0_result.pkl", "wb") as f:  # submitit's name for task 0's result
        pickle.dump(("error", _Payload(marker)), f)
    return run, marker


def test_status_of_a_failed_job_reads_its_json_record_never_the_pickle(tmp_path):
    run, marker = _failed_run(tmp_path)
    res = CliRunner().invoke(app, ["status", str(run)], env={"COLUMNS": "300"})
    assert res.exit_code == 1, res.output  # the job failed
    assert "job 42: FAILED" in res.stdout
    assert "job 42 failed on the cluster: ValueError: boom" in res.stdout
    assert 'raised at: File "/t/launch_rewards.py", line 12, in explode' in res.stdout
    assert not marker.exists(), "status unpickled a file from the run directory"


def test_status_without_a_recorded_traceback_falls_back_to_the_log(tmp_path):
    run, marker = _failed_run(tmp_path)
    events = run / "slurm" / "events.jsonl"
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    events.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "traceback"}) + "\n" for e in lines))
    (run / "slurm" / "42" / "42_0_log.err").write_text("Traceback (most recent call last):\n  File \"/a.py\", line 1,"
                                                       " in f\nMemoryError: out of memory\n")
    res = CliRunner().invoke(app, ["status", str(run)], env={"COLUMNS": "300"})
    assert "MemoryError: out of memory" in res.stdout, res.output
    assert not marker.exists()


def test_a_broken_job_record_is_bad_input(tmp_path):
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "job.json").write_text("{not json")
    res = CliRunner().invoke(app, ["status", str(tmp_path)], env={"COLUMNS": "300"})
    assert res.exit_code == 2 and "cannot be read" in res.stderr and "Traceback" not in res.output
