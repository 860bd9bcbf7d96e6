"""`rewardtune submit` against a real SLURM cluster (scripts/slurm/start-local-slurm.sh; `nox -s slurm`).

Every job is submitted at once by the `jobs` fixture, so they share the cluster's time; each test then waits for
the job it is about. The tiny spec (tests/launch/data/tiny.yaml) trains 12 steps of a tiny LoRA on CPU.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

DATA = Path(__file__).parent / "data"
TINY = str(DATA / "tiny.yaml")
STEPS = 12
WAIT_S = 420  # per job; the whole module takes ~2-4 min on 2 busy cores
# 2 processes with batch 1 each vs 1 process with batch 2: the same samples and noise, so the only difference is
# float rounding in the gradient average (all-reduce sum / 2 vs the mean over the batch), then 12 Adam steps.
DDP_ATOL = 1e-5


def submit(name: str, tmp: Path, *overrides: str, **flags):
    from rewardtune.launch.slurm import submit as _submit

    return _submit(TINY, list(overrides), tiny=True, output_dir=tmp / name, **flags)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, slurm_cluster):
    """Submit every job of this module up front; the environment (one thread per process) travels to the jobs."""
    tmp = tmp_path_factory.mktemp("slurm-runs")
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        from rewardtune.launch import slurm as L

        out = {
            "cancel": submit("cancel", tmp, "train.steps=100000"),
            "ref": None,  # submitted through the CLI by test_submit_cli_prints_and_finishes
            "preempt": submit("preempt", tmp),
            "ddp": submit("ddp", tmp, tasks_per_node=2),
            "fail": submit("fail", tmp, "objective[0].reward=launch-explode"),
            "bounded": submit("bounded", tmp, "train.steps=100000", max_requeues=0),
            "array": submit("array", tmp, "train.steps=2", array=2),
        }
        from typer.testing import CliRunner

        from rewardtune.cli.main import app

        res = CliRunner().invoke(app, ["submit", TINY, "--tiny", "-o", str(tmp / "ref")], env={"COLUMNS": "300"})
        assert res.exit_code == 0, res.output
        out["ref_cli"] = res
        # signal the preemption as soon as a job has trained a few steps, whatever test pytest runs meanwhile
        out["preempt_sent"] = interrupt_when_trained(out["preempt"], 2)
        out["bounded_sent"] = interrupt_when_trained(out["bounded"], 1)
        out["ddp_sent"] = interrupt_when_trained(out["ddp"], 3)
        out["ref"] = L.Submission.load(tmp / "ref")  # no submitit job objects: followed from the record alone
        yield out
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
        for sub in list(locals().get("out", {}).values()):  # whatever a failed test left running
            if hasattr(sub, "job_id") and not any(e["event"] in ("finished", "failed") for e in events(sub.run_dir)):
                subprocess.run(["scancel", sub.job_id], capture_output=True)


# ----------------------------------------------------------------------------------------------------- helpers
def interrupt_when_trained(sub, steps: int) -> dict:
    """In a thread: once the job has logged `steps` steps, send SIGUSR2 as SLURM does before a time limit
    (submitit's `_interrupt(timeout=True)`; `_interrupt()` alone also sends SIGTERM, which races with it)."""
    import threading

    sent: dict = {}

    def watch() -> None:
        try:
            wait_for(lambda: len(steps_logged(sub.run_dir)) >= steps, f"job {sub.job_id} to train {steps} steps",
                     poll=0.05)
            sent["after_step"] = len(steps_logged(sub.run_dir))
            sub.jobs[0]._interrupt(timeout=True)
        except BaseException as e:  # noqa: BLE001  (reported by the test)
            sent["error"] = repr(e)
        finally:
            sent["done"] = True

    threading.Thread(target=watch, daemon=True).start()
    return sent


def steps_logged(run_dir: Path) -> list[int]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in rec:
            out.append(rec["step"])
    return out


def wait_for(cond, what: str, timeout: float = WAIT_S, poll: float = 0.2):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def events(run_dir: Path) -> list[dict]:
    from rewardtune.launch.slurm import read_events

    return read_events(run_dir)


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True,
                         text=True).stdout.split()
    return out[0] if out else ""


def lora(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    p = Path(run_dir) / "lora" / "pytorch_lora_weights.safetensors"
    assert p.exists(), f"no final LoRA in {run_dir}: {sorted(x.name for x in Path(run_dir).iterdir())}"
    return load_file(str(p))


def cli(*args: str):
    from typer.testing import CliRunner

    from rewardtune.cli.main import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})


# ------------------------------------------------------------------------------------------------------- tests
def test_cancel(jobs):
    sub = jobs["cancel"]
    wait_for(lambda: len(steps_logged(sub.run_dir)) >= 2, "the long job to train 2 steps")
    st = cli("status", str(sub.run_dir))
    assert st.exit_code == 0, st.output
    m = re.search(rf"job {sub.job_id}: RUNNING \(step (\d+)\)", st.stdout)
    assert m and int(m.group(1)) >= 2, st.stdout
    res = cli("cancel", str(sub.run_dir))
    assert res.exit_code == 0, res.output
    assert sub.job_id in res.stdout
    wait_for(lambda: sacct_state(sub.job_id).startswith("CANCELLED"), "sacct to report CANCELLED", timeout=90,
             poll=1)
    st = cli("status", str(sub.run_dir))
    assert st.exit_code == 1, st.output
    assert f"job {sub.job_id}: CANCELLED" in st.stdout
    # SLURM sends SIGTERM, then SIGKILL after KillWait; once the job has left squeue nothing may train
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", sub.job_id], capture_output=True,
                                        text=True).stdout.strip(), "the job to leave squeue", timeout=90, poll=1)
    n = len(steps_logged(sub.run_dir))
    time.sleep(3)
    assert len(steps_logged(sub.run_dir)) == n, "the cancelled job kept training"
    assert n < 100000


def test_submit_cli_prints_and_finishes(jobs):
    res, sub = jobs["ref_cli"], jobs["ref"]
    out = res.stdout
    jid = sub.job_id
    assert re.search(rf"submitted job {jid} \(slurm; 1 node, 1 process, 60 min\)", out), out
    assert f"stdout: {sub.stdout[0]}" in out and f"stderr: {sub.stderr[0]}" in out
    assert f"squeue -j {jid}" in out and f"sacct -j {jid}" in out and f"tail -f {sub.stdout[0]}" in out
    [result] = sub.wait(timeout_s=WAIT_S)
    assert result["steps_done"] == STEPS and not result["stopped_early"]
    run = sub.run_dir
    assert steps_logged(run) == list(range(1, STEPS + 1))
    for name in ("spec.yaml", "versions.json", "images/before.png", "images/after.png"):
        assert (run / name).exists(), name
    assert lora(run)
    # the result is readable before the process has exited; SLURM's state follows within seconds
    wait_for(lambda: sacct_state(jid) == "COMPLETED", "sacct to report COMPLETED", timeout=60, poll=0.5)
    st = cli("status", str(run))
    assert st.exit_code == 0, st.output
    assert f"job {jid}: COMPLETED" in st.stdout
    assert f"step {STEPS}" in st.stdout


def test_failed_job_error_reaches_the_caller(jobs):
    from rewardtune.launch.slurm import JobFailedError

    sub = jobs["fail"]
    with pytest.raises(JobFailedError) as ei:
        sub.wait(timeout_s=WAIT_S)
    msg = str(ei.value)
    first = msg.splitlines()[0]
    assert first == f"job {sub.job_id} failed on the cluster: ValueError: the launch-explode reward failed on purpose"
    assert re.search(r'raised at: File ".*launch_rewards\.py", line \d+, in explode', msg), msg
    assert str(sub.stderr[0]) in msg
    wait_for(lambda: sacct_state(sub.job_id) == "FAILED", "sacct to report FAILED", timeout=60, poll=0.5)
    st = cli("status", str(sub.run_dir))
    assert st.exit_code == 1
    assert f"job {sub.job_id}: FAILED" in st.stdout
    assert "ValueError: the launch-explode reward failed on purpose" in st.stdout
    assert any(e["event"] == "failed" and "launch-explode" in e["error"] for e in events(sub.run_dir))


def test_preempted_job_checkpoints_requeues_and_ends_equal(jobs):
    import torch

    sub, sent = jobs["preempt"], jobs["preempt_sent"]
    wait_for(lambda: sent.get("done"), "the preemption signal to be sent")
    assert "error" not in sent, sent["error"]
    [result] = sub.wait(timeout_s=WAIT_S)
    assert result["steps_done"] == STEPS and result["resumed_from"] is not None
    ev = events(sub.run_dir)
    kinds = [e["event"] for e in ev]
    assert kinds == ["submitted", "started", "stopped", "requeued", "started", "finished"], kinds
    stopped = ev[2]
    assert 2 <= stopped["step"] < STEPS, stopped
    assert "SIGUSR2" in stopped["reason"]
    assert stopped["checkpoint"].endswith(f"step_{stopped['step']:08d}"), "checkpoint written at the stop"
    assert ev[3]["requeues"] == 1 and ev[4]["resume"] is True and ev[4]["attempt"] == 2
    assert result["resumed_from"] == stopped["step"]
    # the resumed attempt went on from the checkpoint: every step trained exactly once
    assert steps_logged(sub.run_dir) == list(range(1, STEPS + 1))
    ref = jobs["ref"]
    ref.wait(timeout_s=WAIT_S)
    a, b = lora(sub.run_dir), lora(ref.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs from the uninterrupted run"
    st = cli("status", str(sub.run_dir))
    assert "requeued 1x" in st.stdout


def test_requeues_are_bounded(jobs):
    from rewardtune.launch.slurm import JobFailedError

    sub, sent = jobs["bounded"], jobs["bounded_sent"]
    wait_for(lambda: sent.get("done"), "the preemption signal to be sent")
    assert "error" not in sent, sent["error"]
    with pytest.raises(JobFailedError) as ei:
        sub.wait(timeout_s=WAIT_S)
    first = str(ei.value).splitlines()[0]
    assert first.startswith(f"job {sub.job_id} failed on the cluster: preempted at step "), first
    assert "not requeued: requeue limit reached (0)" in first
    ev = events(sub.run_dir)
    assert [e["event"] for e in ev if e["event"] in ("stopped", "requeue_refused", "requeued")] == \
        ["stopped", "requeue_refused"]
    [stopped] = [e for e in ev if e["event"] == "stopped"]
    assert Path(stopped["checkpoint"]).exists(), "the checkpoint written on the signal is kept for --resume"


def test_two_task_gloo_data_parallel_preempted_matches_one_process(jobs):
    sub, sent = jobs["ddp"], jobs["ddp_sent"]
    [result] = sub.wait(timeout_s=WAIT_S)
    assert "error" not in sent, sent["error"]
    assert result["steps_done"] == STEPS
    # preempted too: both ranks stop at the same step, rank 0 checkpoints, the 2-task job requeues and resumes
    ev = events(sub.run_dir)
    assert [e["event"] for e in ev] == ["submitted", "started", "stopped", "requeued", "started", "finished"], ev
    assert [e["world_size"] for e in ev if e["event"] == "started"] == [2, 2], "rank 0 alone writes the records"
    assert 3 <= ev[2]["step"] < STEPS and result["resumed_from"] == ev[2]["step"]
    assert steps_logged(sub.run_dir) == list(range(1, STEPS + 1)), "metrics written once per step (rank 0)"
    # rank 1 ran too, and wrote nothing of its own into the run directory
    rank1 = [Path(str(p).replace("_0_log.", "_1_log.")) for p in (sub.stdout[0], sub.stderr[0])]
    assert "global_rank=1(2)" in "".join(p.read_text() for p in rank1 if p.exists())
    ref = jobs["ref"]
    ref.wait(timeout_s=WAIT_S)
    a, b = lora(sub.run_dir), lora(ref.run_dir)
    assert a.keys() == b.keys()
    moved = max(float(v.abs().max()) for k, v in b.items() if ".lora.up." in k or "lora_B" in k)
    assert moved > 100 * DDP_ATOL, f"the LoRA barely trained ({moved}); the comparison would prove nothing"
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= DDP_ATOL, f"2 ranks x batch 1 differ from 1 rank x batch 2 by {worst} (> {DDP_ATOL})"


def test_dry_run_matches_the_submitted_script(jobs):
    """What --dry-run prints is what was handed to sbatch (the job folder pattern aside)."""
    from rewardtune.launch.slurm import launcher_with, sbatch_script
    from rewardtune.spec.load import load_spec

    sub = jobs["ref"]
    submitted = (sub.folders[0] / f"{sub.job_id}_submission.sh").read_text()
    spec = load_spec(TINY, tiny=True)
    printed = sbatch_script(launcher_with(spec.launcher), spec.name, sub.run_dir)
    assert printed == submitted.replace(f"/slurm/{sub.job_id}/", "/slurm/%j/")


def test_array_runs_one_seed_per_task(jobs):
    import yaml

    sub = jobs["array"]
    assert len(sub.job_ids) == 2 and all(j.startswith(sub.job_id + "_") for j in sub.job_ids)
    results = sub.wait(timeout_s=WAIT_S)
    assert [r["steps_done"] for r in results] == [2, 2]
    seeds = [yaml.safe_load((sub.run_dir / f"seed-{s}" / "spec.yaml").read_text())["train"]["seed"] for s in (7, 8)]
    assert seeds == [7, 8]
    a, b = lora(sub.run_dir / "seed-7"), lora(sub.run_dir / "seed-8")
    assert any(not (a[k] == b[k]).all() for k in a), "two seeds trained the same weights"
    st = cli("status", str(sub.run_dir))
    assert all(f"job {j}:" in st.stdout for j in sub.job_ids), st.stdout
