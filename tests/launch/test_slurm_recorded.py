"""The SLURM launcher below the cluster, without one (and without root): job states parsed from sacct/squeue
output recorded on a real cluster (scripts/slurm/record-job-states.sh into data/recorded/), the refusal to start
a run in a directory whose job is still live, and the requeue bound. The real-cluster tests are test_slurm.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from rewardtune.errors import UsageError
from rewardtune.launch.slurm import TrainingJob, parse_job_states, read_events, refuse_if_live

RECORDED = Path(__file__).parent / "data" / "recorded"


def _recorded(case: str) -> tuple[dict, str, str]:
    job = (RECORDED / f"{case}.jobid.txt").read_text().strip()
    sacct = (RECORDED / f"{case}.sacct.txt").read_text()
    ids = [line.split("|")[0] for line in sacct.splitlines()] if case.startswith("array") else [job]
    return {"job_id": job, "job_ids": ids, "cluster": "slurm"}, sacct, (RECORDED / f"{case}.squeue.txt").read_text()


#: case -> state of each job, as the launcher must read it
EXPECTED = {
    "completed": ["COMPLETED"],
    "failed": ["FAILED"],
    "running": ["RUNNING"],
    "pending": ["PENDING"],  # held in the queue
    "cancelled": ["CANCELLED"],  # sacct says "CANCELLED by 0"
    "array-running": ["RUNNING", "RUNNING"],
    "array-requeued": ["PENDING", "PENDING"],  # sacct REQUEUED, squeue fresher: back in the queue
}
LIVE = {"running", "pending", "array-running", "array-requeued"}


def test_every_recorded_case_is_covered():
    assert sorted(p.name.removesuffix(".jobid.txt") for p in RECORDED.glob("*.jobid.txt")) == sorted(EXPECTED)


@pytest.mark.parametrize("case", list(EXPECTED))
def test_job_states_parsed_from_recorded_sacct_and_squeue(case):
    rec, sacct, squeue = _recorded(case)
    assert list(parse_job_states(rec, sacct, squeue).values()) == EXPECTED[case]


def test_job_states_without_accounting_or_after_the_queue():
    rec, sacct, squeue = _recorded("running")
    assert parse_job_states(rec, "", squeue) == {rec["job_id"]: "RUNNING"}  # no slurmdbd: squeue alone
    rec, sacct, squeue = _recorded("completed")
    assert squeue == "" and parse_job_states(rec, sacct, "") == {rec["job_id"]: "COMPLETED"}
    assert parse_job_states(rec, "", "") == {rec["job_id"]: "UNKNOWN"}
    # a job finishing: squeue's COMPLETING must not hide sacct's final state
    assert parse_job_states(rec, sacct, f"{rec['job_id']}|COMPLETING\n") == {rec["job_id"]: "COMPLETED"}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_a_run_directory_of_a_live_job_is_refused(case, tmp_path):
    rec, sacct, squeue = _recorded(case)
    states = parse_job_states(rec, sacct, squeue)
    if case in LIVE:
        with pytest.raises(UsageError, match=f"belongs to job {rec['job_id']}, which is still") as ei:
            refuse_if_live(tmp_path, rec, states)
        assert "Cancel it first" in str(ei.value) and ei.value.exit_code == 2
        assert set(states.values()) <= set(str(ei.value).replace(",", " ").replace(".", " ").split())
    else:
        refuse_if_live(tmp_path, rec, states)  # finished: the directory may be reused (resumed)


def test_requeues_stop_at_the_bound(tmp_path):
    """submitit calls checkpoint() on preemption: a resubmission (resuming) until max_requeues, then none, and the
    refusal is recorded for `status` to explain."""
    job = TrainingJob("spec.yaml", (), True, str(tmp_path), max_requeues=2)
    chain = []
    while True:
        nxt = job.checkpoint()
        if nxt is None:
            break
        job = nxt.function
        chain.append((job.requeues, job.resume))
        assert len(chain) <= 5, "the requeue bound is not enforced"
    assert chain == [(1, True), (2, True)]
    events = [(e["event"], e.get("requeues")) for e in read_events(tmp_path)]
    assert events == [("requeued", 1), ("requeued", 2), ("requeue_refused", 2)]
    assert "requeue limit reached (2)" in read_events(tmp_path)[-1]["reason"]
