"""`rewardtune run SPEC [key=value ...] [--tiny] [--resume] [--output-dir DIR]`: train."""
from __future__ import annotations

import typer

from rewardtune.cli.common import console, guarded

HELP = ("Fine-tune the spec's model against its objective. SPEC is a YAML file or the name of a shipped spec "
        "(e.g. `demo`; a local demo.yaml wins, `rewardtune specs` lists them); key=value overrides are validated like "
        "the spec.")


@guarded
def COMMAND(  # noqa: N802
    spec: str = typer.Argument(..., help="Spec file, or a shipped spec's name (`rewardtune specs`)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. train.steps=50 train.lr=3e-4."),
    tiny: bool = typer.Option(False, "--tiny", help="Run offline on tiny twins of every model (seconds on a CPU)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in the output dir."),
    output_dir: str = typer.Option(None, "--output-dir", "-o", help="Where outputs go (default: the spec's "
                                                                   "output_dir)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in an output dir that holds a run."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No live progress bar."),
) -> None:
    from rewardtune.errors import CheckpointError, ExistingRunError, ResumeSpecError, UsageError

    bad = [o for o in overrides or [] if "=" not in o]
    if bad:
        raise UsageError(f"overrides must look like key=value (got {bad[0]!r})")
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pick one")
    from rewardtune.cli.specs import resolve_spec_arg

    resolved = resolve_spec_arg(spec)
    path = resolved.path
    out = console()
    console(stderr=True).print(resolved.note(), markup=False, soft_wrap=True, style="dim")
    import shlex
    import signal

    from rewardtune.api import run
    from rewardtune.cli.weights import fetch_command
    from rewardtune.engine import control

    # SLURM preemption (USR2), kill (TERM) and a first Ctrl-C: stop within one UNet call, checkpoint the last
    # finished step, exit 3 (a second Ctrl-C aborts at once)
    previous = control.install_signal_handlers((signal.SIGUSR2, signal.SIGTERM, signal.SIGINT))
    try:
        result = run(path, overrides=list(overrides or []), tiny=tiny, resume=resume, output_dir=output_dir,
                     progress=False if no_progress else None, overwrite=overwrite,
                     fetch_command=fetch_command([spec, *(overrides or [])], tiny))
    except ExistingRunError as e:
        raise UsageError(f"{e}\n  --resume continues it, --overwrite starts over in it, -o DIR runs elsewhere.") from None
    except ResumeSpecError as e:
        raise UsageError(f"{e}\n  Resume with the command that started the run (its spec, overrides and --tiny) "
                         "plus --resume.") from None
    except CheckpointError as e:
        raise UsageError(f"{e}\n  --overwrite starts over in this directory; -o DIR runs elsewhere.") from None
    finally:
        control.restore_signal_handlers(previous)
    if result.stopped_early:
        again = ["rewardtune", "run", spec, *(overrides or []), *(["--tiny"] if tiny else []), "--resume",
                 "--output-dir", str(result.output_dir)]
        out.print(f"[yellow]stopped[/] after step {result.steps_done} ({result.stop_reason}); checkpoint written.",
                  soft_wrap=True)
        out.print("Continue with: " + shlex.join(again), markup=False, soft_wrap=True)
        raise typer.Exit(3)
    if result.resumed_from is not None:
        out.print(f"resumed from step {result.resumed_from}")
    if result.eval_after:
        out.print(eval_table(result.eval_before, result.eval_after, result.steps_done, result.selected_step))
    out.print(f"[green]done[/] {result.steps_done} steps; outputs in {result.output_dir}")
    from rewardtune.rundir import RunDir

    images = RunDir(result.output_dir).images_dir
    grids = [p for p in (images / "compare.png", images / "before.png", images / "after.png") if p.exists()]
    if grids:
        out.print("grids: " + ", ".join(str(p) for p in grids))
    if result.weights_path:
        out.print(f"weights: {result.weights_path}")


def eval_table(before: dict[str, float], after: dict[str, float], steps: int, selected: int | None = None):
    """The held-out eval before and after training: one row per term, its explained fields (the shapes judge's
    colour_ok, shape_ok) indented under it, leaving out a field that repeats its term's numbers."""
    from rich.table import Table

    t = Table(box=None, pad_edge=False, show_edge=False)
    t.add_column(f"eval (held out), {steps} steps" if selected is None
                 else f"eval (held out), step {selected} of {steps} (select_by)")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_column("change", justify="right")
    tops = [k for k in after if "/" not in k and k != "objective"] + (["objective"] if "objective" in after else [])
    for k in [x for top in tops for x in (top, *(c for c in after if c.startswith(top + "/")))]:
        v, b = after[k], before.get(k)
        if "/" in k:
            parent = k.split("/", 1)[0]
            if after.get(parent) == v and before.get(parent) == b:
                continue
            name = "  " + k.split("/", 1)[1]
        else:
            name = k
        change = "" if b is None else f"{v - b:+.4g}"
        style = "" if b is None or v == b else ("green" if v > b else "red")
        t.add_row(name, "" if b is None else f"{b:.4g}", f"{v:.4g}", f"[{style}]{change}[/]" if style else change)
    return t
