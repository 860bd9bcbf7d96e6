"""Property test: thousands of mutated specs (tests/spec_fuzz.py) give a valid spec or a clean usage error (exit 2;
4 for a missing extra), never another exception, each in bounded time, all in bounded memory; a handful go
through the real `rewardtune validate`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import spec_fuzz

ROOT = Path(__file__).resolve().parents[1]


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


CASES = int(os.environ.get("REWARDTUNE_FUZZ_CASES", "2000"))  # ~4 s; nightly / by hand: 20000 and more


def test_mutated_specs_validate_or_fail_cleanly():
    # a child process: its peak RSS is the fuzz run's own, and its address space is capped (1 GiB) so that a
    # regression (a YAML bomb expanding) fails fast instead of swapping
    proc = subprocess.run([sys.executable, str(ROOT / "tests/spec_fuzz.py"), "--cases", str(CASES), "--seed", "0",
                           "--time-limit", "5", "--memory-limit-mb", "1024"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["n_failures"] == 0, json.dumps(res["failures"][:3], indent=1)
    assert sum(res["outcomes"].values()) == CASES
    assert res["outcomes"]["valid"] > 0 and res["outcomes"]["exit 2"] > CASES // 2, res["outcomes"]
    assert res["slowest_s"] < 5, res  # measured: ~0.1 s at worst (a 3,000-deep nesting); typical 1-2 ms
    assert res["peak_rss_kb"] < 300_000, res  # measured: ~36 MB for 10,000 cases
    assert not res["torch_imported"]


def test_mutated_specs_through_the_cli(tmp_path: Path):
    files = spec_fuzz.mutated_files(6, seed=1, folder=tmp_path)
    (tmp_path / "bomb.yaml").write_bytes(spec_fuzz.bomb())
    for f in [*files, tmp_path / "bomb.yaml"]:
        proc = subprocess.run([sys.executable, "-m", "rewardtune.cli.main", "validate", str(f)], capture_output=True,
                              text=True, cwd=ROOT, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}, timeout=60,
                              preexec_fn=_limit_memory)
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out and "--debug" not in out, out
        if proc.returncode == 0:
            assert f"valid {f}" in " ".join(proc.stdout.split()), out
        else:
            assert proc.returncode == 2 and f"in {f}" in out and "error:" in out, out
    assert "refused as a YAML bomb" in out
