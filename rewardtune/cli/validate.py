"""`rewardtune validate SPEC... [key=value ...]`: check specs without importing torch or loading weights."""
from __future__ import annotations

from pathlib import Path

import typer

from rewardtune.cli.common import console, guarded, report_error

HELP = ("Validate experiment specs: prints 'valid' or every problem at once (exit 2; 4 when only an extra is "
        "missing). Also checks what a run would reject on this machine (prompt files, local weights, extras, "
        "device). A spec is code: its `imports:` run unless --no-imports.")


def _escape(s: str) -> str:
    from rich.markup import escape

    return escape(s)


def _is(p: Path, test: str) -> bool:
    try:
        return getattr(p, test)()
    except (OSError, ValueError):  # a folder we may not enter: loading the path reports why
        return False


@guarded
def COMMAND(  # noqa: N802
    specs: list[str] = typer.Argument(..., help="Spec files (or folders, searched recursively), then key=value "
                                                "overrides applied to each."),
    tiny: bool = typer.Option(False, "--tiny", help="Also check the tiny-twin version of the spec."),
    show: bool = typer.Option(False, "--show", help="Print the resolved spec (YAML) of each valid file."),
    no_imports: bool = typer.Option(False, "--no-imports", help="Run no code from the spec: skip its `imports:` "
                                                                "and `module:Class` rewards, and list the names "
                                                                "left unchecked."),
) -> None:
    from rewardtune.cli.rewards import print_plugin_warnings
    from rewardtune.errors import SpecError
    from rewardtune.spec.load import load_spec, unresolved_names
    from rewardtune.spec.preflight import preflight

    files: list[Path] = []
    overrides: list[str] = []
    for a in specs:
        if "=" in a and not _is(Path(a), "exists"):
            overrides.append(a)
            continue
        p = Path(a)
        if _is(p, "is_dir"):
            files += sorted(list(p.rglob("*.yaml")) + list(p.rglob("*.yml")))
        else:
            files.append(p)
    if not files:
        raise typer.BadParameter("give at least one spec file")
    out = console()
    worst = 0
    for f in files:
        try:
            spec = load_spec(f, overrides=overrides, tiny=tiny, imports=not no_imports)
            preflight(spec)
        except SpecError as e:
            worst = max(worst, report_error(e))
            continue
        out.print(f"[green]valid[/] {_escape(str(f))}  [dim]({spec.method.name}, {len(spec.objective)} "
                  f"term{'s' if len(spec.objective) != 1 else ''})[/]")
        unresolved = unresolved_names(spec)
        if unresolved:
            out.print("  [yellow]not checked[/] (--no-imports: only the spec's code could resolve these):",
                      soft_wrap=True)
            for name in unresolved:
                out.print(f"    {_escape(name)}", soft_wrap=True)
        if show:
            import yaml

            out.print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), markup=False)
    print_plugin_warnings()
    if worst:
        raise typer.Exit(worst)
