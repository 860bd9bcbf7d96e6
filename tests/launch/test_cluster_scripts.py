"""The local-cluster scripts: syntax, and the "cannot run here" exit code (77) the slurm tests read as a skip."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "slurm"


@pytest.mark.parametrize("name", ["start-local-slurm.sh", "stop-local-slurm.sh"])
def test_scripts_parse(name):
    subprocess.run(["bash", "-n", str(SCRIPTS / name)], check=True)


def test_start_script_says_skip_when_not_root(tmp_path):
    cmd = ["bash", str(SCRIPTS / "start-local-slurm.sh")]
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("root without runuser: cannot run the script as an ordinary user")
        cmd = ["runuser", "-u", "nobody", "--", *cmd]
    env = {**os.environ, "SLURM_LOCAL_DIR": str(tmp_path / "state")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 77, proc.stdout + proc.stderr
    assert "SKIP: needs root" in proc.stderr
    assert not (tmp_path / "state").exists(), "it must give up before touching anything"
