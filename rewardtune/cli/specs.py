"""`rewardtune specs`: the specs shipped with rewardtune, as templates (torchtune's `tune ls` / `tune cp`).

    rewardtune specs                    # one line per shipped spec: method, model, rewards, what it does
    rewardtune specs cp demo            # ./demo.yaml, comments and all; edit it, then `rewardtune run demo`
    rewardtune specs show demo          # print it

Where a spec is named on the command line (`run`, `submit`, `validate`, `weights`, `eval`), a local file always
wins over a shipped spec of the same spelling (`demo` -> ./demo, ./demo.yaml, ./demo.yml, then the shipped demo),
and the command says which one it used (`resolve_spec_arg`; the rule is `rewardtune.spec.find`'s).
"""
from __future__ import annotations

from pathlib import Path

import typer

from rewardtune.cli.common import console, guarded
from rewardtune.spec.find import ResolvedSpec, find_spec, shipped_spec, shipped_specs

HELP = ("List the specs shipped with rewardtune (`specs`), copy one to edit it (`specs cp NAME [DEST]`, comments "
        "kept), or print one (`specs show NAME`). A local file of the same name wins over a shipped spec.")

def resolve_spec_arg(arg: str) -> ResolvedSpec:
    """The file a spec argument names (`rewardtune.spec.find`: a local file wins, then a shipped spec). A name that
    is neither raises UsageError listing the shipped specs."""
    from rewardtune.errors import UsageError

    found = find_spec(arg)
    if found is not None:
        return found
    names = ", ".join(p.stem for p in shipped_specs()) or "(none)"
    raise UsageError(f"spec '{arg}' not found: no such file here (also looked for {arg}.yaml and {arg}.yml), and "
                     "rewardtune ships "
                     f"no spec of that name. Shipped specs: {names} (`rewardtune specs` lists them).")


def summary(path: Path) -> str:
    """The first sentence of a spec's header comment."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text:
            if lines:
                break
            continue
        lines.append(text)
    para = " ".join(lines)
    for end in (". ", ".\n"):
        if end in para + "\n":
            return (para + "\n").split(end, 1)[0].rstrip(".") + "."
    return para


def _facts(path: Path) -> dict[str, str]:
    """method, model and rewards of a spec, read without running any of its code."""
    from rewardtune.spec.load import load_spec

    s = load_spec(path, imports=False)
    terms = [t.reward + (f":{t.preset}" if t.preset else "") + (" (monitor)" if t.role == "monitor" else "")
             for t in s.objective]
    return {"method": s.method.name, "model": s.model.pretrained, "rewards": ", ".join(terms),
            "trainable": s.model.trainable.type}


# ------------------------------------------------------------------------------------------------------ verbs
specs_app = typer.Typer(help=HELP, no_args_is_help=False, invoke_without_command=True,
                        context_settings={"help_option_names": ["-h", "--help"]})


@guarded
def _list(ctx: typer.Context,
          as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    if ctx.invoked_subcommand is not None:
        return
    rows = []
    for p in shipped_specs():
        rows.append({"name": p.stem, "file": str(p), "summary": summary(p), **_facts(p)})
    if as_json:
        import json

        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="Shipped specs", title_justify="left")
    t.add_column("name", style="bold", no_wrap=True)
    t.add_column("method", no_wrap=True)
    t.add_column("model", overflow="fold")
    t.add_column("rewards", overflow="fold")
    t.add_column("what it does", overflow="fold")
    for r in rows:
        t.add_row(r["name"], r["method"], escape(r["model"]), escape(r["rewards"]), escape(r["summary"]))
    out = console()
    out.print(t)
    out.print("[dim]`rewardtune specs cp NAME` copies one here to edit; `rewardtune run NAME` runs it (a local "
              "NAME.yaml wins over the shipped one).[/]")


@guarded
def _cp(name: str = typer.Argument(..., help="Shipped spec (see `rewardtune specs`)."),
        dest: str = typer.Argument(None, help="File or folder to copy to (default: ./NAME.yaml).",
                                   show_default=False),
        force: bool = typer.Option(False, "--force", "-f", help="Replace DEST if it exists.")) -> None:
    import shutil

    from rewardtune.errors import UsageError

    src = shipped_spec(name)
    if src is None:
        names = ", ".join(p.stem for p in shipped_specs())
        from rewardtune.registry import did_you_mean

        guess = did_you_mean(Path(name).stem, [p.stem for p in shipped_specs()])
        raise UsageError(f"rewardtune ships no spec '{name}'." + (f" Did you mean '{guess}'?" if guess else "")
                         + f" Shipped specs: {names}.")
    target = Path(dest) if dest else Path(src.name)
    if dest and (target.is_dir() or dest.endswith(("/", "\\"))):
        target = target / src.name
    if target.exists() and not force:
        raise UsageError(f"{target} already exists; pass --force to replace it, or give another DEST.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    except OSError as e:
        raise UsageError(f"cannot write {target}: {e.strerror or e}") from None
    out = console()
    out.print(f"copied the shipped spec '{src.stem}' to {target}", markup=False)
    run_as = str(target) if target.parent != Path(".") else target.stem
    out.print(f"edit it, then: rewardtune run {run_as}", markup=False)


@guarded
def _show(name: str = typer.Argument(..., help="Spec: a shipped name or a file.")) -> None:
    r = resolve_spec_arg(name)
    console(stderr=True).print(r.note(), markup=False, soft_wrap=True, style="dim")
    typer.echo(r.path.read_text(encoding="utf-8"), nl=False)


def register(app: typer.Typer, with_globals) -> None:
    specs_app.callback()(with_globals(_list))
    specs_app.command("cp", help="Copy a shipped spec (comments kept) to DEST (default ./NAME.yaml).")(
        with_globals(_cp))
    specs_app.command("show", help="Print a spec (a local file wins over a shipped one of the same name).")(
        with_globals(_show))
    app.add_typer(specs_app, name="specs", help=HELP)
