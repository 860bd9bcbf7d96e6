"""`rewardtune` command line. Start-up stays cheap: verb modules import torch inside their functions only.

Each verb lives in `rewardtune/cli/<verb>.py` and exposes `COMMAND` (the typer callback) and optionally
`HELP`. Verbs are discovered from VERBS, so adding one does not touch this file beyond the list.

Global options (`--debug`) are accepted before the verb and after it: every verb gets them (`_with_globals`).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from typing import Any

import typer

from rewardtune.cli import common

VERBS = ["run", "eval", "validate", "specs", "weights", "rewards", "score", "submit", "status", "cancel", "env"]
DEBUG_HELP = "Show full tracebacks on errors (also REWARDTUNE_DEBUG=1)."

app = typer.Typer(
    name="rewardtune",
    help="Fine-tune text-to-image diffusion models against reward models.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        import rewardtune

        typer.echo(f"rewardtune {rewardtune.__version__}")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
          version: bool = typer.Option(False, "--version", "-V", help="Print rewardtune's version and exit.",
                                       callback=_version, is_eager=True)) -> None:
    common.STATE.debug = debug or common.STATE.debug


def _no_bool_type(display_type_rich):
    """typer's --help prints `<bool>` beside every flag (--tiny, --help): a flag takes no value, so show none."""

    @functools.wraps(display_type_rich)
    def shown(self, ctx):
        return None if getattr(self, "is_flag", False) else display_type_rich(self, ctx)

    return shown


if callable(getattr(typer.core.TyperOption, "display_type_rich", None)):  # a typer without it: help shows `<bool>`
    typer.core.TyperOption.display_type_rich = _no_bool_type(typer.core.TyperOption.display_type_rich)


def _with_globals(fn):
    """`fn` with the global options added to its signature (typer reads the signature), removed before the call."""
    sig = inspect.signature(fn, eval_str=True)

    @functools.wraps(fn)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any):
        if debug:
            common.STATE.debug = True
        return fn(*args, **kwargs)

    params = [*sig.parameters.values(),
              inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                default=typer.Option(False, "--debug", help=DEBUG_HELP))]
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**{p.name: p.annotation for p in params}, "return": sig.return_annotation}
    return wrapper


def _register() -> None:
    for verb in VERBS:
        try:
            mod = importlib.import_module(f"rewardtune.cli.{verb}")
        except ModuleNotFoundError as e:
            if e.name == f"rewardtune.cli.{verb}":
                continue  # verb not shipped in this build
            raise
        register = getattr(mod, "register", None)
        if register is not None:  # a verb with sub-commands (`specs cp`) adds itself as a group
            register(app, _with_globals)
            continue
        app.command(verb, help=getattr(mod, "HELP", None))(_with_globals(mod.COMMAND))


_register()


def main(argv: list[str] | None = None) -> None:
    args = list(argv if argv is not None else sys.argv[1:])
    before_separator = args[:args.index("--")] if "--" in args else args
    if os.environ.get("REWARDTUNE_DEBUG") or "--debug" in before_separator:
        common.STATE.debug = True  # at once: errors raised while the command line is parsed get tracebacks too
    try:
        app(args=args, prog_name="rewardtune", standalone_mode=True)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001
        raise SystemExit(common.report_error(e)) from None


if __name__ == "__main__":
    main()
