"""`rewardtune cancel RUN_DIR`: cancel the SLURM job(s) of a submitted run."""
from __future__ import annotations

import typer

from rewardtune.cli.common import console, guarded

HELP = "Cancel the SLURM job(s) of a submitted run (by run directory)."


@guarded
def COMMAND(  # noqa: N802
    run_dir: str = typer.Argument(..., help="Run directory printed by `rewardtune submit`."),
) -> None:
    from rewardtune.launch import slurm as L

    ids = L.cancel(run_dir)
    console().print(f"cancel requested for job {', '.join(ids)}; `rewardtune status {run_dir}` shows when it ends",
                    markup=False)
