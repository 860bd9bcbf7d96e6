"""`rewardtune status RUN_DIR`: the state of a run: a submitted run's job(s), with a failed job's error in plain
words, or a run started here with `rewardtune run` (running, done, stopped, failed)."""
from __future__ import annotations

import typer

from rewardtune.cli.common import console, guarded

HELP = ("Show where a run stands (by run directory): a submitted run's SLURM state, requeues and why it failed "
        "(exit 1 when a job failed or was cancelled); or the state of a run started here, with the exit code that "
        "run had (0 done or running, 3 stopped and resumable, 2/4 failed on bad input / missing weights).")


@guarded
def COMMAND(  # noqa: N802
    run_dir: str = typer.Argument(..., help="Run directory (printed by `rewardtune submit` or `rewardtune run`)."),
) -> None:
    from rewardtune.rundir import RunDir

    rd = RunDir(run_dir)
    if not rd.job_file.exists() and any(p.exists() for p in (rd.spec_file, rd.result_file, rd.lock_file)):
        _local(rd)
        return
    from rewardtune.launch import slurm as L

    out = console()
    rec = L.read_job_record(run_dir)
    worst = 0
    for st in L.status(run_dir):
        color = {"COMPLETED": "green", "RUNNING": "cyan", "PENDING": "yellow"}.get(st.state, "red")
        extra = []
        if st.last_step is not None:
            extra.append(f"step {st.last_step}")
        if st.requeues:
            extra.append(f"requeued {st.requeues}x")
        out.print(f"job {st.job_id}: [{color}]{st.state}[/]" + (f" ({', '.join(extra)})" if extra else ""))
        out.print(f"  run dir: {st.run_dir}", markup=False, soft_wrap=True)
        out.print(f"  stdout:  {st.stdout}", markup=False, soft_wrap=True)
        out.print(f"  stderr:  {st.stderr}", markup=False, soft_wrap=True)
        if st.error:
            out.print("  " + st.error.replace("\n", "\n  "), markup=False, soft_wrap=True)
        if st.state not in L.ACTIVE_STATES and st.state != "COMPLETED":
            worst = 1
    if rec.get("cluster") == "slurm":
        out.print(f"[dim]sacct -j {rec['job_id']} -X -o JobID,State,Elapsed,ExitCode,NodeList[/]")
    if worst:
        raise typer.Exit(worst)


def _local(rd) -> None:
    """A run started with `rewardtune run` (or `rewardtune.run`): read from its files and its lock only."""
    out = console()
    st = rd.state()
    res = st["result"] or {}
    state = st["state"]
    color = {"COMPLETED": "green", "RUNNING": "cyan", "STOPPED": "yellow"}.get(state, "red")
    extra = []
    if st["last_step"] is not None:
        extra.append(f"step {st['last_step']}" + (f" of {res['steps']}" if res.get("steps") else ""))
    out.print(f"run: [{color}]{state}[/]" + (f" ({', '.join(extra)})" if extra else ""))
    out.print(f"  run dir: {rd.path}", markup=False, soft_wrap=True)
    if st["holder"]:
        h = st["holder"]
        out.print(f"  process: pid {h.get('pid')} on {h.get('host')}, since {h.get('started')}", markup=False)
    elif state == "STOPPED":
        out.print(f"  stopped: {res.get('stop_reason') or 'requested'}; resumable", markup=False, soft_wrap=True)
    elif state == "FAILED":
        out.print(f"  error: {res.get('error')}", markup=False, soft_wrap=True)
    elif state == "ENDED":
        out.print("  the process ended without recording how (killed?); resumable from its last checkpoint",
                  markup=False)
    if st["checkpoint"]:
        out.print(f"  checkpoint: {st['checkpoint']} (step {st['checkpoint_step']})", markup=False, soft_wrap=True)
    if res.get("weights"):
        out.print(f"  weights: {res['weights']}", markup=False, soft_wrap=True)
    # the run's own exit code: 0 done (or running), 3 stopped and resumable, else what the run exited with
    code = {"COMPLETED": 0, "RUNNING": 0, "STOPPED": 3}.get(state)
    if code is None:
        code = res.get("exit_code") if isinstance(res.get("exit_code"), int) else (3 if st["checkpoint"] else 1)
    if code:
        raise typer.Exit(code)
