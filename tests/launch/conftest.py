"""The `slurm` tests need a reachable SLURM cluster. `nox -s slurm` starts one first; otherwise, as root, the
session starts scripts/slurm/start-local-slurm.sh itself (and stops what it started). Elsewhere they skip, saying
why."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START = ROOT / "scripts" / "slurm" / "start-local-slurm.sh"
STOP = ROOT / "scripts" / "slurm" / "stop-local-slurm.sh"
SKIP_CODE = 77  # start-local-slurm.sh: "cannot run SLURM here"


def cluster_reachable() -> tuple[bool, str]:
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False, "sbatch/scontrol not on PATH"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20).stdout
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"scontrol/sinfo failed: {e}"
    if "is UP" not in ping:
        return False, f"slurmctld not answering: {ping.strip() or 'no reply'}"
    if not any(s.strip().rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in nodes.split()):
        return False, f"no usable node (sinfo: {nodes.split()})"
    if shutil.which("sacct") is None or subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True,
                                                       timeout=20).returncode != 0:
        return False, "sacct does not answer (the tests need accounting for job states)"
    return True, "up"


@pytest.fixture(scope="session")
def slurm_cluster():
    ok, why = cluster_reachable()
    if ok:
        yield
        return
    if os.geteuid() != 0:
        pytest.skip(f"no SLURM cluster reachable ({why}) and not root, so {START.name} cannot start one")
    if os.environ.get("REWARDTUNE_SLURM_NO_START"):
        pytest.skip(f"no SLURM cluster reachable ({why}); REWARDTUNE_SLURM_NO_START is set")
    proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900)
    if proc.returncode == SKIP_CODE:
        pytest.skip(f"cannot run SLURM on this machine: {proc.stderr.strip().splitlines()[-1]}")
    if proc.returncode != 0:
        pytest.fail(f"{START.name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    ok, why = cluster_reachable()
    if not ok:
        pytest.fail(f"{START.name} succeeded but the cluster is not reachable: {why}")
    try:
        yield
    finally:
        subprocess.run(["bash", str(STOP)], capture_output=True, timeout=300)
