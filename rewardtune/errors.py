"""Errors that carry their fix. Importing this module is cheap (no torch)."""
from __future__ import annotations

from dataclasses import dataclass


class RewardtuneError(Exception):
    """Base class. The CLI prints these without a traceback (unless --debug)."""

    exit_code = 1


class UsageError(RewardtuneError):
    """Bad input from the user: a spec, an option, a file. Exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One located problem in a spec."""

    path: str  # dotted path, e.g. "objective[0].weight"
    message: str
    line: int | None = None
    fix: str | None = None

    def format(self, source: str | None = None) -> str:
        where = f"{source}:{self.line}" if source and self.line else (f"line {self.line}" if self.line else "")
        head = f"{self.path or '<spec>'}" + (f" ({where})" if where else "")
        text = f"{head}: {self.message}"
        if self.fix:
            text += f"\n    fix: {self.fix}"
        return text


class SpecError(UsageError):
    """Every problem found in a spec, reported at once."""

    def __init__(self, problems: list[Problem], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        n = len(self.problems)
        lines = [f"{n} problem{'s' if n != 1 else ''} in {source or 'spec'}:"]
        lines += ["  " + p.format(source).replace("\n", "\n  ") for p in self.problems]
        super().__init__("\n".join(lines))


class UnknownRewardError(UsageError):
    pass


class RegistryConflictError(RewardtuneError):
    pass


class MissingDependencyError(RewardtuneError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str | None, purpose: str):
        hint = f"pip install 'rewardtune[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{purpose} needs the package '{package}', which is not installed. Install it with: {hint}")


class MissingWeightsError(RewardtuneError):
    """Model weights could not be found locally and could not be downloaded."""
