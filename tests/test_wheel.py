"""A wheel built and installed in a fresh venv lists rewards and validates the shipped specs outside the repo."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from inventory import SHIPPED_MODELS, SHIPPED_REWARDS, SHIPPED_SPECS, shipped_model_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    pytest.importorskip("hatchling")
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("rewardtune-*.whl"))
    venv.create(tmp / "venv", with_pip=False)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(tmp / "venv" / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True)
    return tmp


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    # Dependencies come from this environment's site-packages (PYTHONPATH: .pth files, such as an editable
    # install of rewardtune, are not processed there); rewardtune itself comes only from the wheel.
    env = {"PATH": f"{tmp / 'venv' / 'bin'}:/usr/bin:/bin", "PYTHONPATH": sysconfig.get_paths()["purelib"],
           "COLUMNS": "200", "HOME": os.environ.get("HOME", "/tmp"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(list(args), capture_output=True, text=True, cwd=tmp, env=env)


def test_wheel_ships_cards_and_specs(installed: Path):
    p = _run(installed, "python", "-c", "import rewardtune, sys; print(rewardtune.__file__); "
                                        "print('torch' in sys.modules)")
    assert str(installed / "venv") in p.stdout, p.stdout + p.stderr
    p = _run(installed, "rewardtune", "rewards", "--json")
    assert p.returncode == 0, p.stderr
    for name in SHIPPED_REWARDS:
        assert f'"{name}"' in p.stdout
    shipped = SHIPPED_SPECS
    for name in shipped:
        p = _run(installed, "rewardtune", "validate", f"specs/{name}")
        assert p.returncode == 0, f"{name}: {p.stdout}{p.stderr}"
        assert "valid" in p.stdout


def test_wheel_ships_the_shapes_world_and_runs_the_demo(installed: Path):
    """The trained shapes-world models are package data: an installed wheel holds every file of them, resolves
    `zoo:shapes-sd1`, its siblings and the reward inside itself, and runs the shipped demo spec from any folder,
    with no repository and no download."""
    p = _run(installed, "python", "-c", "import json; from rewardtune.rewards._weights import resolve_weights as r; "
                                        f"print(json.dumps([str(r('zoo:' + n)) for n in {SHIPPED_MODELS!r}]))")
    assert p.returncode == 0, p.stderr
    dirs = [Path(d) for d in json.loads(p.stdout)]
    assert all(d.is_relative_to(installed / "venv") for d in dirs), dirs
    files = sorted(f.relative_to(dirs[0].parent).as_posix() for d in dirs for f in d.rglob("*") if f.is_file())
    assert files == shipped_model_files()
    p = _run(installed, "rewardtune", "run", "demo", "-o", "demo-out", "--no-progress", "train.steps=1",
             "sampling.steps=2", "logging.eval_prompts=4", "logging.eval_images_per_prompt=1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert (installed / "demo-out" / "images" / "compare.png").is_file()
    assert (installed / "demo-out" / "lora").is_dir()
    assert "shapes-eval" in p.stdout
    # from weights to a shared result, all from the wheel: the export's model card, eval of the run, the checks
    assert "base_model: zoo:shapes-sd1" in (installed / "demo-out" / "lora" / "README.md").read_text()
    p = _run(installed, "rewardtune", "eval", "demo-out", "--json")
    assert p.returncode == 0, p.stderr
    assert '"shapes-eval"' in p.stdout and (installed / "demo-out" / "eval" / "compare.png").is_file()
    for args in (["--version"], ["specs"], ["weights", "demo"], ["validate", "--explain", "logging.trackers"]):
        p = _run(installed, "rewardtune", *args)
        assert p.returncode == 0, f"{args}: {p.stdout}{p.stderr}"
