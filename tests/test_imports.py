"""Imports are cheap: listing rewards, validating a spec, `--help` and importing any CLI verb module never import
torch or the model libraries (lm-eval keeps heavy imports inside the command). One suite, one child process each."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "peft")
VERB_MODULES = sorted(f"rewardtune.cli.{p.stem}" for p in (ROOT / "rewardtune" / "cli").glob("*.py")
                      if p.stem not in ("__init__", "__main__"))
CASES = {
    "import every CLI module": ("import", ["rewardtune", *VERB_MODULES, "rewardtune.launch.slurm"]),
    "--help": ("argv", ["--help"]),
    "rewards": ("argv", ["rewards"]),
    "rewards pickscore": ("argv", ["rewards", "pickscore"]),
    "validate a valid spec": ("argv", ["validate", "specs/demo.yaml"]),
    "validate a bad spec": ("argv", ["validate", "tests/fixtures/bad_specs/unknown_keys.yaml"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_no_heavy_import(case):
    kind, args = CASES[case]
    if kind == "import":
        body = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in args)
    else:
        body = f"from rewardtune.cli.main import main\ntry:\n    main({args!r})\nexcept SystemExit as e:\n    print('EXIT', e.code)\n"
    code = body + textwrap.dedent(f"""
        import sys
        print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    assert "HEAVY []" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
    if case == "validate a valid spec":
        assert "valid" in p.stdout and "EXIT 0" in p.stdout, p.stdout
    if case == "validate a bad spec":
        assert "EXIT 2" in p.stdout, p.stdout
    if kind == "import":
        assert len(VERB_MODULES) >= 8 and p.returncode == 0, p.stderr
