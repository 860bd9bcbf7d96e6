"""`rewardtune ARGS` in a fresh process, as a user runs it: the one helper the CLI tests share."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rt(*args: str, cwd: Path | None = None, columns: int = 200, timeout: float | None = 900,
       preexec_fn: Callable[[], None] | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run `rewardtune ARGS` from `cwd` (default: the checkout) and return the finished process. The environment
    is built, not inherited, so a developer's HF_HOME, COLUMNS or proxy never changes a result: offline, this
    checkout first on the path, a terminal `columns` wide; `env` adds or replaces variables (HF_HUB_CACHE=...).
    `preexec_fn` runs in the child before Python starts (a memory limit, say)."""
    base = {"COLUMNS": str(columns), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
            "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([sys.executable, "-m", "rewardtune.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**base, **env}, timeout=timeout, preexec_fn=preexec_fn)
