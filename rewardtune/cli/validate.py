"""`rewardtune validate SPEC... [key=value ...]`: check specs without importing torch or loading weights."""
from __future__ import annotations

from pathlib import Path

import typer

from rewardtune.cli.common import console, guarded, report_error

HELP = "Validate experiment specs: prints 'valid' or every problem at once (exit 2)."


@guarded
def COMMAND(  # noqa: N802
    specs: list[str] = typer.Argument(..., help="Spec files (or folders, searched recursively), then key=value "
                                                "overrides applied to each."),
    tiny: bool = typer.Option(False, "--tiny", help="Also check the tiny-twin version of the spec."),
    show: bool = typer.Option(False, "--show", help="Print the resolved spec (YAML) of each valid file."),
) -> None:
    from rewardtune.errors import SpecError
    from rewardtune.spec.load import load_spec

    files: list[Path] = []
    overrides: list[str] = []
    for a in specs:
        if "=" in a and not Path(a).exists():
            overrides.append(a)
            continue
        p = Path(a)
        if p.is_dir():
            files += sorted(list(p.rglob("*.yaml")) + list(p.rglob("*.yml")))
        else:
            files.append(p)
    if not files:
        raise typer.BadParameter("give at least one spec file")
    out = console()
    worst = 0
    for f in files:
        try:
            spec = load_spec(f, overrides=overrides, tiny=tiny)
        except SpecError as e:
            worst = max(worst, report_error(e))
            continue
        out.print(f"[green]valid[/] {f}  [dim]({spec.method.name}, {len(spec.objective)} "
                  f"term{'s' if len(spec.objective) != 1 else ''})[/]")
        if show:
            import yaml

            out.print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), markup=False)
    if worst:
        raise typer.Exit(worst)
