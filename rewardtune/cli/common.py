"""Shared CLI plumbing: error reporting without tracebacks, the console, and a guard for verbs."""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class _State:
    debug: bool = False


STATE = _State()


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def report_error(e: BaseException) -> int:
    """Print an error the user can act on; return the exit code. Tracebacks only with --debug."""
    from rewardtune.errors import RewardtuneError, SpecError

    if isinstance(e, KeyboardInterrupt):
        console(stderr=True).print("[yellow]Interrupted.[/]")
        return 130
    if STATE.debug:
        import traceback

        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    err = console(stderr=True)
    if isinstance(e, SpecError):
        err.print(f"[bold red]error:[/] {len(e.problems)} problem{'s' if len(e.problems) != 1 else ''} in "
                  f"{e.source or 'spec'}")
        for p in e.problems:
            where = f"line {p.line}" if p.line else ("command line" if p.line == 0 else "")
            err.print(f"  [bold]{_escape(p.path or '<spec>')}[/]" + (f" [dim]({where})[/]" if where else "")
                      + f": {_escape(p.message)}", soft_wrap=True)
            if p.fix:
                err.print(f"      [green]fix:[/] {_escape(p.fix)}", soft_wrap=True)
        return e.exit_code
    if isinstance(e, RewardtuneError):
        err.print("[bold red]error:[/] " + _escape(str(e)), soft_wrap=True)
        return e.exit_code
    err.print(f"[bold red]error:[/] {type(e).__name__}: " + _escape(str(e)), soft_wrap=True)
    if not STATE.debug:
        err.print("[dim]Run with --debug for the full traceback.[/]")
    return 1


def _escape(s: str) -> str:
    from rich.markup import escape

    return escape(s)


def guarded(fn):
    """Wrap a verb so RewardtuneErrors exit with their code and a clean message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        import typer

        try:
            return fn(*args, **kwargs)
        except SystemExit:
            raise
        except BaseException as e:  # noqa: BLE001
            if type(e).__module__.startswith(("typer", "click")):
                raise  # typer.Exit, usage errors: typer reports these itself
            raise typer.Exit(report_error(e)) from None

    return wrapper
