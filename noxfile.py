"""Task runner. `nox -s tests` sets everything up on a fresh machine and runs the default suite.

All sessions share one environment in `.nox/env` (torch installed first, pinned, then the project), rebuilt
only when pyproject.toml or TORCH_SPEC changes, so running several sessions does not reinstall torch each time.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
ENV = ROOT / ".nox" / "env"
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"


def _py() -> str:
    return str(ENV / "bin" / "python")


def _ensure_env(session: nox.Session, extras: str = "dev") -> str:
    key = hashlib.sha256((TORCH_SPEC + extras + (ROOT / "pyproject.toml").read_text()).encode()).hexdigest()[:16]
    stamp = ENV / ".stamp"
    if stamp.exists() and stamp.read_text() == key:
        return _py()
    if ENV.exists():
        shutil.rmtree(ENV)
    session.log(f"creating {ENV} ({TORCH_SPEC} first, then rewardtune[{extras}])")
    subprocess.run([sys.executable, "-m", "venv", str(ENV)], check=True)
    pip = [_py(), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    session.run(*pip, "--upgrade", "pip", external=True)
    session.run(*pip, TORCH_SPEC, external=True)  # first, so nothing below pulls another torch build
    session.run(*pip, "-e", f".[{extras}]", external=True)
    stamp.write_text(key)
    return _py()


def _pytest(session: nox.Session, *args: str, **extra_env: str) -> None:
    py = _ensure_env(session)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0", **extra_env}
    session.run(py, "-m", "pytest", *args, *session.posargs, external=True, env=env)


@nox.session
def tests(session: nox.Session) -> None:
    """The default suite (CPU, tiny seeded models, parity fixtures; no slow/gpu/slurm tests) on pytest-xdist
    workers, one per core (at most 4) with one thread each, a whole test file to a worker so that module fixtures
    are built once: about 8 minutes on 2 cores, where one process took 13."""
    _pytest(session, "-q", "-p", "no:cacheprovider", "--durations=15", "-n", "auto", "--maxprocesses", "4",
            "--dist", "loadfile", OMP_NUM_THREADS="1")


@nox.session
def learning(session: nox.Session) -> None:
    """The shapes-world learning tests: every method, LoRA and full UNet, must raise the rule-based judge's
    accuracy on held-out seeds, and so must the SDXL, SD3 and FLUX siblings. On pytest-xdist workers of one thread
    each (one per core, at most 4), a free worker taking the next test from a busy one (about 30 minutes on 2
    cores); .ci/run runs them after the default suite."""
    _pytest(session, "-q", "-p", "no:cacheprovider", "-m", "learning", "--durations=0", "-n", "auto",
            "--maxprocesses", "4", "--dist", "worksteal", "tests/world/test_learning.py", OMP_NUM_THREADS="1")


@nox.session
def parity(session: nox.Session) -> None:
    """Only the parity tests against the committed reference fixtures (see docs/parity.md)."""
    _pytest(session, "-q", "-m", "parity", "tests")


@nox.session
def lint(session: nox.Session) -> None:
    py = _ensure_env(session)
    session.run(py, "-m", "ruff", "check", "rewardtune", "tests", "benchmarks", "scripts", "noxfile.py",
                external=True)


@nox.session
def demo(session: nox.Session) -> None:
    """The embedded offline default: specs/demo.yaml fine-tunes the shapes world's shipped pipeline against its
    CLIP reward while the rule-based judge watches; before/after grids and accuracy under runs/demo."""
    py = _ensure_env(session)
    session.run(py, "-m", "rewardtune.cli.main", "run", "specs/demo.yaml", "--overwrite", *session.posargs,
                external=True, env={"HF_HUB_OFFLINE": "1"})


@nox.session(name="shapes-world")
def shapes_world(session: nox.Session) -> None:
    """Retrain the shapes world's shipped models from seed 0 into rewardtune/data/models (about two hours on 2 cores)."""
    py = _ensure_env(session)
    session.run(py, "-m", "rewardtune.world.train", "all", "--out", "rewardtune/data/models", *session.posargs,
                external=True)


@nox.session
def slurm(session: nox.Session) -> None:
    """Start a one-node SLURM on 127.0.0.1 (root + apt needed), run the slurm tests, stop the daemons."""
    py = _ensure_env(session)
    start, stop = ROOT / "scripts/slurm/start-local-slurm.sh", ROOT / "scripts/slurm/stop-local-slurm.sh"
    if not start.exists():
        session.error("scripts/slurm/start-local-slurm.sh is missing")
    code = subprocess.run(["bash", str(start)]).returncode
    if code == 77:  # the script's "cannot run SLURM here" (not root, no apt): skip, with its reason printed
        session.skip("no local SLURM could be started on this machine (see the script's message above)")
    if code != 0:
        session.error(f"{start} failed with exit code {code}")
    try:
        session.run(py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slurm", "tests/launch",
                    *session.posargs, external=True, env={"HF_HUB_OFFLINE": "1"})
    finally:
        session.run("bash", str(stop), external=True, success_codes=[0, 1])


@nox.session
def bench(session: nox.Session) -> None:
    """CPU benchmarks (results under benchmarks/results/); see benchmarks/README.md."""
    py = _ensure_env(session)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # the scripts take different options: pass them by running a script directly (see benchmarks/README.md)
    session.run(py, "benchmarks/train_step_vs_trl.py", external=True, env=env)  # ~7 min; TRL's venv once, ~2 min
    ref = Path(os.environ.get("REWARDTUNE_IR_PYTHON", "/work/refvenvs/ir/bin/python"))
    if not ref.exists():  # image-reward's venv is ~6 GB (its own torch + torchvision): built on request only
        session.warn(f"SKIPPED the scoring benchmark: it needs image-reward's reference venv and {ref} is missing. "
                     "Build it with `bash scripts/parity/setup_venvs.sh` (or point REWARDTUNE_IR_PYTHON at a python "
                     "with image-reward 1.5), then run `nox -s bench` again or `python benchmarks/score_throughput.py "
                     f"--ref-python {ref}`. The training-step tables above were written.")
        return
    session.run(py, "benchmarks/score_throughput.py", "--ref-python", str(ref), external=True, env=env)


@nox.session(name="time-to-quality")
def time_to_quality(session: nox.Session) -> None:
    """Time to a target judge accuracy on the shapes world, rewardtune's demo vs TRL 0.23.1's AlignPropTrainer
    with its defaults, 3 seeds each (results under benchmarks/results/; about an hour on 2 cores, TRL's venv
    created on first use). Options after `--` go to benchmarks/time_to_quality.py."""
    py = _ensure_env(session)
    session.run(py, "benchmarks/time_to_quality.py", *session.posargs, external=True,
                env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


@nox.session
def fixtures(session: nox.Session) -> None:
    """Regenerate the parity fixtures in separate reference venvs (see docs/parity.md). Not run in CI."""
    session.run("bash", "scripts/parity/setup_venvs.sh", external=True)
    session.run(sys.executable, "scripts/parity/make_fixtures.py", *session.posargs, external=True)
