"""CLI manners: --version, global options before or after the verb, --help without `<bool>` noise, shell
completion, and the spec field reference (`validate --explain`)."""
from __future__ import annotations

from pathlib import Path

import pytest
from cli_process import rt

ROOT = Path(__file__).resolve().parents[2]


def test_version():
    import rewardtune

    for flag in ("--version", "-V"):
        p = rt(flag)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == f"rewardtune {rewardtune.__version__}"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_is_accepted_before_and_after_the_verb(tmp_path, where):
    args = ["validate", str(tmp_path / "missing.yaml")]
    p = rt(*(["--debug", *args] if where == "before" else [*args, "--debug"]))
    assert p.returncode == 2, p.stderr
    assert "No such option" not in p.stderr
    assert "Traceback (most recent call last)" in p.stderr  # --debug took effect
    plain = rt(*args)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr


def test_debug_after_the_verb_reaches_errors_raised_inside_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: [{reward: clip}]\ntrain: {steps: 0}\n")
    p = rt("run", str(bad), "--debug")
    assert p.returncode == 2 and "Traceback" in p.stderr, p.stderr


@pytest.mark.parametrize("verb", ["", "run", "score", "validate", "submit", "specs", "rewards",
                                  "env", "status"])
def test_help_shows_no_bool_type_beside_flags(verb):
    p = rt(*([verb] if verb else []), "--help")
    assert p.returncode == 0, p.stderr
    assert "<bool>" not in p.stdout, p.stdout
    assert "--debug" in p.stdout  # the global option is listed on every verb


def test_shell_completion_completes_verbs_and_options():
    p = rt(_REWARDTUNE_COMPLETE="complete_bash", COMP_WORDS="rewardtune val", COMP_CWORD="1")
    assert p.stdout.split() == ["validate"], p.stdout + p.stderr
    p = rt(_REWARDTUNE_COMPLETE="complete_bash", COMP_WORDS="rewardtune run --ti", COMP_CWORD="2")
    assert p.stdout.split() == ["--tiny"], p.stdout + p.stderr
    # typer detects the shell from the process tree (absent under some test runners); with detection off the
    # shell is the option's value
    p = rt("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert p.returncode == 0 and "_REWARDTUNE_COMPLETE" in p.stdout, p.stdout + p.stderr


def test_explain_a_field():
    p = rt("validate", "--explain", "train.lr")
    assert p.returncode == 0, p.stderr
    assert "train.lr: float, default 0.001" in p.stdout and "Peak learning rate." in p.stdout


def test_explain_a_union_field_shows_every_member_and_a_section_lists_its_fields():
    p = rt("validate", "--explain", "method.k", "--explain", "logging")
    assert p.returncode == 0, p.stderr
    assert "method.k (in AlignProp)" in p.stdout and "method.k (in DraftK): int, default 1" in p.stdout
    assert "images_every: int, default 50" in p.stdout and "eval_prompts" in p.stdout


def test_explain_list_items_and_unknown_fields():
    p = rt("validate", "--explain", "objective[0].weight")
    assert p.returncode == 0 and "objective.weight: float, default 1.0" in p.stdout, p.stdout + p.stderr
    p = rt("validate", "--explain", "train.lrr")
    assert p.returncode == 2 and "Did you mean 'train.lr'?" in p.stderr, p.stderr
    p = rt("validate", "--explain", "train.lr.x")
    assert p.returncode == 2 and "is a value, not a section" in p.stderr, p.stderr
