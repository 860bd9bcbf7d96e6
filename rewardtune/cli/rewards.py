"""`rewardtune rewards`: the registered rewards as a table (reads cards only; no torch)."""
from __future__ import annotations

import typer

from rewardtune.cli.common import console, guarded

HELP = ("List registered rewards: differentiable or not, inputs, presets, default weights, and whether each is ready "
        "here (its weights in the hub cache, its extras installed).")


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


def readiness(card, preset: str | None = None) -> tuple[str, str]:
    """(state, how to fix) of a reward's preset on this machine: ready, not implemented, extra missing (a package
    it or its weights need is not installed), or weights missing (not in the hub cache, or a local path that is
    not there). Reads files only: no torch, no network."""
    from rewardtune.rewards._weights import check, reward_weights

    if not card.implemented():
        return "not implemented", ""
    missing = card.missing_requirements()
    if missing:
        extras = sorted({m.get("extra") or m["package"] for m in missing})
        return "extra missing", f"pip install 'rewardtune[{','.join(extras)}]'"
    statuses = check(reward_weights(card, preset), sizes=False)
    extra = [s for s in statuses if s.state == "extra"]
    if extra:
        return "extra missing", extra[0].detail.split(": ", 1)[-1]
    absent = [s for s in statuses if not s.ok]
    if absent:
        name = card.name + (f":{preset}" if preset and preset != card.default_preset else "")
        return "weights missing", (f"{len(absent)} of {len(statuses)} checkpoints; rewardtune weights {name} "
                                   "--download")
    return "ready", ""


def _status(card, preset: str | None = None) -> str:
    from rich.markup import escape

    state, fix = readiness(card, preset)
    colour = {"ready": "green", "not implemented": "yellow", "extra missing": "yellow"}.get(state, "red")
    return f"[{colour}]{state}[/]" + (" " + escape(f"({fix})") if fix else "")


def _card_summary(c) -> dict:
    state, fix = readiness(c)
    return {"name": c.name, "differentiable": c.differentiable, "inputs": list(c.inputs),
            "presets": list(c.presets), "default_weights": c.default_weights, "implemented": c.implemented(),
            "missing_dependencies": [m["package"] for m in c.missing_requirements()], "origin": c.origin,
            "status": state, "status_fix": fix}


def _show_card(c, as_json: bool) -> None:
    import json

    from rewardtune.rewards._weights import WEIGHT_KEYS, secondary_weight_keys

    data = {**_card_summary(c), "implementation": c.implementation, "description": c.description,
            "direction": c.direction, "typical_range": c.typical_range, "params": c.params,
            "weight_keys": ["weights", *(k for k in secondary_weight_keys(c.presets) if k in WEIGHT_KEYS)],
            "revision_keys": [k for k in secondary_weight_keys(c.presets) if k not in WEIGHT_KEYS], "presets": c.presets,
            "preset_status": {p: readiness(c, p)[0] for p in c.presets}, "citation": c.citation, "license": c.license}
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    import yaml

    out = console()
    out.print(f"[bold]{c.name}[/]  {_status(c)}  [dim]{c.origin}[/]")
    out.print(yaml.safe_dump({k: v for k, v in data.items() if k not in ("name", "origin", "status", "status_fix")},
                             sort_keys=False), markup=False)
    out.print(f"[dim]Weights keys: in a spec `objective[N].weights` and `objective[N].kwargs.KEY`; in `rewardtune "
              f"score`, `--weights {c.name}.KEY=DIR`. `rewardtune weights {c.name}` lists its checkpoints.[/]",
              soft_wrap=True)
