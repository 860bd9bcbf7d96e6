"""`rewardtune submit SPEC [key=value ...]`: validate a spec, then run it on SLURM through submitit."""
from __future__ import annotations

import typer

from rewardtune.cli.common import console, guarded

HELP = ("Validate a spec and submit it to SLURM (submitit). Flags override the spec's `launcher: slurm` block; "
        "--dry-run prints the sbatch script.")


@guarded
def COMMAND(  # noqa: N802
    spec: str = typer.Argument(..., help="Spec file, or a shipped spec's name (a local file of that name wins). "
                                         "It is copied into the job folder: the job never reads it from here."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, validated like the spec."),
    partition: str = typer.Option(None, "--partition", "-p", help="SLURM partition."),
    account: str = typer.Option(None, "--account", "-A", help="SLURM account."),
    qos: str = typer.Option(None, "--qos", help="SLURM QOS."),
    time: str = typer.Option(None, "--time", "-t", help="Time limit: minutes, HH:MM:SS or D-HH:MM:SS."),
    nodes: int = typer.Option(None, "--nodes", "-N", help="Nodes."),
    gpus_per_node: int = typer.Option(None, "--gpus-per-node", help="GPUs per node (one process per GPU)."),
    tasks_per_node: int = typer.Option(None, "--tasks-per-node", help="Processes per node (default: one per GPU, "
                                                                      "or 1 on CPU)."),
    cpus_per_task: int = typer.Option(None, "--cpus-per-task", "-c", help="CPUs per process."),
    mem: str = typer.Option(None, "--mem", help="Memory per node: GB (64) or with a unit (64G, 65536M)."),
    constraint: str = typer.Option(None, "--constraint", "-C", help="SLURM --constraint."),
    exclusive: bool = typer.Option(None, "--exclusive/--no-exclusive", help="Whole nodes."),
    array: int = typer.Option(None, "--array", help="Submit N runs as a job array (seeds seed..seed+N-1)."),
    sbatch: list[str] = typer.Option(None, "--sbatch", help="Extra sbatch parameter key=value (repeatable), "
                                                            "e.g. --sbatch mail-type=END."),
    job_name: str = typer.Option(None, "--job-name", "-J", help="Job name (default: the spec's name)."),
    max_requeues: int = typer.Option(None, "--max-requeues", help="Requeues allowed after preemption/timeout."),
    cluster: str = typer.Option("slurm", "--cluster", help="slurm; or local (a subprocess here) / debug (this "
                                                           "process) to try a job without SLURM."),
    output_dir: str = typer.Option(None, "--output-dir", "-o", help="Run directory (default: the spec's "
                                                                    "output_dir)."),
    tiny: bool = typer.Option(False, "--tiny", help="Swap every model for its tiny offline twin."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run directory's last checkpoint."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the sbatch script; submit nothing."),
    no_imports: bool = typer.Option(False, "--no-imports", help="With --dry-run: run no code from the spec (its "
                                                                "`imports:`, `module:Class` rewards)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the job to end and report its result."),
) -> None:
    import shutil
    from pathlib import Path

    from rewardtune.errors import UsageError
    from rewardtune.launch import slurm as L
    from rewardtune.spec.load import load_spec, unresolved_names

    if cluster not in L.CLUSTERS:
        raise UsageError(f"--cluster must be one of {', '.join(L.CLUSTERS)} (got '{cluster}')")
    # values that end up in the sbatch script: a newline would turn the rest of the value into shell commands
    for flag, value in (("--partition", partition), ("--account", account), ("--qos", qos), ("--time", time),
                        ("--mem", mem), ("--constraint", constraint), ("--job-name", job_name),
                        ("--output-dir", output_dir), *(("--sbatch", v) for v in sbatch or [])):
        if value is not None:
            L.check_script_text(flag, value)
    overrides = list(overrides or [])
    if no_imports and not dry_run:
        raise UsageError("--no-imports goes with --dry-run: a submitted job imports the spec's code when it runs")
    from rewardtune.cli.specs import resolve_spec_arg

    resolved = resolve_spec_arg(spec)
    console(stderr=True).print(resolved.note(), markup=False, soft_wrap=True, style="dim")
    spec = str(resolved.path)
    s = load_spec(spec, overrides=overrides, tiny=tiny, imports=not no_imports)
    for name in unresolved_names(s):
        console(stderr=True).print(f"note: not checked (--no-imports): {name}", markup=False, soft_wrap=True)
    launcher = L.launcher_with(
        s.launcher, partition=partition, account=account, qos=qos,
        time_min=L.parse_time(time) if time is not None else None, nodes=nodes, gpus_per_node=gpus_per_node,
        tasks_per_node=tasks_per_node, cpus_per_task=cpus_per_task,
        mem_gb=L.parse_mem_gb(mem) if mem is not None else None, constraint=constraint, exclusive=exclusive,
        array=array, additional=L.parse_sbatch(sbatch or []), max_requeues=max_requeues, job_name=job_name)
    run_dir = Path(output_dir or s.resolved_output_dir).resolve()
    out = console()
    err = console(stderr=True)
    if s.launcher.type != "slurm":
        err.print("[yellow]note:[/] the spec has no `launcher: {type: slurm}` block; using SLURM defaults "
                  "and the flags given.")
    if dry_run:
        if cluster != "slurm":
            raise UsageError("--dry-run prints an sbatch script, so it goes with --cluster slurm")
        if shutil.which("sbatch") is None:
            err.print("[yellow]note:[/] sbatch is not on PATH here; printing the script anyway.")
        out.print(L.sbatch_script(launcher, s.name, run_dir), markup=False, highlight=False, soft_wrap=True)
        return
    if cluster != "slurm":
        err.print(f"[yellow]note:[/] --cluster {cluster}: no SLURM; the job runs "
                  + ("in a subprocess on this machine" if cluster == "local" else "inside this process")
                  + ", and this command waits for it.")
    sub = L.submit(spec, overrides, tiny=tiny, cluster=cluster, launcher=launcher, output_dir=run_dir,
                   resume=resume)
    n = launcher.nodes * L.num_tasks_per_node(launcher)
    ids = ", ".join(sub.job_ids)
    verb = {"slurm": "submitted", "local": "started"}.get(cluster, "running")
    out.print(f"[green]{verb}[/] job {ids} ({cluster}; {launcher.nodes} node{'s' * (launcher.nodes > 1)}, "
              f"{n} process{'es' * (n > 1)}, {launcher.time_min} min)")
    out.print(f"  run dir: {run_dir}", markup=False, soft_wrap=True)
    out.print(f"  spec:    {L.RunDir(run_dir).slurm_dir / L.SUBMITTED_SPEC} (the copy the job reads)", markup=False,
              soft_wrap=True)
    for i, jid in enumerate(sub.job_ids if cluster != "debug" else []):  # debug: no logs, output goes here
        tag = f" [{jid}]" if len(sub.job_ids) > 1 else ""
        out.print(f"  stdout{tag}: {sub.stdout[i]}", markup=False, soft_wrap=True)
        out.print(f"  stderr{tag}: {sub.stderr[i]}", markup=False, soft_wrap=True)
    if cluster != "debug":
        out.print("follow it with:")
        for c in sub.follow_commands():
            out.print(f"  {c}", markup=False, soft_wrap=True)
    if wait or cluster != "slurm":
        out.print("waiting for the job to end...")
        sub.wait()
        out.print(f"[green]done:[/] job {ids} completed; outputs in {run_dir}")
