"""`rewardtune weights SPEC|REWARD... [--download]`: every checkpoint a spec (or a set of rewards) needs, whether it
is on this machine, its size and licence; `--download` fetches the missing ones through huggingface_hub.

`run`, `score` and `eval` check every checkpoint before they load anything (`rewardtune.rewards._weights.require`);
their message names the command this module builds (`fetch_command`), which fetches them all.
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

import typer

from rewardtune.cli.common import console, guarded

HELP = ("List every checkpoint a spec or a set of rewards (NAME or NAME:PRESET) needs: the pipeline, each reward's "
        "weights, processors, tokenizers and auxiliary models, with size, licence and whether each is here (in the "
        "hub cache or at its local path). --download fetches the missing ones (stopped, it keeps the files it "
        "finished). Exit 4 while any is missing.")


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def refs_for(args: Sequence[str], *, tiny: bool = False):
    """The checkpoints named by command-line arguments: specs (with their `key=value` overrides) and rewards
    (`pickscore`, `clip:vit-b-32`). Returns (refs, what): `what` describes the arguments for messages."""
    from rewardtune.errors import UsageError
    from rewardtune.registry import registry
    from rewardtune.rewards._weights import merge_refs, reward_weights, spec_weights
    from rewardtune.scoring import parse_reward_arg
    from rewardtune.spec.find import find_spec
    from rewardtune.spec.load import load_spec

    overrides = [a for a in args if "=" in a and not os.path.exists(a)]
    items = [a for a in args if a not in overrides]
    if not items:
        raise UsageError("name a spec (file or shipped name) or one or more rewards, e.g. `rewardtune weights demo` "
                         "or `rewardtune weights pickscore imagereward`")
    names = registry().names()
    refs = []
    for a in items:
        choice = parse_reward_arg(a, tiny=tiny)
        found = find_spec(a)
        if choice.name in names and (found is None or found.shipped):  # a local spec file wins over a reward
            card = registry().get(choice.name)
            if choice.preset is not None and choice.preset not in card.presets:
                raise UsageError(f"reward '{choice.name}' has no preset '{choice.preset}'; presets: "
                                 f"{', '.join(card.presets)}")
            refs += reward_weights(card, choice.preset)
            continue
        if found is None:
            from rewardtune.registry import did_you_mean

            guess = did_you_mean(a, names)
            raise UsageError(f"'{a}' is neither a spec (no such file, no shipped spec of that name) nor a registered "
                             "reward" + (f". Did you mean '{guess}'?" if guess else "")
                             + ". `rewardtune specs` and `rewardtune rewards` list them.")
        spec = load_spec(found.path, overrides=overrides, tiny=tiny)
        refs += spec_weights(spec)
    return merge_refs(refs)


def fetch_command(args: Sequence[str], tiny: bool = False) -> str:
    return shlex.join(["rewardtune", "weights", *args, *(["--tiny"] if tiny else []), "--download"])


@guarded
def COMMAND(  # noqa: N802
    args: list[str] = typer.Argument(..., help="Spec files or shipped spec names, reward names (NAME or "
                                               "NAME:PRESET), and key=value overrides for the specs."),
    download: bool = typer.Option(False, "--download", help="Fetch the missing hub checkpoints into the hub cache "
                                                            "(HF_HOME / HF_HUB_CACHE choose where); stopped, it "
                                                            "keeps the files it finished."),
    tiny: bool = typer.Option(False, "--tiny", help="What the spec needs with --tiny (only tiny twins)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    from rewardtune.errors import MissingWeightsError, UsageError
    from rewardtune.rewards import _weights as W

    refs = refs_for(args, tiny=tiny)
    statuses = W.check(refs)
    out = console()
    err = console(stderr=True)
    if download:
        if W.hub_offline():
            raise UsageError("offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set), so nothing can be "
                             "downloaded: unset it (on a machine with "
                             "network access) and run this again.")
        try:
            failed = W.fetch_missing(statuses, err)
        except KeyboardInterrupt:
            err.print(f"stopped: the files fetched so far stay in the hub cache; `{fetch_command(args, tiny)}` "
                      "fetches the rest", markup=False, soft_wrap=True)
            raise
        statuses = W.check(refs)
        for ref, why in failed:
            err.print(f"[red]could not fetch[/] {ref.ref}: {why}", soft_wrap=True)
    elif not W.hub_offline():
        from dataclasses import replace

        for s in statuses:
            if not s.ok and s.ref.kind == "hub":
                s.fetch_size, lic = W.remote_info(s.ref)
                if lic and not s.ref.license:
                    s.ref = replace(s.ref, license=lic)
    if as_json:
        import json

        rows = [{"checkpoint": s.ref.ref, "revision": s.ref.revision, "role": s.ref.role, "setting": s.ref.setting,
                 "kind": s.ref.kind, "used_by": list(s.ref.used_by), "license": s.ref.license, "state": s.state,
                 "path": None if s.path is None else str(s.path), "size_bytes": s.size,
                 "fetch_bytes": s.fetch_size, "lacks": s.lacks,
                 "detail": s.detail} for s in statuses]
        typer.echo(json.dumps({"hub_cache": W.hub_cache_dir(), "weights": rows}, indent=2))
    else:
        _table(out, statuses)
    missing = [s for s in statuses if not s.ok]
    if missing:
        if not as_json:
            size = sum(s.fetch_size or 0 for s in missing)
            err.print(W.missing_message(statuses, None if download else fetch_command(args, tiny))
                      + (f" ({human_size(size)} to fetch)" if size else ""), markup=False, soft_wrap=True)
        raise typer.Exit(MissingWeightsError.exit_code)
    if not as_json:
        err.print(f"[green]all {len(statuses)} checkpoints are here[/]")


def _table(out, statuses) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="Checkpoints", title_justify="left")
    t.add_column("checkpoint", overflow="fold", style="bold")
    t.add_column("what", overflow="fold")
    t.add_column("set by", overflow="fold")
    t.add_column("size", justify="right", no_wrap=True)
    t.add_column("licence", overflow="fold")
    t.add_column("status", overflow="fold")
    for s in statuses:
        name = s.ref.ref + (f" @ {s.ref.revision}" if s.ref.revision else "")
        if s.ok:
            status = "[green]present[/] " + escape(f"({s.detail}{': ' + str(s.path) if s.path else ''})")
        elif s.state == "extra":
            status = "[yellow]extra not installed[/] " + escape(f"({s.detail})")
        else:
            status = "[red]missing[/] " + escape(f"({s.detail}" + (f"; lacks {', '.join(s.lacks)}" if s.lacks else "")
                                                 + ")")
        t.add_row(escape(name), escape(s.ref.role), escape(s.ref.setting),
                  human_size(s.size if s.size is not None else s.fetch_size),
                  escape(s.ref.license or "see its model card"), status)
    out.print(t)
