"""The reward registry: cards, did-you-mean, collisions, entry points, decorator registration."""
from __future__ import annotations

import textwrap
from pathlib import Path

import cli_process
import pytest
import yaml
from inventory import DIFFERENTIABLE_REWARDS, SHIPPED_REWARDS, reward_cards_on_disk

from rewardtune.errors import RegistryConflictError, UnknownRewardError, UsageError
from rewardtune.registry import Registry, get_card, load_reward, registry

ROOT = Path(__file__).resolve().parents[1]
RULE_BASED = {"shapes-eval"}  # the shapes world's judge: rules, no weights
BUILTIN = SHIPPED_REWARDS


def test_builtin_cards_complete():
    assert reward_cards_on_disk() == BUILTIN and len(BUILTIN) == 8  # recursive glob, counted
    assert [c.name for c in registry().cards() if c.origin.startswith("built-in card")] == BUILTIN
    for n in BUILTIN:
        c = get_card(n)
        assert c.implementation.startswith("rewardtune.rewards.") and ":" in c.implementation
        assert "default" in c.presets and "tiny" in c.presets, n
        if n in RULE_BASED:  # no model, so no weights to name
            assert not c.presets["default"].get("weights") and not c.presets["tiny"].get("weights"), n
        else:
            assert c.presets["default"].get("weights"), n
            assert str(c.presets["tiny"].get("weights", "")).startswith("zoo:"), n
        assert c.citation and c.license, n
        assert c.direction in ("higher", "lower")
    assert {n for n in BUILTIN if get_card(n).differentiable} == DIFFERENTIABLE_REWARDS


def test_did_you_mean():
    with pytest.raises(UnknownRewardError, match="Did you mean 'pickscore'"):
        get_card("pickscor")
    with pytest.raises(UnknownRewardError, match="Did you mean 'imagereward'"):
        load_reward("image_reward")


def test_unknown_preset_message():
    with pytest.raises(UsageError, match="Did you mean 'vit-b-32'") as ei:
        load_reward("clip", preset="vit-b32")
    assert ei.value.exit_code == 2


@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_starts_from_a_clean_registry(turn):
    """conftest's `clean_registries`: a reward (or method) a test registers is gone in the next test, whatever
    the order."""
    import rewardtune
    from rewardtune.engine.methods import register_method, registered_methods

    assert "test-isolated" not in registry().names() and "test-isolated" not in registered_methods()

    @rewardtune.register_reward("test-isolated")
    def isolated(pixels, prompts):
        return pixels.mean(dim=(1, 2, 3)) * turn

    register_method("test-isolated")(lambda m, base_dir=None: None)
    assert "test-isolated" in registry().names() and "test-isolated" in registered_methods()


def _fake_dist(tmp_path: Path, name: str, eps: dict[str, str], module_src: str, modname: str) -> None:
    (tmp_path / f"{modname}.py").write_text(textwrap.dedent(module_src))
    dist = tmp_path / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = ["[rewardtune.rewards]"] + [f"{k} = {v}" for k, v in eps.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_entry_point_plugin_and_collision(tmp_path: Path, monkeypatch):
    src = """
    import torch
    def brightness(pixels, prompts):
        return pixels.mean(dim=(1, 2, 3))
    class Card:
        card = {"implementation": "rt_plugin_mod:Card", "differentiable": True, "presets": {"default": {}}}
    """
    _fake_dist(tmp_path, "rt-plugin", {"plugin-brightness": "rt_plugin_mod:brightness"}, src, "rt_plugin_mod")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    assert "plugin-brightness" in reg.names()
    assert "entry point" in reg.get("plugin-brightness").origin
    assert "clip" in reg.names()

    (tmp_path / "b").mkdir()
    _fake_dist(tmp_path / "b", "rt-clash", {"clip": "rt_clash_mod:brightness"}, src, "rt_clash_mod")
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    with pytest.raises(RegistryConflictError) as ei:
        Registry().names()
    assert "built-in card clip.yaml" in str(ei.value) and "rt-clash" in str(ei.value)


def test_register_reward_decorator_and_collision():
    import torch

    import rewardtune

    @rewardtune.register_reward("test-mean-brightness", description="mean pixel value")
    def mean_brightness(pixels, prompts):
        return pixels.mean(dim=(1, 2, 3))

    r = rewardtune.load_reward("test-mean-brightness", max_batch_size=2)
    x = torch.rand(5, 3, 8, 8, requires_grad=True)
    out = r(x, ["p"] * 5)
    assert out.shape == (5,) and out.dtype == torch.float32
    assert torch.allclose(out, x.mean(dim=(1, 2, 3)))
    out.sum().backward()
    assert x.grad is not None
    with pytest.raises(RegistryConflictError, match="registered twice"):
        @rewardtune.register_reward("clip")
        def other(pixels, prompts):
            return pixels.mean(dim=(1, 2, 3))


def test_spec_imports_register_rewards(tmp_path: Path):
    from rewardtune.spec.load import load_spec

    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        import rewardtune

        @rewardtune.register_reward("test-redness-from-file")
        def redness(pixels, prompts):
            return pixels[:, 0].mean(dim=(1, 2))
    """))
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"imports": ["my_rewards.py"], "objective": [{"reward": "test-redness-from-file"}]}))
    loaded = load_spec(spec)
    assert loaded.objective[0].reward == "test-redness-from-file"
    assert "test-redness-from-file" in registry().names()


def test_cards_are_validated_strictly(tmp_path: Path):
    """`differentiable: "false"` was read as true, and `direction: lowr` passed."""
    from rewardtune.registry import CardError, load_card_file

    good = yaml.safe_load((ROOT / "rewards/clip.yaml").read_text())
    cases = {
        "differentiable": ("false", "differentiable: must be true or false, got 'false' (text: write it without "
                                    "quotes)"),
        "direction": ("lowr", "direction: 'lowr' is not allowed. Did you mean 'lower'? Use one of: higher, lower"),
        "implementation": ("rewardtune.rewards.clip.CLIPScore", "implementation: String should match pattern"),
        "default_preset": ("big", "\n  default_preset 'big' is not among its presets ("),
        "typical_range": ([".nan", 1], "typical_range.0: Input should be a finite number"),
        "diferentiable": (True, "diferentiable: unknown key. Did you mean 'differentiable'?"),
    }
    for key, (value, msg) in cases.items():
        data = {**good, key: value}
        if key == "typical_range":
            data[key] = [float("nan"), 1.0]
        path = tmp_path / f"{key}.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(CardError) as ei:
            load_card_file(path)
        assert str(path) in str(ei.value) and msg in str(ei.value), str(ei.value)
        assert ei.value.exit_code == 2
    path = tmp_path / "dup.yaml"
    path.write_text((ROOT / "rewards/clip.yaml").read_text() + "differentiable: false\n")
    with pytest.raises(CardError, match="duplicate key 'differentiable'"):
        load_card_file(path)
    card = load_card_file(ROOT / "rewards/sam-llm.yaml")
    assert card.differentiable is False and card.direction == "higher" and card.params["cache_size"]["type"] == "int"


_PLUGINS = {
    "plugin-good": ("rt_good_mod:brightness", "def brightness(pixels, prompts):\n    return pixels.mean()\n"),
    "plugin-missing": ("rt_no_such_module:thing", None),
    "plugin-raises": ("rt_raising_mod:thing", "raise RuntimeError('plugin import blew up')\n"),
    "plugin-exits": ("rt_exiting_mod:thing", "import sys\nsys.exit(3)\n"),
    "plugin-badcard": ("rt_badcard_mod:Thing", "class Thing:\n    card = {'implementation': 'rt_badcard_mod:Thing',"
                                               " 'differentiable': 'false', 'presets': {'default': {}}}\n"),
}


def test_broken_plugins_are_reported_and_skipped(tmp_path: Path):
    """A throwaway distribution (dist-info with entry points) on the path of real subprocesses: one plugin that
    loads and four that do not. `rewards` and `validate` still work, and name each broken plugin and its error."""
    import subprocess

    dist = tmp_path / "rt_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rt-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[rewardtune.rewards]\n" + "".join(
        f"{name} = {value}\n" for name, (value, _) in _PLUGINS.items()))
    for value, src in _PLUGINS.values():
        if src is not None:
            (tmp_path / f"{value.partition(':')[0]}.py").write_text(src)

    def rt(*args: str) -> subprocess.CompletedProcess:  # the plugins' folder on the path too
        return cli_process.rt(*args, columns=250, timeout=120, PYTHONPATH=f"{ROOT}:{tmp_path}")

    expected = {"plugin-missing": "ModuleNotFoundError: No module named 'rt_no_such_module'",
                "plugin-raises": "RuntimeError: plugin import blew up", "plugin-exits": "SystemExit: 3",
                "plugin-badcard": "differentiable: must be true or false, got 'false'"}
    for args in (["rewards"], ["validate", "specs/demo.yaml"]):
        proc = rt(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        err = " ".join(proc.stderr.split())
        for name, msg in expected.items():
            assert f"warning: reward plugin '{name}'" in err and "of rt-plugins failed to load and was skipped" in err
            assert msg in err, (name, err)
        assert "Traceback" not in proc.stderr
    listing = rt("rewards", "--json")
    names = {c["name"] for c in __import__("json").loads(listing.stdout)}
    assert "plugin-good" in names and "clip" in names and not names & set(expected)
    proc = rt("rewards", "plugin-raises")
    assert proc.returncode == 2 and "Reward 'plugin-raises' is not available" in " ".join(proc.stderr.split())
