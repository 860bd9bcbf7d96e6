"""`validate` reports what `run` would reject on this machine, and the run path checks it before any model loads:
prompt files, local weights directories, extras (tensorboard, bitsandbytes), the device."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_process import rt

from rewardtune.errors import SpecError
from rewardtune.spec.load import load_spec
from rewardtune.spec.preflight import PreflightError, preflight

ROOT = Path(__file__).resolve().parents[1]
ENV = {"COLUMNS": "250", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}

# The machine lacks a package when it is not installed; tensorboard is (a test extra), so the tests make it
# unimportable in a child the way Python documents: `sys.modules[name] = None` makes `import name` fail and
# importlib.util.find_spec return None.
WITHOUT_TENSORBOARD = "import sys\nsys.modules['tensorboard'] = None\n"


def validate(*args: str, prelude: str = "", cwd: Path = ROOT) -> subprocess.CompletedProcess:
    code = prelude + "from rewardtune.cli.main import main\nmain(['validate', *sys.argv[1:]])\n"
    return subprocess.run([sys.executable, "-c", "import sys\n" + code, *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=120)


def absent_device() -> str:
    """A device this machine lacks: `cuda` without a GPU, else one index past the last GPU."""
    import torch

    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


def write_spec(tmp_path: Path, **sections) -> Path:
    spec = {"objective": [{"reward": "clip"}], **sections}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


def test_validate_reports_every_problem_run_would_hit(tmp_path: Path):
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": "a dog"\n')
    device = absent_device()
    p = write_spec(tmp_path, model={"pretrained": str(tmp_path / "no-such-pipeline")},
                   prompts={"train": {"file": "empty.txt"}, "eval": {"file": "broken.jsonl"}},
                   objective=[{"reward": "clip", "weights": "./no/such/clip-dir"}],
                   logging={"tensorboard": True}, train={"optimizer": "adamw8bit"},
                   launcher={"type": "local", "device": device})
    proc = validate(str(p), prelude=WITHOUT_TENSORBOARD)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stdout + proc.stderr  # bad paths among them: 2, not 4
    expected = [
        "prompts.train.file (line", "prompts file 'empty.txt' has no prompts",
        "prompts.eval.file", "prompts file 'broken.jsonl' is malformed: line 2 is not JSON",
        "model.pretrained", f"local weights directory '{tmp_path / 'no-such-pipeline'}' does not exist",
        "objective[0].weights", "local weights directory './no/such/clip-dir' does not exist (looked at",
        "logging.tensorboard", "pip install 'rewardtune[tensorboard]'; or set logging.tensorboard: false",
        "launcher.device", f"'{device}': this machine has",
    ]
    if importlib.util.find_spec("bitsandbytes") is None:
        expected += ["train.optimizer", "needs the package 'bitsandbytes'", "pip install 'rewardtune[bnb]'"]
    for msg in expected:
        assert msg in err, (msg, err)
    assert "Traceback" not in proc.stderr


def test_only_missing_extras_exit_4(tmp_path: Path):
    p = write_spec(tmp_path, logging={"tensorboard": True})
    proc = validate(str(p), prelude=WITHOUT_TENSORBOARD)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "needs the package 'tensorboard', which is not installed" in proc.stderr
    assert validate(str(p)).returncode == 0  # with tensorboard installed: valid


def test_local_weights_that_are_not_a_pipeline(tmp_path: Path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    (tmp_path / "empty-dir").mkdir()
    for pretrained, msg in ((tmp_path / "weights.bin", "is a file"), (tmp_path / "empty-dir", "no model_index.json")):
        spec = load_spec({"objective": [{"reward": "clip"}], "model": {"pretrained": str(pretrained)}})
        with pytest.raises(PreflightError, match=msg):
            preflight(spec)
    # hub ids and zoo twins are not local paths: nothing to check here (the run downloads or builds them)
    preflight(load_spec({"objective": [{"reward": "clip", "weights": "org/name"}], "model": {"pretrained": "zoo:sd1"}}))


def test_device_check(tmp_path: Path):
    for device in (absent_device(), "mps", "gpu", "cuda:x"):
        spec = load_spec({"objective": [{"reward": "clip"}], "launcher": {"type": "local", "device": device}})
        with pytest.raises(PreflightError) as ei:
            preflight(spec)
        assert ei.value.exit_code == 2 and ei.value.problems[0].path == "launcher.device", str(ei.value)
    for device in ("cpu", "auto"):
        preflight(load_spec({"objective": [{"reward": "clip"}], "launcher": {"type": "local", "device": device}}))


def test_run_checks_before_building_any_model(tmp_path: Path):
    """`rewardtune run` rejects what validate reports, with its exit code and message, before a single model is
    built: the tiny twins' cache stays empty (the first model loaded would fill it)."""
    (tmp_path / "empty.txt").write_text("\n")
    p = write_spec(tmp_path, prompts={"train": {"file": "empty.txt"}}, train={"steps": 1})
    proc = rt("run", str(p), "--tiny", "-o", str(tmp_path / "out"), columns=250, timeout=300,
              REWARDTUNE_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "prompts file 'empty.txt' has no prompts" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))


def test_build_trainer_runs_preflight(tmp_path: Path, monkeypatch):
    from rewardtune.engine.build import build_trainer

    monkeypatch.setenv("REWARDTUNE_CACHE", str(tmp_path / "cache"))
    spec = load_spec({"objective": [{"reward": "clip"}], "model": {"pretrained": "./missing-sd"},
                      "launcher": {"type": "local", "device": absent_device()}}, tiny=False)
    with pytest.raises(SpecError) as ei:
        build_trainer(spec, output_dir=tmp_path / "out")
    assert {p.path for p in ei.value.problems} == {"model.pretrained", "launcher.device"}
    assert not (tmp_path / "cache").exists()


def test_prompt_file_that_is_a_directory_or_not_utf8(tmp_path: Path):
    (tmp_path / "dir.txt").mkdir()
    (tmp_path / "latin1.txt").write_bytes("un caf\xe9\n".encode("latin-1"))
    (tmp_path / "noprompt.jsonl").write_text('{"text": "a cat"}\n')
    for file, msg in (("dir.txt", "is a directory"), ("latin1.txt", "is not UTF-8 text"),
                      ("noprompt.jsonl", "needs a string 'prompt' field")):
        p = write_spec(tmp_path, prompts={"train": {"file": file}})
        with pytest.raises(PreflightError, match=msg):
            preflight(load_spec(p))
