"""Spec loading: strict schema, located problems, overrides, the bad-spec corpus."""
from __future__ import annotations

import codecs
import copy
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_process import rt
from inventory import SHIPPED_SPECS, specs_on_disk

from rewardtune.engine.outputs import spec_data
from rewardtune.errors import SpecError
from rewardtune.spec.load import load_spec, parse_override_path, to_tiny

ROOT = Path(__file__).resolve().parents[1]
BAD = sorted((ROOT / "tests" / "fixtures" / "bad_specs").glob("*.yaml"))


def expectations(path: Path) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^# expect: (.*)$", path.read_text(), re.M)]


#: one file per class of hostile or broken input (issue 12); the encodings are generated below
HOSTILE = {"yaml_bomb_lists", "yaml_bomb_mappings", "yaml_bomb_merge_keys", "yaml_bomb_alias_key",
           "yaml_bomb_in_kwargs", "deep_nesting", "recursive_alias", "unknown_tag", "python_tag", "huge_int",
           "huge_hex_int", "nan_inf", "complex_key", "bad_tagged_values"}


def _limit_memory() -> None:
    """In a child: at most 2 GiB of address space, so a regression fails (MemoryError) instead of eating the
    machine."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_bad_corpus_is_there():
    assert len(BAD) >= 30, [p.name for p in BAD]
    assert {p.stem for p in BAD} >= HOSTILE, HOSTILE - {p.stem for p in BAD}
    assert all(expectations(p) for p in BAD)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_spec_rejected_with_located_messages(path: Path):
    proc = rt("validate", str(path), preexec_fn=_limit_memory, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    flat = " ".join(out.split())
    for exp in expectations(path):
        assert " ".join(exp.split()) in flat, f"expected {exp!r} in:\n{out}"


def test_debug_flag_shows_traceback():
    path = ROOT / "tests/fixtures/bad_specs/unknown_reward.yaml"
    proc = rt("--debug", "validate", str(path))
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
    # recursive: a spec in a subfolder must not be missed (torchtune once validated 3 of its 197 configs)
    assert specs_on_disk() == SHIPPED_SPECS and len(SHIPPED_SPECS) == 10
    specs = [ROOT / "specs" / name for name in SHIPPED_SPECS]
    for p in specs:
        spec = load_spec(p)
        load_spec(p, tiny=True)
        # a validated spec's dump (spec.yaml, `validate --print`, load_spec(Spec)) holds every field: it validates
        # again, to the same spec (what `rewardtune eval RUN_DIR` and api.run(Spec) rely on)
        assert spec_data(load_spec(load_spec(spec_data(spec)))) == spec_data(spec), p
    for method in ({"name": "ranked", "loss": "dpo", "beta": 500}, {"name": "ranked", "baseline": 0.5}):
        spec = load_spec({"objective": [{"reward": "clip", "combine": "assemble_ranked"}], "method": method})
        assert spec_data(load_spec(spec_data(spec))) == spec_data(spec), method
    proc = rt("validate", "specs")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("valid") == len(specs)


def _spec_fields(model=None, prefix: str = "") -> list[str]:
    """Every leaf field of the schema as a dotted path; a union of models is tagged by each one's name or type
    default (`method[ranked].baseline`, `launcher[slurm].partition`)."""
    import typing

    from pydantic import BaseModel

    from rewardtune.spec.schema import Spec

    def models_in(ann) -> list[type[BaseModel]]:
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return [ann]
        return [m for a in typing.get_args(ann) for m in models_in(a)]

    out = []
    for name, f in (model or Spec).model_fields.items():
        subs = models_in(f.annotation)
        if not subs:
            out.append(prefix + name)
        for m in subs:
            tag = m.model_fields.get("name") or m.model_fields.get("type")
            out += _spec_fields(m, f"{prefix}{name}[{tag.default}]." if len(subs) > 1 else f"{prefix}{name}.")
    return out


def test_a_new_spec_field_says_what_older_runs_did_without_it():
    """The spec.yaml of every run started before a field existed lacks it, and a resume reads it as its default
    (`saved_spec_as_now`). Where that default changes what such a run did, `LEGACY_VALUES` must give the value it
    had, or resuming it would silently change the run. This list makes a new field ask that question: add the
    field to tests/fixtures/spec_fields.txt once LEGACY_VALUES in rewardtune/engine/outputs.py is right for it."""
    from rewardtune.engine.outputs import LEGACY_VALUES

    known = (ROOT / "tests/fixtures/spec_fields.txt").read_text().split()
    now = _spec_fields()
    assert sorted(set(now) - set(known)) == [], "new spec fields: see this test's docstring"
    assert sorted(set(known) - set(now)) == [], "spec fields removed: a run that set them can no longer resume"
    for method, path in LEGACY_VALUES:
        section, key = path.split(".")
        assert f"{section}[{method}].{key}" in now or f"{section}.{key}" in now, (method, path)


# ------------------------------------------------------------------------------------------- hostile input
_MEASURE = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from rewardtune.errors import SpecError
from rewardtune.spec.load import load_spec
load_spec({"objective": [{"reward": "clip"}]})  # imports and registry loaded before measuring
sys.path.insert(0, "tests")
from spec_fuzz import peak_rss_kb  # this process's own peak (ru_maxrss would include the parent's)
base = peak_rss_kb()
out = {}
for f in sys.argv[1:]:
    t = time.perf_counter()
    try:
        load_spec(f)
        what = "valid"
    except SpecError as e:
        what = str(e)
    out[f] = [time.perf_counter() - t, what]
rss = peak_rss_kb()
print(json.dumps({"cases": out, "base_kb": base, "peak_kb": rss}))
"""


def test_yaml_bombs_refused_in_bounded_time_and_memory():
    """A 550-byte "billion laughs" passed 4 GB in 57 s. Every bomb is now refused before anything is built."""
    bombs = sorted(p for p in BAD if p.stem.startswith("yaml_bomb_"))
    assert len(bombs) == 5
    assert (ROOT / "tests/fixtures/bad_specs/yaml_bomb_lists.yaml").stat().st_size < 600
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, bombs)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    res = json.loads(proc.stdout)
    for f, (seconds, what) in res["cases"].items():
        assert "refused as a YAML bomb" in what, (f, what)
        assert seconds < 5, (f, seconds)  # measured: ~0.01 s each
    assert res["peak_kb"] - res["base_kb"] < 50_000, res  # measured: no growth at all
    assert res["peak_kb"] < 300_000, res  # measured: ~50 MB, the interpreter and its imports


def test_deep_block_nesting_and_control_characters(tmp_path: Path):
    deep = tmp_path / "deep_block.yaml"
    deep.write_text("objective: [{reward: clip}]\ntrain:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(1000))
                    + "  " * 1001 + "x\n")
    with pytest.raises(SpecError, match="nested more than 64 levels deep"):
        load_spec(deep)
    ctrl = tmp_path / "ctrl.yaml"
    ctrl.write_bytes(b"objective: [{reward: clip}]\nname: a\x07b\n")
    with pytest.raises(SpecError) as ei:
        load_spec(ctrl)
    assert "U+0007 is not allowed" in str(ei.value) and ei.value.problems[0].line == 2


ENCODED = {  # file name -> (bytes, expected message)
    "latin1.yaml": ("objective: [{reward: clip}]\nname: café\n".encode("latin-1"),
                    "not UTF-8 text: byte 0xe9 on line 2"),
    "utf16.yaml": ("objective: [{reward: clip}]\n".encode("utf-16"), "UTF-16 text"),
    "utf16be.yaml": (codecs.BOM_UTF16_BE + "objective: [{reward: clip}]\n".encode("utf-16-be"), "UTF-16 text"),
    "utf32.yaml": ("objective: [{reward: clip}]\n".encode("utf-32"), "UTF-32 text"),
    "binary.yaml": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary, not text"),
    "random.yaml": (bytes(random.Random(0).randrange(256) for _ in range(4096)), "the file is"),
}


def test_encodings_and_binary_files(tmp_path: Path):
    for name, (data, msg) in ENCODED.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SpecError, match=re.escape(msg)):
            load_spec(tmp_path / name)
    (tmp_path / "bom.yaml").write_bytes(codecs.BOM_UTF8 + "objective: [{reward: clip}]\nprompts: {train: [café]}\n"
                                        .encode())
    assert load_spec(tmp_path / "bom.yaml").prompts.train.inline == ("café",)  # UTF-8 with a byte-order mark
    files = [str(tmp_path / n) for n in ENCODED]
    proc = rt("validate", *files, columns=300, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out and "--debug" not in out
    for name, (_, msg) in ENCODED.items():
        assert f"1 problem in {tmp_path / name}" in out and msg in out, (name, out)
    assert out.count("save the file as UTF-8") >= 4


def test_spec_path_that_is_not_a_readable_file(tmp_path: Path):
    """A directory, a FIFO (reading one would block), a device (reading /dev/zero would never end), a file we may
    not read: each a clean SpecError."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    cases = {tmp_path: "is a directory", fifo: "is not a regular file", Path("/dev/zero"): "is not a regular file"}
    for path, msg in cases.items():
        with pytest.raises(SpecError, match=msg):
            load_spec(path)
    proc = rt("validate", str(fifo), "/dev/zero", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("is not a regular file") == 2


def test_unreadable_spec_file(tmp_path: Path):
    """A file we may not read. Root reads mode-000 files, so as root the check runs in a child that gives up its
    root rights (effective uid nobody) after importing, which is what an unprivileged user sees."""
    p = tmp_path / "secret.yaml"
    p.write_text("objective: [{reward: clip}]\n")
    p.chmod(0)
    tmp_path.chmod(0o755)
    # (the child validates a good spec first, as root, so every module it needs is imported before the drop)
    drop = "import os\nos.setegid(65534)\nos.seteuid(65534)\n" if os.geteuid() == 0 else ""
    code = ("import contextlib\nfrom rewardtune.cli.main import main\nwith contextlib.suppress(SystemExit):\n"
            f"    main(['validate', 'specs/demo.yaml', {str(p)!r}])\n{drop}main(['validate', {str(p)!r}])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"cannot read '{p}': Permission denied" in proc.stderr and "Traceback" not in proc.stderr


def _float_fields() -> list[tuple[dict, tuple]]:
    """(a minimal spec that reaches the field, the field's path) for every float field of the schema, found by
    walking it, so that a float field added later is covered too. A tuple of floats (`betas`) ends in index 0."""
    import typing

    from rewardtune.spec.load import models_in
    from rewardtune.spec.schema import Spec

    def has_float(ann) -> bool:
        return ann is float or any(has_float(a) for a in typing.get_args(ann))

    def minimal(model) -> dict:  # its discriminator tag and required fields
        out = {}
        for k, f in model.model_fields.items():
            args = typing.get_args(f.annotation)
            if typing.get_origin(f.annotation) is typing.Literal and len(args) == 1:
                out[k] = args[0]
            elif f.is_required():
                out[k] = "x.jsonl"
        return out

    found = []

    def walk(model, path: tuple, data: dict) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            subs = models_in(ann)
            if has_float(ann) and not subs:
                floats_tuple = any(typing.get_origin(a) is tuple for a in (ann, *typing.get_args(ann)))
                found.append((data, path + ((name, 0) if floats_tuple else (name,))))
            many = typing.get_origin(ann) is tuple
            for sub in subs:
                d = copy.deepcopy(data)
                node = d
                for part in path:
                    node = node[part]
                child = {"reward": "clip"} if sub.__name__ == "Term" else minimal(sub)
                node[name] = [child] if many else child
                walk(sub, path + ((name, 0) if many else (name,)), d)

    walk(Spec, (), {"objective": [{"reward": "clip"}]})
    return found


def test_nan_and_inf_refused_in_every_float_field(tmp_path: Path):
    """`train.lr: .inf` trained to exit 0 with every LoRA tensor NaN. Every float field refuses NaN and infinity,
    from YAML and from overrides."""
    import yaml

    from rewardtune.spec.load import dotted

    fields = _float_fields()
    names = {dotted(path) for _, path in fields}
    assert {"train.lr", "train.betas[0]", "objective[0].weight", "sampling.guidance_scale", "method.kl_coeff",
            "model.trainable.alpha", "model.ema.decay", "method.pretrain.weight", "method.margin"} <= names, names
    assert len(fields) >= 15
    for data, path in fields:
        field = path[:-1] if isinstance(path[-1], int) else path  # a tuple of floats is set whole
        for bad in (float("nan"), float("inf"), float("-inf")):
            d = copy.deepcopy(data)
            node = d
            for part in field[:-1]:
                node = node[part]
            node[field[-1]] = [bad, 0.5] if field != path else bad
            (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))  # YAML's .nan / .inf / -.inf
            with pytest.raises(SpecError) as ei:
                load_spec(tmp_path / "s.yaml")
            assert dotted(path) in [p.path for p in ei.value.problems], (path, bad, str(ei.value))
            assert "finite number" in str(ei.value)
        for text in ("nan", "-inf", ".inf"):  # and from an override
            with pytest.raises(SpecError) as ei:
                load_spec(data, overrides=[f"{dotted(field)}=" + (f"[{text}, 0.5]" if field != path else text)])
            assert dotted(path) in [p.path for p in ei.value.problems], (path, str(ei.value))


def test_override_paths_must_exist_in_the_schema():
    """`validate SPEC train.steps.x=1` and `objective.weight=5` said "valid" and dropped the override."""
    demo = ROOT / "specs/demo.yaml"
    cases = {"train.steps.x=1": "train.steps is a number; it has no key 'x'",
             "objective.weight=5": "objective is a list: say which item",
             "train.lrr=1e-3": "unknown key 'lrr'. Did you mean 'lr'?",
             "modle.pretrained=x": "Did you mean 'model'?",
             "train.betas[2]=0.5": "train.betas has 2 items; there is no [2]",
             "sampling[0]=1": "sampling is not a list"}
    for ov, msg in cases.items():
        with pytest.raises(SpecError) as ei:
            load_spec(demo, overrides=[ov])
        assert msg in str(ei.value), (ov, str(ei.value))
        assert ei.value.problems[0].line == 0  # the command line
    proc = rt("validate", "specs/demo.yaml", "train.steps.x=1", "objective.weight=5")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "2 problems" in proc.stderr and "fix: index it, e.g. objective[0].weight" in proc.stderr
    # what does exist still works, in any order: a union member named later, free-form kwargs and sbatch extras
    spec = load_spec(demo, overrides=["method.k_range=[1,2]", "method.name=alignprop", "sampling.steps=4",
                                      "launcher.type=slurm", "launcher.additional.mail-type=END",
                                      "model.ema.decay=0.99", "prompts.train=[a, b]"])
    assert spec.method.k_range == (1, 2) and spec.launcher.additional == {"mail-type": "END"}
    assert spec.model.ema.decay == 0.99 and spec.prompts.train.inline == ("a", "b")
    with pytest.raises(SpecError, match="takes no argument 'x'"):
        load_spec(demo, overrides=["objective[0].kwargs.x=1"])  # a path into kwargs: the card decides


def test_override_values_have_the_spec_limits():
    bomb = "[" + ", ".join(["&a [x, x, x, x, x, x, x, x, x, x]"] + [f"&{n} [" + ",".join([f"*{p}"] * 10) + "]"
                                                                   for p, n in zip("abcd", "bcde", strict=True)]) + "]"
    for ov, msg in {f"objective[0].kwargs={{x: {bomb}}}": "refused as a YAML bomb",
                    "train.seed=" + "9" * 5000: "too large", "name=!foo x": "unknown YAML tag '!foo'",
                    "objective[0].kwargs.x=" + "[" * 1000 + "]" * 1000: "nested more than 64 levels deep"}.items():
        with pytest.raises(SpecError) as ei:
            load_spec(ROOT / "specs/demo.yaml", overrides=[ov])
        assert msg in str(ei.value), (ov[:40], str(ei.value))
        assert ei.value.problems[0].line == 0


def test_load_spec_of_a_loaded_spec_keeps_its_folder(tmp_path: Path, monkeypatch):
    from rewardtune.prompts import resolve_prompts
    from rewardtune.spec.load import spec_base_dir

    d = tmp_path / "exp"
    d.mkdir()
    (d / "p.txt").write_text("a cat\na dog\n")
    (d / "s.yaml").write_text("objective: [{reward: clip}]\nprompts: {train: {file: p.txt}}\n")
    monkeypatch.chdir(tmp_path)
    first = load_spec(d / "s.yaml")
    again = load_spec(first, overrides=["train.steps=3"])
    assert spec_base_dir(again) == d.resolve()
    assert resolve_prompts(again.prompts.train, spec_base_dir(again)) == ["a cat", "a dog"]
    assert spec_base_dir(load_spec(first, tiny=True)) == d.resolve()


def test_imports_that_exit_do_not_end_validation(tmp_path: Path):
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "s.yaml").write_text("imports: [exits.py]\nobjective: [{reward: clip}]\ntrain: {stepz: 1}\n")
    proc = rt("validate", str(tmp_path / "s.yaml"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "imports[0] (line 1): importing 'exits.py' called sys.exit(0)" in proc.stderr
    assert "unknown key 'stepz'" in proc.stderr and "Traceback" not in proc.stderr


def _code_that_leaves_marks(tmp_path: Path) -> Path:
    (tmp_path / "mine.py").write_text(f"open({str(tmp_path / 'ran-imports')!r}, 'w').close()\n")
    pkg = tmp_path / "markpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"open({str(tmp_path / 'ran-package')!r}, 'w').close()\n")
    (pkg / "rewards.py").write_text("class Mine:\n    pass\n")
    spec = tmp_path / "s.yaml"
    spec.write_text("imports: [mine.py]\nobjective:\n  - reward: markpkg.rewards:Mine\n"
                    "  - reward: registered-by-mine\n")
    return spec


def test_no_imports_runs_no_code_from_the_spec(tmp_path: Path):
    """A spec is code (`imports:`, and finding `pkg.mod:Class` imports `pkg`); --no-imports runs none of it and
    lists what it therefore could not check."""
    spec = _code_that_leaves_marks(tmp_path)

    def rt_here(*args: str) -> subprocess.CompletedProcess:  # tmp_path on the path, for markpkg
        return rt(*args, PYTHONPATH=f"{ROOT}:{tmp_path}", timeout=120)

    proc = rt_here("validate", "--no-imports", str(spec))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    flat = " ".join(proc.stdout.split())
    assert "valid" in flat and "not checked" in flat
    for name in ("imports[0]: mine.py", "objective[0].reward: markpkg.rewards:Mine",
                 "objective[1].reward: registered-by-mine (perhaps registered by `imports:`)"):
        assert name in flat, flat
    proc = rt_here("submit", str(spec), "--dry-run", "--no-imports")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "#SBATCH" in proc.stdout and "not checked (--no-imports): imports[0]: mine.py" in proc.stderr
    assert not (tmp_path / "ran-imports").exists() and not (tmp_path / "ran-package").exists()
    # without the flag the same spec runs its code (which is why the flag exists)
    proc = rt_here("validate", str(spec))
    assert (tmp_path / "ran-imports").exists() and (tmp_path / "ran-package").exists()
    assert proc.returncode == 2 and "Unknown reward 'registered-by-mine'" in proc.stderr  # mine.py registers none
