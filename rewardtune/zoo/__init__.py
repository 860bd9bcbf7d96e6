"""Offline tiny twins: seeded random models of each family, built from configs with no downloads.

`zoo:NAME` in a preset's `weights` (or a model's `pretrained`) resolves to a local directory written by
`save_pretrained`, so the same loading code runs on tiny twins as on real checkpoints.

- `zoo:X`   -> `rewardtune.zoo.X.build(path, seed)`
- `zoo:X.Y` -> `rewardtune.zoo.X.build_Y(path, seed)` (helpers that are not builders must not be named `build*`)

Each builder writes a directory that the matching reward / engine loader reads with `from_pretrained`.
Directories are cached under `$REWARDTUNE_CACHE/zoo` (default `~/.cache/rewardtune/zoo`), keyed by name, seed,
`ZOO_VERSION`, a hash of every source file the builder uses (`source_files`: its module, the rewardtune modules it
imports, transitively, and the package's data files) and the versions of the libraries that build the models. They
are written atomically (temp dir + rename) so concurrent processes never see half a model.

Builders are deterministic: the same name and seed give the same bytes in every process and on every machine with
the same library versions. All randomness comes from the seeded torch generator (or an explicit
`torch.Generator`), tokenizers are trained by `tokenizers.train_bpe` (plain Python, no hash-map order), and nothing
depends on `hash()`, set order or the time.
"""
from __future__ import annotations

import functools
import importlib
import os
import shutil
import tempfile
from pathlib import Path

ZOO_VERSION = 1
DEFAULT_SEED = 0


def cache_root() -> Path:
    root = os.environ.get("REWARDTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rewardtune")
    return Path(root) / "zoo"


def _split(ref: str) -> tuple[str, str]:
    name = ref[4:] if ref.startswith("zoo:") else ref
    module, _, variant = name.partition(".")
    if not module.replace("_", "").isalnum():
        raise ValueError(f"Bad zoo reference '{ref}'")
    return module, ("build_" + variant if variant else "build")


def builder(ref: str):
    module, fn = _split(ref)
    try:
        mod = importlib.import_module(f"rewardtune.zoo.{module}")
        return getattr(mod, fn)
    except (ImportError, AttributeError):
        raise ValueError(f"Unknown tiny twin '{ref}'. Available: {', '.join(available())}") from None


def available() -> list[str]:
    here = Path(__file__).parent
    out = []
    for p in sorted(here.glob("*.py")):
        if p.stem.startswith("_") or p.stem == "tokenizers":
            continue
        text = p.read_text()
        for line in text.splitlines():
            if line.startswith("def build("):
                out.append(f"zoo:{p.stem}")
            elif line.startswith("def build_"):
                out.append(f"zoo:{p.stem}.{line[len('def build_'):].split('(')[0]}")
    return out


#: libraries whose code shapes what a builder writes (initialisation, file formats): their versions are in the key
_LIBRARIES = ("torch", "transformers", "tokenizers", "diffusers", "safetensors", "numpy")


def _module_file(name: str) -> Path | None:
    """The source file of a `rewardtune...` module, found without importing it."""
    root = Path(__file__).resolve().parents[1]  # the rewardtune package
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    """`rewardtune...` modules that the source at `path` imports anywhere (inside functions too)."""
    import ast

    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {m for m in found if m == "rewardtune" or m.startswith("rewardtune.")}


def source_files(ref: str) -> list[Path]:
    """Every file of this package that the builder of `ref` runs: its module and, transitively, each rewardtune
    module imported from it (shared helpers, reward code it borrows configs or heads from), plus the package's
    data files. Parent packages' `__init__` files count only when imported by name."""
    module, _ = _split(ref)
    todo, seen, files = [f"rewardtune.zoo.{module}"], set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:  # a name imported from a module, not a module itself
            continue
        files.add(path)
        todo.extend(_imported_modules(path, name) - seen)
    data = Path(__file__).resolve().parents[1] / "data"
    files.update(p for p in data.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                 and p.relative_to(data).parts[0] != "models")  # trained models (zoo:shapes-*) are no twin's source
    return sorted(files)


@functools.cache
def _source_hash(ref: str) -> str:
    """Hash of every source the builder of `ref` uses (`source_files`) and of the versions of the libraries that
    initialise and write the models: editing any of them gives the twin a new cache entry."""
    import hashlib
    from importlib import metadata

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in source_files(ref):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    for lib in _LIBRARIES:
        try:
            version = metadata.version(lib)
        except metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{lib}={version}\0".encode())
    return h.hexdigest()[:10]


def cache_dir(ref: str, seed: int = DEFAULT_SEED) -> Path:
    """Where the tiny twin `ref` built with `seed` is (or will be) cached."""
    builder(ref)  # an unknown twin fails here, with the list of known ones
    name = ref[4:] if ref.startswith("zoo:") else ref
    return cache_root() / f"{name}-s{seed}-v{ZOO_VERSION}-{_source_hash(ref)}"


def materialize(ref: str, seed: int = DEFAULT_SEED) -> Path:
    """Build the tiny twin `ref` once and return its directory (cached, atomic)."""
    build = builder(ref)
    name = ref[4:] if ref.startswith("zoo:") else ref
    target = cache_dir(ref, seed)
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            build(tmp, seed)
        (tmp / ".complete").write_text(ref)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; theirs is complete
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
