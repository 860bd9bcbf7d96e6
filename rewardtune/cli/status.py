"""`rewardtune status RUN_DIR`: the state of a submitted run's job(s), with a failed job's error in plain words."""
from __future__ import annotations

import typer

from rewardtune.cli.common import console, guarded

HELP = "Show the SLURM state of a submitted run (by run directory), its requeues, and why it failed if it did."


@guarded
def COMMAND(  # noqa: N802
    run_dir: str = typer.Argument(..., help="Run directory printed by `rewardtune submit`."),
) -> None:
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
