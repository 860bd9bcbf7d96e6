"""Python entry point: `rewardtune.run(spec_or_path, overrides=..., callbacks=[...])`."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run(spec_or_path: Any, overrides: Sequence[str] = (), callbacks: Sequence[Any] = (), tiny: bool = False,
        resume: bool = False, output_dir: str | Path | None = None, *, progress: bool | None = None,
        overwrite: bool = False, fetch_command: str | None = None):
    """Fine-tune the spec's model against its objective; returns a `TrainResult`.

    `spec_or_path`: a YAML path, a dict or a `Spec`. `overrides`: `key=value` strings, validated like the spec.
    `callbacks`: callables receiving a `StepEvent` after each step, or objects with `on_step` / `on_eval` /
    `on_train_start` / `on_train_end`. `tiny`: swap every model for its offline tiny twin. `resume`: continue from
    the newest readable checkpoint in the output directory (a fresh start when there is none; CheckpointError when
    there are some and none can be read, or when the spec differs from the run's saved spec.yaml). `overwrite`:
    start over in an output directory that holds a previous run (otherwise that is an error). Tiny runs without an
    explicit `output_dir` go to the spec's output_dir + `-tiny` and replace the previous tiny run there.

    Before any model loads, in this order: the spec's preflight (prompt files, local paths, extras, device; every
    problem at once), the output directory (a writable directory; OutputDirError), every checkpoint the run needs
    (missing hub ones are fetched unless offline mode is on; whatever is still missing raises one
    MissingWeightsError naming all of them and `fetch_command`, by default `rewardtune weights SPEC --download`),
    then the output directory is opened and locked (one run at a time). A run stopped by a signal or `request_stop` returns a result with
    `stopped_early` set, after writing a checkpoint of its last finished step.

        result = rewardtune.run("specs/demo.yaml", ["train.steps=20"], tiny=True)
        print(result.eval_before, result.eval_after, result.weights_path)
    """
    import torch

    from rewardtune.engine.build import build_trainer
    from rewardtune.engine.distributed import dist_info
    from rewardtune.spec.load import load_spec

    spec = load_spec(spec_or_path, overrides=list(overrides), tiny=tiny)
    if tiny and output_dir is None:
        # tiny runs are throwaway smoke runs: keep them apart from real runs, and let them be re-run
        output_dir = spec.resolved_output_dir.rstrip("/") + "-tiny"
        overwrite = overwrite or not resume
    out = Path(output_dir) if output_dir is not None else Path.cwd() / spec.resolved_output_dir
    info = dist_info()
    if fetch_command is None:
        import shlex

        named = str(spec_or_path) if isinstance(spec_or_path, (str, Path)) else "SPEC"
        fetch_command = shlex.join(["rewardtune", "weights", named, *overrides, *(["--tiny"] if tiny else []),
                                    "--download"])
    # every check before any model loads: a bad spec, directory or checkpoint fails in a second, not after minutes
    start = _prepare(out, spec=spec, info=info, resume=resume, overwrite=overwrite, fetch_command=fetch_command)
    threads = torch.get_num_threads()  # set back in `finally`, so a failed run leaves the caller's setting
    if spec.model.pretrained.startswith("zoo:") and not torch.cuda.is_available():
        torch.set_num_threads(1)  # tiny twins run ~3x faster on one thread than on two (measured, 2-core CPU)
    try:
        trainer = build_trainer(spec, output_dir=out, callbacks=callbacks, progress=progress)
        result = trainer.run(resume=resume, overwrite=overwrite, start=start)
    except BaseException as e:
        if info.main:
            from rewardtune.errors import RewardtuneError

            code = e.exit_code if isinstance(e, RewardtuneError) else 130 if isinstance(e, KeyboardInterrupt) else 1
            _record_result(start.run, {"outcome": "failed", "exit_code": code, "error": f"{type(e).__name__}: {e}",
                                       "steps": spec.train.steps, "last_logged_step": start.run.last_logged_step()})
        raise
    else:
        if info.main:
            _record_result(start.run, {
                "outcome": "stopped" if result.stopped_early else "done", "exit_code": 3 if result.stopped_early else 0,
                "steps_done": result.steps_done,
                "steps": spec.train.steps, "stop_reason": result.stop_reason, "resumed_from": result.resumed_from,
                "weights": None if result.weights_path is None else str(result.weights_path),
                "skipped_steps": result.skipped_steps, "eval_before": result.eval_before,
                "eval_after": result.eval_after, "selected_step": result.selected_step})
            if spec.logging.push_to_hub and result.weights_path is not None:  # pragma: no cover - network
                _push(spec, result.weights_path)
        return result
    finally:
        start.release()
        torch.set_num_threads(threads)


def _check_writable(out: Path) -> None:
    """OutputDirError unless `out` is (or can be made) a writable directory, leaving behind no folder it made:
    `open_run_dir` makes it for real once the checkpoints are known to be here."""
    import contextlib

    from rewardtune.rundir import RunDir

    created = [a for a in (out, *out.parents) if not a.exists()]  # deepest first
    try:
        RunDir(out).check_writable()
    finally:
        for a in created:
            with contextlib.suppress(OSError):
                a.rmdir()


def _prepare(out: Path, *, spec: Any, info: Any, resume: bool, overwrite: bool, fetch_command: str):
    """What happens before any model loads, in this order: the spec's preflight, the output directory (rank 0),
    every checkpoint (each rank, as each may have its own cache; missing ones are fetched, and Ctrl-C stops a
    download at once since nothing is written yet), then the run directory opened and locked on every rank. When
    a step fails on any rank, every rank raises, so none waits for the others at a collective."""
    from rewardtune.engine import control
    from rewardtune.engine.outputs import open_run_dir
    from rewardtune.errors import RewardtuneError
    from rewardtune.rewards._weights import require, spec_weights
    from rewardtune.spec.preflight import preflight

    err: RewardtuneError | None = None
    start = None
    try:
        preflight(spec)
        if info.main:  # one rank tries the directory (ranks that made and removed it at once would race)
            _check_writable(out)  # a bad directory is exit 2 before a missing checkpoint is exit 4
        with control.plain_signals():
            require(spec_weights(spec), fetch_command)
        start = open_run_dir(out, resume=resume, overwrite=overwrite, spec=spec, main=info.main)
    except RewardtuneError as e:
        err = e
    if info.world > 1:
        import torch
        import torch.distributed as dist

        from rewardtune.engine.distributed import any_flag

        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        failed = any_flag(err is not None, info, dev)
    else:
        failed = err is not None
    if failed:
        if start is not None:
            start.release()
        raise err or RewardtuneError(f"another rank could not start the run in {out}; see its error")
    assert start is not None
    return start


def _record_result(run: Any, result: dict[str, Any]) -> None:
    """result.json: how this attempt ended, for `rewardtune status` (best effort: a full disk must not hide the
    run's own error behind this one)."""
    import contextlib

    from rewardtune.errors import OutputDirError

    with contextlib.suppress(OSError, OutputDirError):
        run.write_result(result)


def _push(spec: Any, folder: Path) -> None:  # pragma: no cover - needs the network
    """logging.push_to_hub: upload the export. A failure leaves the run done and says how to push by hand."""
    from rewardtune.errors import RewardtuneError
    from rewardtune.share import push_to_hub

    repo = spec.logging.hub_repo_id or spec.name
    try:
        url = push_to_hub(folder, repo, private=spec.logging.hub_private)
    except Exception as e:  # noqa: BLE001 - no token, no network, no rights: the run itself is done and kept
        raise RewardtuneError(f"the run finished and its export is in {folder}, but uploading it to '{repo}' failed "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Upload it with "
                              f"`hf upload {repo} {folder}` once `hf auth login` works.") from None
    print(f"pushed {folder} to {url}", flush=True)
