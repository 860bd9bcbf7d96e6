"""`rewardtune` command line. Start-up stays cheap: verb modules import torch inside their functions only.

Each verb lives in `rewardtune/cli/<verb>.py` and exposes `COMMAND` (the typer callback) and optionally
`HELP`. Verbs are discovered from VERBS, so adding one does not touch this file beyond the list.
"""
from __future__ import annotations

import importlib
import os
import sys

import typer

from rewardtune.cli import common

VERBS = ["run", "validate", "rewards", "score", "submit", "status", "cancel", "env"]

app = typer.Typer(
    name="rewardtune",
    help="Fine-tune text-to-image diffusion models against reward models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    common.STATE.debug = debug or common.STATE.debug


def _register() -> None:
    for verb in VERBS:
        try:
            mod = importlib.import_module(f"rewardtune.cli.{verb}")
        except ModuleNotFoundError as e:
            if e.name == f"rewardtune.cli.{verb}":
                continue  # verb not shipped in this build
            raise
        app.command(verb, help=getattr(mod, "HELP", None))(mod.COMMAND)


_register()


def main(argv: list[str] | None = None) -> None:
    if os.environ.get("REWARDTUNE_DEBUG") or "--debug" in (argv if argv is not None else sys.argv):
        common.STATE.debug = True
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001
        raise SystemExit(common.report_error(e)) from None


if __name__ == "__main__":
    main()
