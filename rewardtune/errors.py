"""Errors that carry their fix. Importing this module is cheap (no torch).

Exit codes (the same cause gets the same code in every verb):

    0  ok
    1  an internal bug (a traceback with --debug); never raised on purpose
    2  bad input: a spec, an override, an option, a path, an image, an unusable output directory   UsageError
    3  interrupted, resumable: a checkpoint of the last finished step was written                  RunInterrupted
    4  missing weights, or an optional dependency (extra) that is not installed      MissingWeightsError,
                                                                                      MissingDependencyError
"""
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


class RegistryConflictError(UsageError):
    """Two rewards registered under one name, or a malformed reward card (bad input: exit 2)."""


class MissingDependencyError(RewardtuneError):
    """An optional dependency is missing; the message names the extra to install. Exit code 4."""

    exit_code = 4

    def __init__(self, package: str, extra: str | None, purpose: str):
        hint = f"pip install 'rewardtune[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{purpose} needs the package '{package}', which is not installed. Install it with: {hint}")


class MissingWeightsError(RewardtuneError):
    """Model weights could not be found locally and could not be downloaded. Exit code 4."""

    exit_code = 4


class RunInterrupted(RewardtuneError):
    """A run was asked to stop (a signal, a time limit, `request_stop`) in the middle of sampling. The training
    loop catches it, writes a checkpoint of its last finished step and returns a result marked stopped: resuming
    continues the run. Exit code 3 if it ever reaches the command line."""

    exit_code = 3


class OutputDirError(UsageError):
    """The output directory cannot be used: not a directory, not writable, full, or held by another run."""


class ExistingRunError(OutputDirError):
    """The output directory holds a run, and the new run was asked neither to resume it nor to start over."""


class CheckpointError(UsageError):
    """A run cannot be resumed from its checkpoints (all unreadable, an unsafe format, past its steps)."""


class ResumeSpecError(CheckpointError):
    """The spec given to resume a run differs from the one the run was started with."""
