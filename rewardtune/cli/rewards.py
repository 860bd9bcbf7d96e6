"""`rewardtune rewards`: the registered rewards as a table (reads cards only; no torch)."""
from __future__ import annotations

import typer

from rewardtune.cli.common import console, guarded

HELP = "List registered rewards: differentiable or not, inputs, presets, default weights, dependencies."


@guarded
def COMMAND(  # noqa: N802
    name: str = typer.Argument(None, help="Show one reward's card in full."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    from rewardtune.registry import registry

    reg = registry()
    cards = reg.cards()
    print_plugin_warnings()
    if name:
        _show_card(reg.get(name), as_json)
        return
    if as_json:
        import json

        typer.echo(json.dumps([_card_summary(c) for c in cards], indent=2))
        return
    from rich.table import Table

    t = Table(title="Registered rewards", title_justify="left")
    t.add_column("name", no_wrap=True, style="bold")
    t.add_column("differentiable", no_wrap=True)
    for col in ("inputs", "presets", "default weights", "status"):
        t.add_column(col, overflow="fold")
    for c in cards:
        t.add_row(c.name, "yes" if c.differentiable else "no (ranked)", ", ".join(c.inputs), ", ".join(c.presets),
                  str(c.default_weights or "-"), _status(c))
    console().print(t)
    console().print("[dim]`rewardtune rewards NAME` shows a card in full. Use a reward in a spec with "
                    "`objective: [{reward: NAME, preset: PRESET}]`.[/]")


def print_plugin_warnings() -> None:
    """One warning line (stderr) per reward plugin that failed to load: it is skipped, not fatal."""
    from rich.markup import escape

    from rewardtune.registry import registry

    err = console(stderr=True)
    for p in registry().skipped:
        err.print("[yellow]warning:[/] " + escape(p.message()), soft_wrap=True)


def _status(card) -> str:
    if not card.implemented():
        return "[yellow]not implemented[/]"
    missing = card.missing_requirements()
    if missing:
        extras = sorted({m.get("extra") or m["package"] for m in missing})
        from rich.markup import escape

        return "[red]missing deps[/] " + escape(f"(pip install 'rewardtune[{','.join(extras)}]')")
    return "[green]ready[/]"


def _card_summary(c) -> dict:
    return {"name": c.name, "differentiable": c.differentiable, "inputs": list(c.inputs),
            "presets": list(c.presets), "default_weights": c.default_weights, "implemented": c.implemented(),
            "missing_dependencies": [m["package"] for m in c.missing_requirements()], "origin": c.origin}


def _show_card(c, as_json: bool) -> None:
    import json

    data = {**_card_summary(c), "implementation": c.implementation, "description": c.description,
            "direction": c.direction, "typical_range": c.typical_range, "params": c.params, "presets": c.presets,
            "citation": c.citation, "license": c.license}
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    import yaml

    out = console()
    out.print(f"[bold]{c.name}[/]  {_status(c)}  [dim]{c.origin}[/]")
    out.print(yaml.safe_dump({k: v for k, v in data.items() if k not in ("name", "origin")}, sort_keys=False),
              markup=False)
