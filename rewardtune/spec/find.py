"""Which file a spec argument names: the one rule every command and `load_spec` follow.

A local file wins: `ARG` itself, then `ARG.yaml`, then `ARG.yml`. Only then a spec shipped with rewardtune
(`demo`, `demo.yaml`, `specs/demo.yaml`), so `rewardtune run specs/demo.yaml` works from an installed wheel
outside the repository, and a user's `./demo.yaml` is never shadowed by the shipped one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ResolvedSpec:
    """Which file a spec argument names: `shipped` when it is one of rewardtune's own specs; `shadows` when a local
    file was used although a shipped spec has the same name."""

    arg: str
    path: Path
    shipped: bool
    shadows: Path | None = None

    def note(self) -> str:
        if self.shipped:
            return f"spec: the shipped spec '{self.path.stem}' ({self.path}); `rewardtune specs cp {self.path.stem}` " \
                   "copies it to edit"
        if self.shadows is not None:
            return f"spec: {self.path} (a local file; it wins over the shipped spec '{self.shadows.stem}')"
        return f"spec: {self.path}"


def shipped_specs() -> list[Path]:
    """Every spec shipped with rewardtune, sorted."""
    d = _specs_dir()
    return sorted(p for p in d.rglob("*") if p.suffix in SUFFIXES and p.is_file()) if d.is_dir() else []


def shipped_spec(name: str | Path, *, folders: bool = False) -> Path | None:
    """The shipped spec `name` names (`demo`, `demo.yaml`, `specs/demo.yaml`; with `folders`, also `specs/` and
    its subfolders), or None."""
    p = Path(name)
    rel = p.parts[1:] if p.parts[:1] == ("specs",) else p.parts
    if p.is_absolute() or ".." in rel:
        return None
    cand = _specs_dir().joinpath(*rel)
    try:  # a name too long for the file system, or with a NUL, names no shipped spec
        if folders and (not rel or p.parts[:1] == ("specs",)) and cand.is_dir():
            return cand
        if not rel:
            return None
        return next((c for c in (cand, *(cand.with_name(cand.name + s) for s in SUFFIXES))
                     if c.suffix in SUFFIXES and c.is_file()), None)
    except (OSError, ValueError):
        return None


def find_spec(arg: str | Path) -> ResolvedSpec | None:
    """The file `arg` names under the rule above, or None when it names neither a local file nor a shipped spec."""
    arg = str(arg)
    local = Path(arg)
    candidates = [local] + ([] if local.suffix in SUFFIXES else [Path(arg + s) for s in SUFFIXES])
    shipped = shipped_spec(arg)
    for c in candidates:
        if exists(c):
            shadows = shipped is not None and c.resolve() != shipped.resolve()
            return ResolvedSpec(arg, c, False, shipped if shadows else None)
    return ResolvedSpec(arg, shipped, True) if shipped is not None else None


def exists(p: Path) -> bool:
    """Whether `p` is there. A path that cannot be checked (a folder we may not enter, a name too long) counts as
    there, so that reading it reports why; a name with a NUL is not."""
    try:
        return p.exists()
    except OSError:
        return True
    except ValueError:
        return False


def _specs_dir() -> Path:
    from rewardtune.registry import bundled_dir

    return bundled_dir("specs")
