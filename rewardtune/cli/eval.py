"""`rewardtune eval RUN_DIR|LORA_DIR|UNET_DIR`: render a prompt set with and without the trained weights on the
same noise, score both, and write the before/after grids and tables (rewardtune.evaluate)."""
from __future__ import annotations

from pathlib import Path

import typer

from rewardtune.cli.common import console, guarded

HELP = ("Evaluate a trained result: sample a prompt set with and without the trained weights (a run directory, a "
        "LoRA folder or a full UNet export) on the same fixed noise, score both with any rewards, and write "
        "before/after grids and a table (scores.json, scores.md) with per-prompt and mean scores and the change "
        "with its 95% interval. A run directory brings its own base model, sampling settings, eval prompts and "
        "rewards; options replace them. Exit 4 when a checkpoint is missing (all are named at once).")


@guarded
def COMMAND(  # noqa: N802
    path: Path = typer.Argument(..., help="A run directory (spec.yaml + lora/ or unet/), a LoRA folder "
                                          "(pytorch_lora_weights.safetensors) or a UNet export (config.json).",
                                show_default=False),
    reward: list[str] = typer.Option(None, "--reward", "-r", help="Score with this reward, NAME or NAME:PRESET "
                                                                  "(repeat for several). Default: the run's own "
                                                                  "objective terms, monitors included."),
    prompts: str = typer.Option(None, "--prompts", "-p", help="A built-in prompt set (shapes-eval, everyday-eval, "
                                                              "...) or a .txt/.jsonl file. Default: the run's "
                                                              "eval prompts."),
    images_per_prompt: int = typer.Option(None, "--images-per-prompt", "-n", min=1,
                                          help="Images per prompt, each on its own noise (default: the run's)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N prompts."),
    base: str = typer.Option(None, "--base", help="Base pipeline (hub id, local dir, zoo:NAME) when PATH does not "
                                                  "name it (a bare LoRA without a model card), or to replace it."),
    steps: int = typer.Option(None, "--steps", min=1, help="Sampling steps (default: the run's)."),
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale (default: the run's)."),
    resolution: int = typer.Option(None, "--resolution", min=8, help="Image size in pixels (default: the run's)."),
    seed: int = typer.Option(None, "--seed", help="Seed of the fixed noise (default: the run's, which reproduces "
                                                  "its own before/after eval)."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", min=1, help="Images per sampling batch."),
    weights: list[str] = typer.Option(None, "--weights", "-w", metavar="REWARD[.KEY]=PATH",
                                      help="Weights for a reward given with -r instead of its preset's (as in "
                                           "`rewardtune score`)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    output_dir: Path = typer.Option(None, "--output-dir", "-o", help="Where the grids and tables go "
                                                                     "(default: PATH/eval)."),
    as_json: bool = typer.Option(False, "--json", help="Print scores.json to stdout instead of the table."),
) -> None:
    from rewardtune import evaluate as ev
    from rewardtune.errors import UsageError
    from rewardtune.rewards._weights import require
    from rewardtune.scoring import ArgumentError, parse_weights_args

    out, err = console(), console(stderr=True)
    if weights and not reward:
        raise UsageError("--weights replaces the weights of a reward given with -r; name the rewards (-r NAME).")
    try:
        weight_map = parse_weights_args(list(weights or []), list(reward or []), _weight_keys(reward or []))
    except ArgumentError as e:
        raise UsageError(f"--weights {e.value}: {e.detail}") from None
    the_plan = ev.plan(path, prompts=prompts, images_per_prompt=images_per_prompt, limit=limit, base=base,
                       steps=steps, guidance=guidance, resolution=resolution, seed=seed, batch_size=batch_size)
    target, settings, n = the_plan.target, the_plan.settings, the_plan.per_prompt
    # every checkpoint, before any loads: all missing ones in one message (exit 4)
    refs = the_plan.needed_weights(reward, weight_map)
    if base or target.kind != "run":  # the pipeline was named here or by the model card, not by a spec
        from dataclasses import replace

        refs[0] = replace(refs[0], setting="--base" if base else f"base_model in {target.weights / 'README.md'}")
    require(refs, _fetch_command(target, settings, reward, base, weights), out=err)
    err.print(f"evaluating {target.kind} {target.weights} on {settings.base}: {len(the_plan.prompts) * n} images "
              f"({the_plan.source}"
              + (f", {n} per prompt" if n > 1 else "") + f"), {settings.steps} steps, seed {settings.seed}",
              markup=False, soft_wrap=True, style="dim")

    def progress(side: str, done: int, total: int) -> None:
        if done == total or not err.is_terminal:
            err.print(f"  {side}: {done}/{total} images", markup=False, style="dim")

    report = ev.evaluate(the_plan, rewards=reward or None, device=device, weights=weight_map or None,
                         progress=progress)
    dest = output_dir if output_dir is not None else Path(path) / "eval"
    paths = report.write(dest)
    if as_json:
        import json

        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        out.print(summary_table(report))
    err.print("wrote " + ", ".join(str(p) for p in paths.values()), markup=False, soft_wrap=True)


def _fetch_command(target, settings, reward, base, weights) -> str | None:
    """The `rewardtune weights ... --download` that fetches everything this evaluation needs, when one does: a
    run's spec names its pipeline and terms; a base pipeline given as a hub id (--base, a model card) is fetched
    by `hf download` only (the message lists it)."""
    import shlex

    from rewardtune.rewards._weights import weight_kind

    if weights:
        return None
    args = [str(target.path / "spec.yaml")] if target.kind == "run" and not base else []
    args += list(reward or [])
    if not args or (not (target.kind == "run" and not base) and weight_kind(settings.base) == "hub"):
        return None
    return shlex.join(["rewardtune", "weights", *args, "--download"])


def _weight_keys(rewards: list[str]) -> dict[str, list[str]]:
    from rewardtune.registry import get_card
    from rewardtune.rewards._weights import secondary_weight_keys
    from rewardtune.scoring import parse_reward_arg

    keys = {}
    for a in rewards:
        c = parse_reward_arg(a)
        keys[c.label] = secondary_weight_keys(get_card(c.name).presets)
    return keys


def summary_table(report):
    """Mean before and after per reward, the paired change, its 95% bootstrap interval and images up/down."""
    from rich.table import Table

    t = Table(box=None, pad_edge=False, show_edge=False,
              title=f"{len(report.prompts)} images, same prompts and noise before and after", title_justify="left")
    for col, just in (("reward", "left"), ("before", "right"), ("after", "right"), ("change", "right"),
                      ("95% CI", "left"), ("up/down/same", "right")):
        t.add_column(col, justify=just)
    for k, v in report.summary.items():
        style = {True: "green", False: "red"}.get(v.better, "")
        change = f"{v.diff_mean:+.4g}"
        t.add_row(k if "/" not in k else "  " + k.split("/", 1)[1], f"{v.before:.4g}", f"{v.after:.4g}",
                  f"[{style}]{change}[/]" if style else change, f"[{v.ci95[0]:+.3g}, {v.ci95[1]:+.3g}]",
                  f"{v.up}/{v.down}/{v.same}")
    return t
