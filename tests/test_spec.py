"""Spec loading: strict schema, located problems, overrides, the bad-spec corpus."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rewardtune.errors import SpecError
from rewardtune.spec.load import load_spec, parse_override_path, to_tiny

ROOT = Path(__file__).resolve().parents[1]
BAD = sorted((ROOT / "tests" / "fixtures" / "bad_specs").glob("*.yaml"))
SHIPPED_SPECS = {"alignprop.yaml", "demo.yaml", "draft_k.yaml", "draft_lv.yaml", "finerewards.yaml", "ranked.yaml",
                 "refl.yaml"}


def expectations(path: Path) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^# expect: (.*)$", path.read_text(), re.M)]


def test_bad_corpus_is_there():
    assert len(BAD) >= 15, [p.name for p in BAD]
    assert all(expectations(p) for p in BAD)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_spec_rejected_with_located_messages(path: Path):
    proc = subprocess.run([sys.executable, "-m", "rewardtune.cli.main", "validate", str(path)],
                          capture_output=True, text=True, cwd=ROOT, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    flat = " ".join(out.split())
    for exp in expectations(path):
        assert " ".join(exp.split()) in flat, f"expected {exp!r} in:\n{out}"


def test_debug_flag_shows_traceback():
    path = ROOT / "tests/fixtures/bad_specs/unknown_reward.yaml"
    proc = subprocess.run([sys.executable, "-m", "rewardtune.cli.main", "--debug", "validate", str(path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr


def test_every_problem_at_once_with_lines():
    with pytest.raises(SpecError) as ei:
        load_spec(ROOT / "tests/fixtures/bad_specs/unknown_keys.yaml")
    probs = {p.path: p for p in ei.value.problems}
    assert set(probs) == {"objective[0].wieght", "train.lerning_rate", "train.stepz"}
    assert probs["objective[0].wieght"].line == 9
    assert probs["train.lerning_rate"].line == 11
    assert probs["train.stepz"].line == 12


def test_minimal_spec_defaults_and_frozen():
    spec = load_spec({"objective": [{"reward": "clip"}]})
    assert spec.schema_version == 1
    assert spec.method.name == "draft_k" and spec.method.k == 1
    assert spec.objective[0].label == "clip"
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        spec.train.lr = 1.0


def test_overrides_go_through_validation():
    base = {"objective": [{"reward": "clip"}, {"reward": "pickscore", "weight": 1}]}
    spec = load_spec(base, overrides=["train.lr=3e-4", "objective[1].weight=2", "method.name=alignprop",
                                      "method.k=all", "sampling.steps=20"])
    assert spec.train.lr == 3e-4
    assert spec.objective[1].weight == 2
    assert spec.method.name == "alignprop" and spec.method.k == "all"
    assert base["objective"][1]["weight"] == 1  # input untouched
    with pytest.raises(SpecError) as ei:
        load_spec(base, overrides=["train.lrr=3e-4", "objective[5].weight=2", "nonsense"])
    paths = [p.path for p in ei.value.problems]
    assert "train.lrr" in paths and "objective[5]" in paths and "nonsense" in paths
    msg = str(ei.value)
    assert "Did you mean 'lr'?" in msg


def test_override_paths():
    assert parse_override_path("objective[0].weight") == ("objective", 0, "weight")
    assert parse_override_path("train.lr") == ("train", "lr")
    for bad in ("a..b", "[x]", "a[0"):
        with pytest.raises(ValueError):
            parse_override_path(bad)


def test_prompt_sources(tmp_path: Path):
    from rewardtune.prompts import BUILTIN_SETS, resolve_prompts

    (tmp_path / "p.txt").write_text("# comment\na cat\n\na dog\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a bird"}\n{"prompt": "a fish"}\n')
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text("objective: [{reward: clip}]\nprompts:\n  train: {file: p.txt}\n  eval: {file: p.jsonl}\n")
    spec = load_spec(spec_path)
    from rewardtune.spec.load import spec_base_dir

    assert resolve_prompts(spec.prompts.train, spec_base_dir(spec)) == ["a cat", "a dog"]
    assert resolve_prompts(spec.prompts.eval, spec_base_dir(spec)) == ["a bird", "a fish"]
    spec2 = load_spec({"objective": [{"reward": "clip"}], "prompts": {"train": ["x", "y"]}})
    assert resolve_prompts(spec2.prompts.train) == ["x", "y"]
    for name in BUILTIN_SETS:
        from rewardtune.spec.schema import PromptSource

        prompts = resolve_prompts(PromptSource(builtin=name))
        assert len(prompts) >= 8 and len(set(prompts)) == len(prompts), name
    train = set(resolve_prompts(PromptSource(builtin="everyday")))
    assert not train & set(resolve_prompts(PromptSource(builtin="everyday-eval"))), "eval set must be held out"


def test_tiny_swaps_every_model():
    spec = load_spec({"objective": [{"reward": "clip", "preset": "vit-b-32"}, {"reward": "pickscore"}],
                      "model": {"pretrained": "org/model", "dtype": "bfloat16"}, "train": {"mixed_precision": "bf16"}})
    tiny = to_tiny(spec)
    assert tiny.model.pretrained == "zoo:sd1" and tiny.model.dtype == "float32"
    assert [t.preset for t in tiny.objective] == ["tiny", "tiny"]
    assert tiny.sampling.resolution == 16 and tiny.train.mixed_precision == "no"
    assert spec.model.pretrained == "org/model"  # original untouched


def test_shipped_specs_validate():
    specs = sorted((ROOT / "specs").rglob("*.yaml"))  # recursive: a spec in a subfolder must not be missed
    assert len(specs) == len(SHIPPED_SPECS), [p.name for p in specs]
    assert {p.relative_to(ROOT / "specs").as_posix() for p in specs} == SHIPPED_SPECS
    for p in specs:
        load_spec(p)
        load_spec(p, tiny=True)
    proc = subprocess.run([sys.executable, "-m", "rewardtune.cli.main", "validate", "specs"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("valid") == len(specs)
