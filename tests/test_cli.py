"""CLI basics: help, rewards table, env, exit codes."""
from __future__ import annotations

import json
from pathlib import Path

from cli_process import rt
from inventory import DIFFERENTIABLE_REWARDS, SHIPPED_REWARDS

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_verb_and_each_verb_has_help():
    """Every verb module (rewardtune/cli/<verb>.py with a COMMAND, or a `register` for a verb with sub-commands such
    as `specs cp`) is listed by `--help` with its summary, and `<verb> --help` shows its usage."""
    import re

    from typer.testing import CliRunner

    from rewardtune.cli.main import VERBS, app

    modules = sorted(f.stem for f in (ROOT / "rewardtune" / "cli").glob("*.py")
                     if re.search(r"^(def COMMAND\b|COMMAND =|def register\b)", f.read_text(), re.M))
    assert len(modules) >= 8 and sorted(VERBS) == modules
    p = rt("--help")
    assert p.returncode == 0
    listed = re.findall(r"^│ (\w+) ", p.stdout, re.M)
    assert sorted(listed) == modules, listed
    for verb in modules:
        res = CliRunner().invoke(app, [verb, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (verb, res.output)
        assert f"{verb} [OPTIONS]" in res.output and "--help" in res.output, (verb, res.output)


def test_rewards_table_and_json():
    p = rt("rewards")
    assert p.returncode == 0, p.stderr
    for name in SHIPPED_REWARDS:
        assert name in p.stdout
    assert "openai/clip-vit-large-patch14" in p.stdout
    data = json.loads(rt("rewards", "--json").stdout)
    by = {d["name"]: d for d in data}
    assert set(SHIPPED_REWARDS) <= set(by)
    assert {n for n in SHIPPED_REWARDS if by[n]["differentiable"]} == DIFFERENTIABLE_REWARDS
    assert "tiny" in by["pickscore"]["presets"]
    one = json.loads(rt("rewards", "clip", "--json").stdout)
    assert one["params"]["raw_cosine"]["default"] is False


def test_unknown_reward_card_exit_code():
    p = rt("rewards", "pickscor")
    assert p.returncode == 2
    assert "Did you mean 'pickscore'" in p.stderr and "Traceback" not in p.stderr


def test_env_json():
    p = rt("env", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["packages"]["torch"] and info["packages"]["pydantic"]
    assert "rewardtune_zoo" in info["caches"]


def test_validate_missing_file():
    p = rt("validate", "no/such/spec.yaml")
    assert p.returncode == 2 and "not found" in p.stderr and "Traceback" not in p.stderr
