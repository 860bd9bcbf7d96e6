"""`rewardtune score`: score image files against a prompt with one or more rewards.

Exit codes:
  0  every file was scored
  1  unexpected internal error (a bug; rerun with --debug for the traceback)
  2  usage error: bad option, unknown reward or preset, unreadable --prompts-file, no image files found
  3  some files could not be scored (each has an error row); all the others were scored and written
  4  a reward could not be loaded (missing weights or a missing optional dependency); nothing was scored
"""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from rewardtune.cli.common import guarded

HELP = ("Score image files (or folders, recursively) against a prompt with one or more rewards.\n\n"
        "Exit codes: 0 every file scored; 2 bad input: a usage error, or some files could not be scored (they have "
        "error rows, the rest were scored and written); 4 a reward could not be loaded (missing weights or "
        "dependency); 1 internal error.")

EXIT_OK, EXIT_FILES_FAILED, EXIT_REWARD_UNAVAILABLE = 0, 2, 4
#: the option that sets each argument of rewardtune.scoring (its errors name the argument; we name the option)
FLAGS = {"reward": "--reward", "rewards": "--reward", "weights": "--weights", "min_score": "--min-score",
         "prompts_file": "--prompts-file", "device": "--device", "batch_size": "--batch-size"}
SHOW_LINKS = 5  # skipped symbolic links named in the warning
PROGRESS_MIN_FILES = 8  # fewer files than this: no progress bar
DTYPES = ("float32", "float16", "bfloat16", "fp32", "fp16", "bf16")


@guarded
def COMMAND(  # noqa: N802 - the CLI discovers verbs by this name
    paths: list[Path] = typer.Argument(None, help="Image files and/or folders (searched recursively).",
                                       show_default=False),
    prompt: str = typer.Option(None, "--prompt", "-p", help="Prompt the images are scored against."),
    prompts_file: Path = typer.Option(None, "--prompts-file",
                                      help="CSV (path,prompt) or JSONL ({\"path\",\"prompt\"}) giving each image its "
                                           "prompt; relative paths are relative to this file. Without PATHS, "
                                           "the files listed here are scored."),
    reward: list[str] = typer.Option(None, "--reward", "-r",
                                     help="Reward to score with, NAME or NAME:PRESET (e.g. clip:vit-b-32). Repeat "
                                          "for several; the table is ranked by the first. Default: imagereward."),
    tiny: bool = typer.Option(False, "--tiny", help="Use each reward's 'tiny' preset (seeded tiny twins, offline) "
                                                   "unless NAME:PRESET says otherwise."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("float32", "--dtype", help="Weights dtype: float32, float16 or bfloat16 "
                                                         "(scores are always float32)."),
    as_json: bool = typer.Option(False, "--json", help="Write JSON (to stdout, or to --output)."),
    as_csv: bool = typer.Option(False, "--csv", help="Write CSV (to stdout, or to --output)."),
    output: Path = typer.Option(None, "--output", "-o",
                                help="Write the JSON/CSV here (format from --json/--csv or the suffix) and still "
                                     "print the table."),
    min_score: list[str] = typer.Option(None, "--min-score",
                                        help="Flag images scoring below a threshold: VALUE (first reward) or "
                                             "REWARD=VALUE; repeatable."),
    only: str = typer.Option(None, "--only", help="Keep only 'below' (under --min-score) or 'passed' rows "
                                                  "in the output."),
    show_captions: bool = typer.Option(False, "--show-captions",
                                       help="Show the caption each captioning reward wrote (e.g. blip2-caption)."),
    explain: bool = typer.Option(False, "--explain", help="Print each reward's details per image (captions, "
                                                          "regions, labels, likelihoods)."),
    max_pixels: int = typer.Option(8192 * 8192, "--max-pixels", min=0,
                                   help="Refuse images larger than this many pixels (0 = no limit)."),
    no_exif: bool = typer.Option(False, "--ignore-exif-orientation",
                                 help="Score pixels as stored, ignoring the EXIF orientation tag (as reference "
                                      "scorers do)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Never show a progress bar."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks",
                                         help="Follow symbolic links found inside folders (to files or folders). "
                                              "Without it they are skipped and listed; links named as PATHS are "
                                              "always followed."),
    weights: list[str] = typer.Option(None, "--weights", "-w", metavar="[REWARD[.KEY]=]PATH",
                                      help="Use these weights for a reward instead of its preset's: a local "
                                           "directory (a downloaded copy) or a hub id. REWARD= may be left out "
                                           "when one reward is scored; REWARD.KEY=PATH sets a secondary weight "
                                           "(pickscore.processor, imagereward.tokenizer, aesthetic.clip_weights: "
                                           "`rewardtune rewards NAME` lists them). Repeat for several."),
) -> None:
    from rewardtune.scoring import ArgumentError

    try:
        _score(paths, prompt, prompts_file, reward, tiny, batch_size, device, dtype, as_json, as_csv, output,
               min_score, only, show_captions, explain, max_pixels, no_exif, no_progress, weights, follow_symlinks)
    except ArgumentError as e:  # the library names its arguments; say which option was wrong
        from rewardtune.errors import UsageError

        raise UsageError(_flag_message(e)) from None


def _flag_message(e) -> str:
    import shlex

    flag = FLAGS.get(e.param, e.param)
    return f"{flag}: {e.detail}" if e.value is None else f"{flag} {shlex.quote(str(e.value))}: {e.detail}"


def _score(paths, prompt, prompts_file, reward, tiny, batch_size, device, dtype, as_json, as_csv, output, min_score,
           only, show_captions, explain, max_pixels, no_exif, no_progress, weights, follow_symlinks) -> None:
    import warnings

    from rewardtune.errors import MissingDependencyError, MissingWeightsError, UsageError
    from rewardtune.images import IMAGE_SUFFIXES, discover

    # PIL warns about damaged metadata of files it still decodes (and those it cannot get an error row anyway)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    out = _console()
    err = _console(stderr=True)
    if output is not None and not (as_json or as_csv):
        suffix = output.suffix.lower()
        if suffix in (".json", ".jsonl"):
            as_json = True
        elif suffix in (".csv", ".tsv"):
            as_csv = True
        else:
            raise UsageError(f"--output {output}: say --json or --csv (cannot tell the format from '{suffix}').")
    if as_json and as_csv:
        raise UsageError("--json and --csv are exclusive; run twice with --output to get both.")
    if only is not None and only not in ("below", "passed"):
        raise UsageError(f"--only {only}: use 'below' or 'passed'.")
    if only is not None and not min_score:
        raise UsageError("--only needs --min-score.")

    prompt_map = None
    if prompts_file is not None:
        from rewardtune.scoring import read_prompts_file

        prompt_map = read_prompts_file(prompts_file)
    inputs = list(paths or []) or (list(prompt_map) if prompt_map else [])
    if not inputs:
        raise UsageError("No images given. Pass files or folders, or --prompts-file.")
    found = discover(inputs, follow_symlinks=follow_symlinks)
    files = found.files
    if not files:
        why = _not_read(found)
        raise UsageError(f"No image files found under {', '.join(str(p) for p in inputs)} "
                         f"(looked for {' '.join(IMAGE_SUFFIXES)})." + (f" {why}" if why else ""))
    if not any(f.exists() for f in files):  # before loading any model: there is nothing to score
        raise UsageError(f"No such file or folder: {', '.join(str(f) for f in files)}")
    if found.skipped_links:
        from rewardtune.cli.common import _escape

        n = len(found.skipped_links)
        shown = ", ".join(str(p) for p in found.skipped_links[:SHOW_LINKS]) + (", ..." if n > SHOW_LINKS else "")
        err.print(f"[yellow]warning:[/] skipped {n} symbolic link{'s' * (n > 1)} inside the folders given "
                  f"(they may lead outside them): {_escape(shown)}. Pass --follow-symlinks to score what they "
                  "point to.", soft_wrap=True)

    from rewardtune.scoring import (
        apply_min_scores,
        load_rewards,
        parse_min_scores,
        rank_rows,
        resolve_device,
        rows_to_csv,
        rows_to_json,
    )

    reward_args = list(reward or []) or ["imagereward"]
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}.")
    # check what can be checked before loading any weights: reward names, presets' existence, prompts
    from rewardtune.registry import get_card
    from rewardtune.scoring import parse_reward_arg

    choices = {c.label: c for c in (parse_reward_arg(a, tiny=tiny) for a in reward_args)}
    cards = {label: get_card(c.name) for label, c in choices.items()}
    from rewardtune.rewards._weights import secondary_weight_keys
    from rewardtune.scoring import parse_weights_args

    weight_map = parse_weights_args(list(weights or []), list(cards),
                                    {k: secondary_weight_keys(c.presets) for k, c in cards.items()})
    thresholds = parse_min_scores(list(min_score or []), list(cards))
    wanting = [k for k, c in cards.items() if "prompt" in c.inputs]
    if prompt is None and prompt_map is None and wanting:
        raise UsageError(f"--prompt is required: {', '.join(wanting)} score images against a prompt "
                         "(or give --prompts-file).")
    dev = resolve_device(device)
    _require_weights(choices, cards, weight_map, reward_args, weights, tiny, err)
    try:
        with _status(err, "Loading rewards", enabled=not no_progress):
            rewards = load_rewards(reward_args, tiny=tiny, device=dev, dtype=dtype, batch_size=batch_size,
                                   weights=weight_map)
    except (MissingWeightsError, MissingDependencyError) as e:
        from rewardtune.cli.common import _escape

        err.print("[bold red]error:[/] " + _escape(str(e)), soft_wrap=True)
        if isinstance(e, MissingWeightsError):
            err.print("[dim]hint: --weights REWARD=DIR scores with a downloaded copy; --reward NAME:PRESET picks "
                      "another preset of a reward (`rewardtune rewards` lists them); --tiny scores with the offline "
                      "tiny twins.[/]", soft_wrap=True)
        raise SystemExit(EXIT_REWARD_UNAVAILABLE) from None
    labels = list(rewards)

    rows = _score_with_progress(found, rewards, prompt, prompt_map, batch_size, explain or show_captions,
                                max_pixels, not no_exif, err, enabled=not no_progress)
    ranked = rank_rows(rows, rewards)
    apply_min_scores(ranked, thresholds)
    shown = ranked
    if only == "below":
        shown = [r for r in ranked if r.below_min]
    elif only == "passed":
        shown = [r for r in ranked if r.ok and not r.below_min]

    machine = None
    if as_json:
        machine = rows_to_json(shown, rewards, prompt=prompt, thresholds=thresholds,
                               skipped_links=rows.skipped_links)
    elif as_csv:
        machine = rows_to_csv(shown, labels)
    if machine is not None and output is None:
        sys.stdout.write(machine)
        sys.stdout.flush()
    else:
        if machine is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(machine, encoding="utf-8")
        _print_table(out, shown, labels, thresholds, show_prompt=prompt_map is not None,
                     show_captions=show_captions)
        if explain:
            _print_explanations(out, shown, labels)
        if machine is not None:
            err.print(f"[dim]wrote {output}[/]")
    failed = sum(1 for r in rows if not r.ok)
    below = sum(1 for r in rows if r.below_min)
    summary = f"{len(rows) - failed} scored, {failed} failed"
    if thresholds:
        summary += f", {below} below --min-score"
    err.print(f"[{'yellow' if failed else 'dim'}]{summary}[/]")
    _hints(err, rows)
    if failed:
        raise SystemExit(EXIT_FILES_FAILED)


def _require_weights(choices, cards, weight_map, reward_args, weights, tiny, err) -> None:
    """Every checkpoint the rewards need, checked before any is loaded: all missing ones in one message (exit 4)."""
    import shlex

    from rewardtune.rewards._weights import merge_refs, require, reward_weights

    refs = []
    for label, c in choices.items():
        if cards[label].factory is not None:
            continue
        if c.preset is not None and c.preset not in cards[label].presets:
            continue  # loading the reward reports the unknown preset
        refs += reward_weights(cards[label], c.preset, weight_map.get(label), label=label)
    # `rewardtune weights` fetches presets' checkpoints; with --weights some are replaced (hf download names them)
    command = None if weights else shlex.join(["rewardtune", "weights", *reward_args, *(["--tiny"] if tiny else []),
                                               "--download"])
    require(merge_refs(refs), command, out=err)


def _not_read(found) -> str:
    """What discovery did not read, as a sentence (for the 'no image files found' error)."""
    parts = []
    if found.skipped_links:
        n = len(found.skipped_links)
        parts.append(f"{n} symbolic link{'s were' if n > 1 else ' was'} not followed (pass --follow-symlinks to "
                     "score what they point to)")
    for p, why in found.unreadable[:SHOW_LINKS]:
        parts.append(f"{p} could not be listed ({why})")
    return ("; ".join(parts) + ".") if parts else ""


def _hints(err, rows) -> None:
    """How to fix the commonest per-file errors, in terms of this command's options."""
    from rewardtune.scoring import NO_PROMPT

    errors = [r.error for r in rows if r.error]
    if any(e == NO_PROMPT for e in errors):
        err.print("[dim]hint: files without a prompt: give --prompt (used for every file not in --prompts-file), "
                  "or list them in --prompts-file.[/]", soft_wrap=True)
    if any(e.startswith("image too large") for e in errors):
        err.print("[dim]hint: --max-pixels N raises the size limit (decoding takes about 4 bytes of memory per "
                  "pixel).[/]", soft_wrap=True)
    if any(e.startswith("cannot list this folder") for e in errors):
        err.print("[dim]hint: a folder could not be listed: check its permissions, or pass the readable folders "
                  "instead.[/]", soft_wrap=True)


# -------------------------------------------------------------------------------------------------- helpers
def _console(stderr: bool = False):
    from rewardtune.cli.common import console

    return console(stderr=stderr)


class _status:  # noqa: N801 - used as a context manager
    """A spinner on stderr while slow things (weight loading) happen; silent when stderr is not a terminal."""

    def __init__(self, err, text: str, enabled: bool = True):
        self.cm = err.status(text) if enabled and err.is_terminal else None

    def __enter__(self):
        if self.cm is not None:
            self.cm.__enter__()
        return self

    def __exit__(self, *exc):
        if self.cm is not None:
            self.cm.__exit__(*exc)
        return False


def _score_with_progress(found, rewards, prompt, prompt_map, batch_size, explain, max_pixels, exif, err, enabled):
    from rewardtune.scoring import score_files

    kwargs = dict(prompt=prompt, prompts=prompt_map, batch_size=batch_size, explain=explain,
                  max_pixels=max_pixels, exif_transpose=exif)
    if not (enabled and err.is_terminal and len(found.files) >= PROGRESS_MIN_FILES):
        return score_files(found, rewards, **kwargs)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("score", total=len(found.files))
        return score_files(found, rewards, **kwargs,
                           progress=lambda done, total: bar.update(task, completed=done, total=total))


def _fmt(v: float | None) -> str:
    import math

    if v is None:
        return ""
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4f}"


def _captions(row, label) -> str | None:
    d = row.explain.get(label)
    if isinstance(d, dict) and isinstance(d.get("caption"), str):
        return d["caption"]
    return None


def _print_table(out, rows, labels, thresholds, *, show_prompt: bool, show_captions: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    caption_cols = [k for k in labels if show_captions and any(_captions(r, k) is not None for r in rows)]
    t = Table(show_lines=False, header_style="bold")
    t.add_column("rank", justify="right")
    t.add_column("file", overflow="fold")
    if show_prompt:
        t.add_column("prompt", overflow="fold")
    for k in labels:
        t.add_column(k + (f" (min {thresholds[k]:g})" if k in thresholds else ""), justify="right")
    for k in caption_cols:
        t.add_column(f"{k} caption" if len(caption_cols) > 1 else "caption", overflow="fold")
    has_err = any(not r.ok for r in rows)
    if has_err:
        t.add_column("error", style="red", overflow="fold")
    for r in rows:
        cells = [str(r.rank) if r.rank is not None else "-", escape(str(r.path))]
        if show_prompt:
            cells.append(escape(r.prompt or ""))
        for k in labels:
            s = _fmt(r.scores.get(k))
            if k in thresholds and k in r.scores and r.scores[k] < thresholds[k]:
                s = f"[red]{s}[/]"
            cells.append(s)
        for k in caption_cols:
            cells.append(escape(_captions(r, k) or ""))
        if has_err:
            cells.append(escape(r.error or ""))
        t.add_row(*cells, style="dim" if r.below_min else None)
    out.print(t)


def _print_explanations(out, rows, labels) -> None:
    """Print reward.explain() output per image as an indented tree, whatever its structure."""
    from rich.markup import escape
    from rich.tree import Tree

    any_shown = False
    for r in rows:
        if not r.explain:
            continue
        any_shown = True
        tree = Tree(f"[bold]{escape(str(r.path))}[/]" + (f"  (rank {r.rank})" if r.rank else ""))
        for k in labels:
            if k in r.explain:
                _add(tree.add(f"[cyan]{escape(k)}[/] {_fmt(r.scores.get(k))}"), r.explain[k])
        out.print(tree)
    if not any_shown:
        out.print("[dim]No reward here has details to explain (captioning and region rewards do: "
                  "blip2-caption, sam-llm).[/]")


def _add(node, value) -> None:
    from rich.markup import escape

    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list | tuple) and v and not _is_flat_numbers(v):
                _add(node.add(escape(str(k))), v)
            else:
                node.add(f"{escape(str(k))}: {escape(_short(v))}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            if isinstance(v, dict | list | tuple):
                _add(node.add(f"[{i}]"), v)
            else:
                node.add(escape(_short(v)))
    else:
        node.add(escape(_short(value)))


def _is_flat_numbers(v) -> bool:
    return isinstance(v, list | tuple) and len(v) <= 8 and all(isinstance(x, int | float) for x in v)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list | tuple) and _is_flat_numbers(v):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    s = str(v)
    return s if len(s) <= 200 else s[:197] + "..."
