"""`rewardtune ARGS` in a fresh process, as a user runs it: the one helper the CLI tests share."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def env(columns: int = 200, **extra: str) -> dict[str, str]:
    """The environment of a user's process, built, not inherited, so a developer's HF_HOME, COLUMNS or proxy never
    changes a result: offline, this checkout first on the path, a terminal `columns` wide; `extra` adds or replaces
    variables (HF_HUB_CACHE=...)."""
    return {"COLUMNS": str(columns), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
            "HOME": os.environ.get("HOME", "/tmp"), **extra}


def rt(*args: str, cwd: Path | None = None, columns: int = 200, timeout: float | None = 900,
       preexec_fn: Callable[[], None] | None = None, **extra: str) -> subprocess.CompletedProcess:
    """Run `rewardtune ARGS` from `cwd` (default: the checkout) in `env(columns, **extra)` and return the finished
    process. `preexec_fn` runs in the child before Python starts (a memory limit, say)."""
    return subprocess.run([sys.executable, "-m", "rewardtune.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env(columns, **extra), timeout=timeout, preexec_fn=preexec_fn)


def _sigint_as_a_terminal_gives_it() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str, columns: int = 200, **extra: str) -> subprocess.Popen:
    """`rewardtune ARGS` started like `rt`, still running (to signal it), its output piped as text. Its SIGINT is
    the default one, as a terminal's foreground job gets it: a test suite started in the background by a shell
    without job control (`cmd &` in a script) ignores SIGINT, every child inherits that, and Python then installs
    no KeyboardInterrupt handler, so a Ctrl-C test would wait forever."""
    return subprocess.Popen([sys.executable, "-m", "rewardtune.cli.main", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(columns, **extra),
                            preexec_fn=_sigint_as_a_terminal_gives_it)
