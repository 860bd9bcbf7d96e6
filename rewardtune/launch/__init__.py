"""Launchers. `rewardtune.launch.slurm`: submit a spec to SLURM through submitit (see docs/slurm.md).

    from rewardtune.launch import submit
    sub = submit("my-run.yaml", partition="gpu", gpus_per_node=8)
    sub.wait()

Attributes are imported lazily, so importing this package does not import submitit.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = ("submit", "status", "cancel", "Submission", "JobStatus", "JobFailedError", "TrainingJob")
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from rewardtune.launch import slurm

        return getattr(slurm, name)
    raise AttributeError(f"module 'rewardtune.launch' has no attribute '{name}'")
