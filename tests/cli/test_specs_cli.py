"""Shipped specs as templates: `specs` lists them, `specs cp` copies one with its comments, a local file wins over
a shipped spec of the same name (and the output says which one ran), and `validate specs/` works outside a
checkout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_process import rt

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.stem for p in (ROOT / "specs").glob("*.yaml"))


def test_specs_lists_every_shipped_spec_with_a_summary(tmp_path):
    assert len(SHIPPED) >= 7
    p = rt("specs", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert sorted(rows) == SHIPPED
    assert rows["demo"]["method"] == "draft_k" and rows["demo"]["model"] == "zoo:shapes-sd1"
    assert rows["demo"]["summary"].startswith("The demo: teach the shapes world's pipeline")
    assert "shapes-eval (monitor)" in rows["demo"]["rewards"]
    table = rt("specs", cwd=tmp_path)
    assert table.returncode == 0 and all(n in table.stdout for n in SHIPPED)


def test_specs_cp_copies_byte_for_byte_and_refuses_to_overwrite(tmp_path):
    p = rt("specs", "cp", "demo", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "demo.yaml").read_bytes() == (ROOT / "specs" / "demo.yaml").read_bytes()  # comments kept
    again = rt("specs", "cp", "demo", cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    (tmp_path / "mine").mkdir()
    p = rt("specs", "cp", "specs/refl.yaml", "mine", cwd=tmp_path)
    assert p.returncode == 0 and (tmp_path / "mine" / "refl.yaml").is_file(), p.stderr
    p = rt("specs", "cp", "draftk", cwd=tmp_path)
    assert p.returncode == 2 and "Did you mean 'draft_k'?" in p.stderr


def test_a_local_file_wins_over_the_shipped_spec_and_the_output_says_so(tmp_path):
    """An edited ./demo.yaml must be what `rewardtune run demo` runs (it used to run the shipped one)."""
    text = (ROOT / "specs" / "demo.yaml").read_text().replace("name: demo", "name: my-demo")
    (tmp_path / "demo.yaml").write_text(text)
    p = rt("validate", "demo", "--show", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "name: my-demo" in p.stdout
    p = rt("run", "demo", "--tiny", "train.steps=1", "sampling.steps=2", "logging.eval_prompts=2",
           "logging.eval_images_per_prompt=1", "-o", str(tmp_path / "out"), "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "spec: demo.yaml (a local file; it wins over the shipped spec 'demo')" in p.stderr
    assert "name: my-demo" in (tmp_path / "out" / "spec.yaml").read_text()
    other = tmp_path / "elsewhere"
    other.mkdir()
    p = rt("specs", "show", "demo", cwd=other)
    assert p.returncode == 0 and "spec: the shipped spec 'demo'" in p.stderr and "name: demo" in p.stdout


def test_the_library_resolves_a_spec_name_by_the_same_rule(tmp_path, monkeypatch):
    """`load_spec` (and through it `rewardtune.run` and `submit`'s copy of the spec) follows the command line's rule:
    ./NAME, then ./NAME.yaml, then the shipped spec."""
    from rewardtune.errors import SpecError
    from rewardtune.spec.find import find_spec
    from rewardtune.spec.load import load_spec

    monkeypatch.chdir(tmp_path)
    assert load_spec("demo").name == "demo" and find_spec("demo").shipped
    (tmp_path / "demo.yaml").write_text((ROOT / "specs" / "demo.yaml").read_text().replace("name: demo",
                                                                                          "name: my-demo"))
    found = find_spec("demo")
    assert not found.shipped and found.shadows is not None and load_spec("demo").name == "my-demo"
    assert load_spec("specs/demo.yaml").name == "demo"  # a path into the shipped folder names the shipped one
    assert find_spec("no-such-spec") is None and find_spec("../specs/demo") is None
    (tmp_path / "mine.yml").write_text("x")
    (tmp_path / "mine").write_text("y")
    assert find_spec("mine").path == Path("mine") and find_spec("mine.yml").path == Path("mine.yml")
    (tmp_path / "mine").unlink()
    assert find_spec("mine").path == Path("mine.yml")
    with pytest.raises(SpecError, match="File name too long"):  # exit 2 with the reason, not a bare OSError
        load_spec("x" * 300 + ".yaml")


def test_validate_specs_folder_outside_a_checkout(tmp_path):
    p = rt("validate", "specs/", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("valid ") == len(SHIPPED)
    p = rt("validate", "specs/demo.yaml", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.count("valid ") == 1, p.stderr


def test_an_unknown_spec_name_lists_the_shipped_ones(tmp_path):
    p = rt("run", "dmeo", cwd=tmp_path)
    assert p.returncode == 2
    assert "spec 'dmeo' not found" in p.stderr and "demo" in p.stderr and "rewardtune specs" in p.stderr
