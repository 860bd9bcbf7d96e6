"""One error policy: the same cause gives the same exit code in every verb, with a message and no traceback.

0 ok; 1 internal bug; 2 bad input (spec, override, option, path, image); 3 interrupted and resumable (see
tests/engine/test_rundir.py, which needs a real signal); 4 missing weights or an extra that is not installed.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rewardtune.errors import (
    CheckpointError,
    MissingDependencyError,
    MissingWeightsError,
    OutputDirError,
    RegistryConflictError,
    RunInterrupted,
    SpecError,
    UsageError,
)

LAUNCH_SPEC = str(Path(__file__).parent / "launch" / "data" / "tiny.yaml")
NOT_CACHED = "rewardtune-tests/not-cached-anywhere"  # a hub id no cache holds (tests run offline)


def _image(tmp_path: Path) -> str:
    from PIL import Image

    p = tmp_path / "img.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(p)
    return str(p)


def _no_dir(tmp_path: Path) -> str:
    return str(tmp_path / "no-such-run")


# (verb, cause, arguments (a function of tmp_path), expected code, a phrase of the message)
CASES = [
    ("run", "bad-input", lambda t: ["run", "no-such-spec", "-o", str(t / "o")], 2, "not found"),
    ("run", "bad-override", lambda t: ["run", "demo", "--tiny", "train.stpes=3", "-o", str(t / "o")], 2,
     "train.stpes"),
    ("run", "bad-output-dir", lambda t: ["run", "demo", "--tiny", "-o", str(Path(_image(t)))], 2,
     "is a file, not a directory"),
    ("run", "missing-weights", lambda t: ["run", "demo", f"model.pretrained={NOT_CACHED}", "-o", str(t / "o"),
                                          "--no-progress"], 4, NOT_CACHED),
    ("run", "missing-extra", lambda t: ["run", "demo", "--tiny", "train.optimizer=adamw8bit", "-o", str(t / "o"),
                                        "--no-progress"], 4, "rewardtune[bnb]"),
    ("validate", "bad-input", lambda t: ["validate", str(t / "missing.yaml")], 2, "missing.yaml"),
    ("validate", "bad-override", lambda t: ["validate", "specs/demo.yaml" if Path("specs/demo.yaml").exists()
                                            else LAUNCH_SPEC, "train.stpes=3"], 2, "train.stpes"),
    ("score", "bad-input", lambda t: ["score", str(t / "missing.png"), "--tiny", "-p", "x"], 2, "missing.png"),
    ("score", "missing-weights", lambda t: ["score", _image(t), "-r", "imagereward", "-w", f"imagereward={NOT_CACHED}",
                                            "-p", "a red square", "--no-progress"], 4, NOT_CACHED),
    ("submit", "bad-input", lambda t: ["submit", str(t / "missing.yaml"), "--dry-run"], 2, "missing.yaml"),
    ("submit", "bad-option", lambda t: ["submit", LAUNCH_SPEC, "--tiny", "--dry-run", "--time", "soon"], 2,
     "cannot read time limit"),
    ("status", "bad-input", lambda t: ["status", _no_dir(t)], 2, "no submitted job recorded"),
    ("cancel", "bad-input", lambda t: ["cancel", _no_dir(t)], 2, "no submitted job recorded"),
    ("rewards", "bad-input", lambda t: ["rewards", "pickscor"], 2, "pickscore"),
    ("env", "bad-option", lambda t: ["env", "--no-such-option"], 2, "--no-such-option"),
]


@pytest.mark.parametrize("verb, cause, args, code, needle", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_exit_code_per_cause(tmp_path, capsys, verb, cause, args, code, needle):
    if cause == "missing-extra" and importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed")
    from rewardtune.cli.main import main

    with pytest.raises(SystemExit) as ei:
        main(args(tmp_path))
    got = ei.value.code
    out = capsys.readouterr()
    text = out.out + out.err
    assert got == code, f"exit {got}, expected {code}:\n{text}"
    assert needle in text, text
    assert "Traceback" not in text


def test_error_classes_carry_the_policy():
    """The CLI exits with an error's `exit_code`: the classes are the policy."""
    for cls in (UsageError, SpecError, OutputDirError, CheckpointError, RegistryConflictError):
        assert cls.exit_code == 2, cls
    assert RunInterrupted.exit_code == 3
    assert MissingWeightsError.exit_code == MissingDependencyError.exit_code == 4

