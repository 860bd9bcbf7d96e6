"""`rewardtune cancel RUN_DIR`: cancel the SLURM job(s) of a submitted run, or stop a run started here."""
from __future__ import annotations

import typer

from rewardtune.cli.common import console, guarded

HELP = ("Cancel the SLURM job(s) of a submitted run (by run directory); for a run started with `rewardtune run` on "
        "this machine, ask it to stop (it checkpoints its last finished step and exits 3).")


@guarded
def COMMAND(  # noqa: N802
    run_dir: str = typer.Argument(..., help="Run directory printed by `rewardtune submit`."),
) -> None:
    from rewardtune.rundir import RunDir

    rd = RunDir(run_dir)
    if not rd.job_file.exists() and rd.lock_file.exists():
        _stop_local(rd)
        return
    from rewardtune.launch import slurm as L

    ids = L.cancel(run_dir)
    console().print(f"cancel requested for job {', '.join(ids)}; `rewardtune status {run_dir}` shows when it ends",
                    markup=False)


def _stop_local(rd) -> None:
    """SIGTERM to the process holding the run's lock: the run stops within one UNet call, checkpoints, exits 3."""
    import os
    import signal
    import socket

    from rewardtune.errors import UsageError

    holder = rd.lock_holder()
    if holder is None:
        raise UsageError(f"no run is in progress in {rd.path} (its lock is free): nothing to cancel.")
    pid, host = holder.get("pid"), holder.get("host")
    if host != socket.gethostname() or not isinstance(pid, int):
        raise UsageError(f"the run in {rd.path} runs on {host} (pid {pid}): stop it there with `kill -TERM {pid}`.")
    os.kill(pid, signal.SIGTERM)
    console().print(f"stop requested for pid {pid}; it checkpoints its last finished step and exits. "
                    f"`rewardtune status {rd.path}` shows when it has.", markup=False, soft_wrap=True)
