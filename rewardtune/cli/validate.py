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
    specs: list[str] = typer.Argument(None, help="Spec files (or folders, searched recursively; `specs/` is the "
                                                 "shipped specs when there is no such folder here), then key=value "
                                                 "overrides applied to each.", show_default=False),
    tiny: bool = typer.Option(False, "--tiny", help="Also check the tiny-twin version of the spec."),
    show: bool = typer.Option(False, "--show", help="Print the resolved spec (YAML) of each valid file."),
    no_imports: bool = typer.Option(False, "--no-imports", help="Run no code from the spec: skip its `imports:` "
                                                                "and `module:Class` rewards, and list the names "
                                                                "left unchecked."),
    explain: list[str] = typer.Option(None, "--explain", metavar="FIELD",
                                      help="Print the reference of a spec field (e.g. train.lr, method.k, logging) "
                                           "and exit; repeatable."),
) -> None:
    if explain:
        for i, key in enumerate(explain):
            if i:
                typer.echo("")
            typer.echo(explain_field(key))
        return
    from rewardtune.cli.rewards import print_plugin_warnings
    from rewardtune.errors import SpecError
    from rewardtune.spec.find import find_spec, shipped_spec
    from rewardtune.spec.load import load_spec, unresolved_names
    from rewardtune.spec.preflight import preflight

    files: list[Path] = []
    overrides: list[str] = []
    for a in specs or []:
        if "=" in a and not _is(Path(a), "exists"):
            overrides.append(a)
            continue
        p = Path(a)
        if not _is(p, "exists"):  # `demo` -> ./demo.yaml, else the shipped one; `specs/` outside a checkout
            found = find_spec(a)
            p = found.path if found is not None else shipped_spec(a, folders=True) or p
        if _is(p, "is_dir"):
            files += sorted(list(p.rglob("*.yaml")) + list(p.rglob("*.yml")))
        else:
            files.append(p)  # a path that is not there: loading it says so, with the shipped specs
    if not files:
        raise typer.BadParameter("give at least one spec file (or --explain FIELD)")
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


# ------------------------------------------------------------------------------------------- field reference
def explain_field(key: str) -> str:
    """The reference of one spec field (or section), from the schema itself: its type, default and meaning; a
    section lists its fields. `objective[0].weight` and `objective.weight` both work; a field of a union (method.k)
    is shown for every member that has it."""
    import re

    from rewardtune.errors import UsageError
    from rewardtune.spec.docs import default_text, type_name
    from rewardtune.spec.load import models_in
    from rewardtune.spec.schema import Spec

    parts = [p for p in re.sub(r"\[\d*\]", "", key.strip()).split(".") if p]
    if not parts:
        raise UsageError("--explain takes a field such as train.lr, method.k or logging")
    models = [Spec]
    field = None
    owners: list = []
    for i, name in enumerate(parts):
        owners = [m for m in models if name in m.model_fields]
        if not owners:
            from rewardtune.registry import did_you_mean

            known = sorted({f for m in models for f in m.model_fields})
            where = ".".join(parts[:i]) or "the top level"
            guess = did_you_mean(name, known)
            raise UsageError(f"--explain {key}: {where} has no field '{name}'"
                             + (f". Did you mean '{'.'.join([*parts[:i], guess])}'?" if guess else "")
                             + f" Fields there: {', '.join(known)}.")
        field = owners[0].model_fields[name]
        models = [m for o in owners for m in models_in(o.model_fields[name].annotation)]
        if i < len(parts) - 1 and not models:
            raise UsageError(f"--explain {key}: '{'.'.join(parts[:i + 1])}' is a value, not a section"
                             + (" (a reward's arguments: `rewardtune rewards NAME`)" if name == "kwargs" else ""))
    lines = []
    path = ".".join(parts)
    for o in owners:
        f = o.model_fields[parts[-1]]
        tag = f" (in {o.__name__})" if len(owners) > 1 else ""
        lines.append(f"{path}{tag}: {type_name(f.annotation, markdown=False)}, "
                     f"default {default_text(f, markdown=False)}")
        if f.description:
            lines.append(f"  {f.description}")
    if models:
        for m in dict.fromkeys(models):
            head = f"{m.__name__}" + (f": {(m.__doc__ or '').strip().splitlines()[0]}" if m.__doc__
                                      and not m.__doc__.lstrip().startswith(("!!!", "Usage docs")) else "")
            lines.append(f"  {head}")
            for n, sub in m.model_fields.items():
                lines.append(f"    {n}: {type_name(sub.annotation, markdown=False)}, "
                             f"default {default_text(sub, markdown=False)}"
                             + (f"  - {sub.description}" if sub.description else ""))
    if field is not None and parts[-1] == "kwargs":
        lines.append("  A reward's arguments and weights keys: `rewardtune rewards NAME`.")
    lines.append("Sections: model, prompts, objective, method, sampling, train, logging, launcher "
                 "(`--explain SECTION` lists one).")
    return "\n".join(lines)
