"""Tiny twins are bitwise reproducible across processes, and their cache key covers every source they are built
from (a twin built by stale code must never be reused)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BUILD_ALL = """
import json, sys
from rewardtune.zoo import available, materialize
print(json.dumps({ref: str(materialize(ref)) for ref in available()}))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHASHSEED", "REWARDTUNE_CACHE")}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, **extra)
    return env


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_every_twin_is_bitwise_identical_when_built_by_two_fresh_processes(tmp_path):
    """Different hash seeds, thread counts and caches: every file (weights, tokenizer, configs) is byte-identical.
    The ImageReward twin's WordPiece vocabulary used to change from process to process (tokenizers' trainer
    numbered symbols in hash-map order), so one image scored -3.26 with one cache and -1.87 with another."""
    runs = []
    for i, (hashseed, threads) in enumerate([("1", "1"), ("4242", "2")]):
        env = _env(PYTHONHASHSEED=hashseed, REWARDTUNE_CACHE=str(tmp_path / f"cache{i}"), OMP_NUM_THREADS=threads,
                   RAYON_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="true" if i else "false")
        runs.append(subprocess.Popen([sys.executable, "-c", BUILD_ALL], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True))
    outs = []
    for p in runs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    a, b = outs
    assert sorted(a) == sorted(b) and len(a) >= 10, "every twin is built"
    for ref in a:
        fa, fb = _files(Path(a[ref])), _files(Path(b[ref]))
        assert sorted(fa) == sorted(fb), ref
        assert len(fa) >= 2, ref
        differing = [name for name in fa if fa[name] != fb[name]]
        assert not differing, f"{ref}: {differing} differ between two builds"
        assert Path(a[ref]).name == Path(b[ref]).name, "same sources, same cache key"


KEYS = """
import json
from rewardtune.zoo import available, cache_dir
print(json.dumps({ref: cache_dir(ref).name for ref in available()}))
"""


def _keys(pkg_root: Path) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", KEYS], env=_env(PYTHONPATH=str(pkg_root)), cwd=pkg_root,
                         capture_output=True, text=True, timeout=120)  # cwd: `-c` puts it first on sys.path
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("edited, changes, stays", [
    # a borrowed reward module: ImageReward's twin takes its head and BLIP config from it; pickscore borrows
    # `redraw` from zoo/imagereward.py, which imports it
    ("rewards/imagereward.py", ["zoo:imagereward", "zoo:pickscore"], ["zoo:clip", "zoo:sd1", "zoo:lm"]),
    # a shared helper module of the zoo, borrowed by the aesthetic and pickscore twins
    ("zoo/clip.py", ["zoo:clip", "zoo:aesthetic", "zoo:pickscore"], ["zoo:imagereward", "zoo:sam"]),
    ("zoo/tokenizers.py", ["zoo:clip", "zoo:imagereward", "zoo:lm", "zoo:blip2", "zoo:sd1"], ["zoo:sam"]),
    ("rewards/preprocess.py", ["zoo:hpsv2", "zoo:aesthetic"], ["zoo:blip2", "zoo:lm"]),  # transitively
    ("data/prompts/animals.txt", ["zoo:sam", "zoo:clip"], []),  # package data
])
def test_cache_key_changes_when_a_source_the_builder_uses_changes(tmp_path, edited, changes, stays):
    pkg = tmp_path / "src"
    shutil.copytree(ROOT / "rewardtune", pkg / "rewardtune", ignore=shutil.ignore_patterns("__pycache__"))
    before = _keys(pkg)
    target = pkg / "rewardtune" / edited
    target.write_text(target.read_text() + "\n# an edit\n" if edited.endswith(".py") else target.read_text() + "x\n")
    after = _keys(pkg)
    for ref in changes:
        assert before[ref] != after[ref], f"editing {edited} must give {ref} a new cache entry"
    for ref in stays:
        assert before[ref] == after[ref], f"{ref} does not use {edited}: its cache entry stays"
