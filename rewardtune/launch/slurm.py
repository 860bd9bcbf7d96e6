"""Run a spec on SLURM through submitit: sbatch parameters from the spec's `launcher: slurm` block (plus command-line
overrides), one task per GPU with torch.distributed, checkpoint-and-requeue on preemption or time limit, and job
metadata in the run directory so `rewardtune status RUN_DIR` / `rewardtune cancel RUN_DIR` work later.

Layout of a submitted run directory (`rewardtune.rundir.RunDir` owns it)::

    RUN_DIR/                    the engine's outputs (metrics.jsonl, checkpoints/, final weights, ...)
    RUN_DIR/slurm/job.json      job ids, cluster, log paths, command line, the spec it ran
    RUN_DIR/slurm/events.jsonl  one line per attempt start, preemption, requeue, failure (with its traceback),
                                completion
    RUN_DIR/slurm/<job id>/     submitit's folder: sbatch script, its pickles, <job id>_<task>_log.{out,err}

What this module reads back from a run directory is JSON it wrote itself (job.json, events.jsonl) and the logs:
never a pickle. submitit's pickles are its own transport between the submitting process and the job.

Importing this module costs submitit (~0.1 s); torch is imported inside the job only.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from rewardtune.errors import RewardtuneError, UsageError
from rewardtune.rundir import RunDir
from rewardtune.spec.schema import SlurmLauncher

CLUSTERS = ("slurm", "local", "debug")
JOB_FILE = RunDir.JOB
EVENTS_FILE = RunDir.EVENTS
SLURM_DIR = RunDir.SLURM


class JobFailedError(RewardtuneError):
    """A submitted job failed; the message says why in plain words and where the full traceback is."""


# ----------------------------------------------------------------------------------------------- parameters
def parse_time(value: str | int) -> int:
    """SLURM time limit -> minutes. Accepts minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    s = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if not m:
        raise UsageError(f"cannot read time limit '{value}': use minutes (90), HH:MM:SS (01:30:00) or D-HH:MM:SS")
    days, a, b, c = m.groups()
    if days is None and b is None:  # plain minutes
        minutes = int(a)
    elif days is None and c is None:  # MM:SS
        minutes = int(a) + (1 if int(b) else 0)
    else:
        h, mi, sec = int(a), int(b or 0), int(c or 0)
        minutes = int(days or 0) * 1440 + h * 60 + mi + (1 if sec else 0)
    if minutes < 1:
        raise UsageError(f"time limit '{value}' is shorter than a minute")
    return minutes


def parse_mem_gb(value: str | int) -> int:
    """Memory per node -> whole GB. Accepts 64, 64G, 64GB, 65536M, 1T."""
    s = str(value).strip().upper().removesuffix("B")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", s)
    if not m:
        raise UsageError(f"cannot read memory '{value}': use GB (64), or a unit (64G, 65536M)")
    num, unit = float(m.group(1)), m.group(2) or "G"
    gb = num * {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1, "T": 1024}[unit]
    return max(1, int(-(-gb // 1)))  # round up


#: an sbatch option name, as a `--sbatch` key or a key of the spec's `launcher.additional`
SBATCH_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL byte", "\x1b": "an escape"}


def control_character(text: str) -> str | None:
    """The first control character in `text` (newline, carriage return, tab, NUL, escape...), or None."""
    import unicodedata

    return next((c for c in str(text) if unicodedata.category(c) == "Cc"), None)


def describe_control_character(c: str) -> str:
    return _CONTROL_NAMES.get(c, f"the control character U+{ord(c):04X}")


def check_script_text(what: str, value: Any) -> None:
    """Refuse a value bound for the sbatch script that holds a control character: submitit quotes values, but a
    newline inside quotes still ends the `#SBATCH` comment line, and bash runs the rest as a command."""
    c = control_character(str(value))
    if c is not None:
        raise UsageError(f"{what} {str(value)!r} contains {describe_control_character(c)}: in the sbatch script it "
                         "would end the '#SBATCH' line and run the rest as shell commands. Remove it.")


def parse_sbatch(items: Sequence[str]) -> dict[str, str]:
    """`--sbatch key=value` items -> additional sbatch parameters (keys as sbatch spells them, e.g. mail-type)."""
    out: dict[str, str] = {}
    for it in items:
        key, sep, val = it.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise UsageError(f"--sbatch takes key=value (e.g. --sbatch mail-type=END), got '{it}'")
        check_script_text("--sbatch", it)
        if not SBATCH_KEY.fullmatch(key):
            raise UsageError(f"--sbatch {it!r}: '{key}' is not an sbatch option name (letters, digits, '-' and '_', "
                             "e.g. --sbatch mail-type=END)")
        out[key] = val
    return out


def check_sbatch_parameters(params: Mapping[str, Any], run_dir: Path | str) -> None:
    """Every key and value that reaches the sbatch script (and the run directory, which submitit writes into
    `#SBATCH --output` lines) is fit for it; whatever its source: flags, the spec, or Python callers that built a
    launcher without validation."""
    check_script_text("output directory", str(run_dir))
    for key, value in params.items():
        if key == "additional_parameters":
            for k, v in (value or {}).items():
                if not SBATCH_KEY.fullmatch(str(k)):
                    raise UsageError(f"additional sbatch parameter {str(k)!r} is not an sbatch option name (letters, "
                                     "digits, '-' and '_', e.g. mail-type)")
                check_script_text(f"additional sbatch parameter '{k}'", k)
                check_script_text(f"sbatch parameter --{k}", v)
        else:
            check_script_text(f"sbatch parameter --{key.replace('_', '-')}", value)


def launcher_with(spec_launcher: Any, **flags: Any) -> SlurmLauncher:
    """The spec's slurm block with command-line flags applied (None = not given), validated like the spec.

    A spec whose launcher is `local` gets SlurmLauncher's defaults for everything the flags do not set."""
    base = spec_launcher if isinstance(spec_launcher, SlurmLauncher) else SlurmLauncher()
    data = base.model_dump()
    extra = flags.pop("additional", None)
    for k, v in flags.items():
        if k not in SlurmLauncher.model_fields:
            raise UsageError(f"unknown launcher option '{k}'")
        if v is not None:
            data[k] = v
    if extra:
        data["additional"] = {**data.get("additional", {}), **extra}
    from pydantic import ValidationError

    try:
        return SlurmLauncher.model_validate(data)
    except ValidationError as e:
        msgs = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise UsageError("invalid launcher options: " + "; ".join(msgs)) from None


def num_tasks_per_node(launcher: SlurmLauncher) -> int:
    """One process per GPU; `tasks_per_node` wins (CPU data parallelism, or several GPUs per process never)."""
    if launcher.tasks_per_node is not None:
        return launcher.tasks_per_node
    return max(1, launcher.gpus_per_node)


def generic_parameters(launcher: SlurmLauncher, job_name: str) -> dict[str, Any]:
    """submitit's cluster-independent parameters (AutoExecutor names)."""
    p: dict[str, Any] = {
        "name": launcher.job_name or job_name,
        "timeout_min": launcher.time_min,
        "nodes": launcher.nodes,
        "tasks_per_node": num_tasks_per_node(launcher),
        "cpus_per_task": launcher.cpus_per_task,
    }
    if launcher.gpus_per_node:
        p["gpus_per_node"] = launcher.gpus_per_node
    if launcher.mem_gb is not None:
        p["mem_gb"] = launcher.mem_gb
    return p


def slurm_specific_parameters(launcher: SlurmLauncher) -> dict[str, Any]:
    """Parameters only the slurm executor knows (AutoExecutor takes them with a `slurm_` prefix)."""
    p: dict[str, Any] = {}
    for k in ("partition", "account", "qos", "constraint"):
        v = getattr(launcher, k)
        if v is not None:
            p[k] = v
    if launcher.exclusive:
        p["exclusive"] = True
    if launcher.additional:
        p["additional_parameters"] = {k: v for k, v in launcher.additional.items()}
    if launcher.array:
        p["array_parallelism"] = launcher.array
    return p


def sbatch_parameters(launcher: SlurmLauncher, job_name: str) -> dict[str, Any]:
    """What submitit's SlurmExecutor ends up with: generic names translated to sbatch's."""
    rename = {"name": "job_name", "timeout_min": "time", "tasks_per_node": "ntasks_per_node", "mem_gb": "mem"}
    native = {rename.get(k, k): v for k, v in generic_parameters(launcher, job_name).items()}
    if "mem" in native:
        native["mem"] = f"{int(native['mem'])}GB"
    native.update(slurm_specific_parameters(launcher))
    return native


def submitit_command(folder: Path | str, python: str | None = None) -> str:
    py = python or shlex.quote(sys.executable)
    return f"{py} -u -m submitit.core._submit {shlex.quote(str(folder))}"


def sbatch_script(launcher: SlurmLauncher, job_name: str, run_dir: Path | str) -> str:
    """The sbatch script `submit` would hand to sbatch (what `--dry-run` prints). Needs no SLURM installed."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = job_folder_pattern(run_dir)
    params = sbatch_parameters(launcher, job_name)
    check_sbatch_parameters(params, run_dir)
    if launcher.array:
        params["map_count"] = launcher.array
    return _make_sbatch_string(command=submitit_command(folder), folder=folder, **params)


def job_folder_pattern(run_dir: Path | str) -> Path:
    return RunDir(run_dir).slurm_dir / "%j"


def make_executor(launcher: SlurmLauncher, job_name: str, run_dir: Path | str, cluster: str = "slurm"):
    """A submitit AutoExecutor for `cluster` ('slurm', 'local' or 'debug') configured from the launcher block."""
    import submitit

    if cluster not in CLUSTERS:
        raise UsageError(f"unknown cluster '{cluster}'; use one of {', '.join(CLUSTERS)}")
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise UsageError("`sbatch` is not on PATH, so nothing can be submitted to SLURM from here. "
                         "Run where SLURM is installed, or pass --cluster local (a subprocess on this machine) or "
                         "--cluster debug (in this process) to try the job here.")
    check_sbatch_parameters(sbatch_parameters(launcher, job_name), run_dir)
    folder = job_folder_pattern(run_dir)
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster,
                               slurm_max_num_timeout=launcher.max_requeues,
                               slurm_python=shlex.quote(sys.executable))
    params = dict(generic_parameters(launcher, job_name))
    if cluster == "slurm":
        params.update({f"slurm_{k}": v for k, v in slurm_specific_parameters(launcher).items()})
    elif cluster == "local":
        params.pop("mem_gb", None)
        params.pop("cpus_per_task", None)
    ex.update_parameters(**params)
    return ex


# ------------------------------------------------------------------------------------------------- records
def slurm_dir(run_dir: Path | str) -> Path:
    return RunDir(run_dir).slurm_dir


def append_event(run_dir: Path | str, event: str, **data: Any) -> None:
    """One JSON line in RUN_DIR/slurm/events.jsonl (appends are atomic for lines this short)."""
    RunDir(run_dir).append_event(event, **data)


def read_events(run_dir: Path | str) -> list[dict[str, Any]]:
    return RunDir(run_dir).read_events()


def write_job_record(run_dir: Path | str, record: Mapping[str, Any]) -> Path:
    from rewardtune.rundir import atomic_write_bytes

    rd = RunDir(run_dir)
    rd.slurm_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(rd.job_file, (json.dumps(record, indent=2, default=str) + "\n").encode(), "the job record")
    return rd.job_file


def read_job_record(run_dir: Path | str) -> dict[str, Any]:
    p = RunDir(run_dir).job_file
    if not p.exists():
        raise UsageError(f"no submitted job recorded in '{run_dir}' (looked for {p}). Give the run directory that "
                         "`rewardtune submit` printed.")
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"the job record {p} cannot be read ({type(e).__name__}: {e}). It is written by "
                         "`rewardtune submit`; resubmit, or fix the file.") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("job_ids"), list):
        raise UsageError(f"the job record {p} is not one `rewardtune submit` wrote (no job_ids).")
    return rec


# ---------------------------------------------------------------------------------------------------- the job
def _engine_run(spec_path: str, overrides: Sequence[str], tiny: bool, resume: bool, output_dir: str,
                spec_dir: str | None = None) -> Any:
    from rewardtune.api import run
    from rewardtune.spec.load import load_spec

    if spec_dir is None:
        return run(spec_path, overrides=tuple(overrides), tiny=tiny, resume=resume, output_dir=output_dir)
    # the copy submit put in the job folder, its relative paths (prompt files, imports) resolved as the original's
    spec = load_spec(spec_path, overrides=list(overrides), tiny=tiny, base_dir=spec_dir)
    return run(spec, resume=resume, output_dir=output_dir)


@dataclass
class TrainingJob(Checkpointable):
    """What runs on the cluster: one call per task (rank). Checkpointable through `checkpoint()`, which submitit
    calls on rank 0 from its SIGUSR2 handler; by then the engine has written a checkpoint (see `__call__`), so
    the requeued job only needs `resume=True`.
    """

    spec_path: str
    overrides: tuple[str, ...]
    tiny: bool
    output_dir: str
    resume: bool = False
    max_requeues: int = 3
    requeues: int = 0
    spec_sha256: str = ""
    spec_dir: str | None = None  # the submitted spec's own folder, when spec_path is submit's copy of it
    _stopped: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.output_dir = str(Path(self.output_dir).resolve())

    # ----------------------------------------------------------------------------------------------- running
    def __call__(self) -> dict[str, Any]:
        import signal

        import submitit

        from rewardtune.engine import control

        env = submitit.JobEnvironment()
        rank, world = env.global_rank, env.num_tasks
        restarted = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        # A job SLURM requeued by itself (node failure) restarts from its original pickle: resume anyway.
        resume = self.resume or (restarted > 0 and _has_checkpoint(self.output_dir))
        if rank == 0:
            append_event(self.output_dir, "started", job_id=env.job_id, attempt=self.requeues + 1,
                         host=socket.gethostname(), world_size=world, resume=resume, slurm_restart_count=restarted)
            if self.spec_sha256 and _sha256(self.spec_path) != self.spec_sha256:
                msg = (f"warning: {self.spec_path} changed since it was submitted; this attempt runs the file as "
                       "it is now")
                print(msg, file=sys.stderr, flush=True)
                append_event(self.output_dir, "spec_changed", message=msg)
        control.clear_stop()
        usr_sig = env._usr_sig()
        submitit_handler = signal.getsignal(usr_sig)
        usr_seen: list[bool] = []
        if callable(submitit_handler):
            # Never checkpoint inside the signal handler, in the middle of a step: note the request; the engine
            # stops every rank at the same step boundary and writes a checkpoint; then submitit's own handler
            # (below) calls checkpoint() and requeues the job.
            def on_usr(signum: int, frame: Any) -> None:  # noqa: ARG001
                usr_seen.append(True)
                control.request_stop(f"SIG{env.USR_SIG} from SLURM (preemption or time limit)")

            signal.signal(usr_sig, on_usr)
        pg = _init_distributed(env) if world > 1 else None
        try:
            result = _engine_run(self.spec_path, self.overrides, self.tiny, resume, self.output_dir, self.spec_dir)
        except BaseException as e:
            if rank == 0 and not isinstance(e, SystemExit):
                import traceback

                # the traceback travels in JSON: `status` never reads submitit's result pickle
                append_event(self.output_dir, "failed", job_id=env.job_id, error=f"{type(e).__name__}: {e}",
                             traceback="".join(traceback.format_exception(type(e), e, e.__traceback__)))
            raise
        finally:
            if pg is not None:
                _destroy_distributed()
        if getattr(result, "stopped_early", False):
            reason = getattr(result, "stop_reason", "") or control.stop_reason()
            preempted = bool(usr_seen) or env.USR_SIG in reason
            if rank == 0:
                append_event(self.output_dir, "stopped", job_id=env.job_id, reason=reason, step=_last_step(result),
                             checkpoint=_latest_checkpoint(self.output_dir))
            if not preempted:
                raise RewardtuneError(f"training stopped before the end ({reason}); a checkpoint was written: "
                                      f"resubmit with --resume to continue")
            self._stopped = True
            if rank == 0 and callable(submitit_handler):
                # submitit: timeout bookkeeping, checkpoint() below, dump the resubmission, scontrol requeue, exit
                submitit_handler(usr_sig, None)
            if rank != 0:
                _wait_for_requeue(self.output_dir, rank)
            raise RewardtuneError(f"rank {rank}: stopped for preemption but the job was not requeued")
        if rank == 0:
            append_event(self.output_dir, "finished", job_id=env.job_id, step=_last_step(result))
        return _picklable(result) if rank == 0 else {"rank": rank}

    # -------------------------------------------------------------------------------------------- preemption
    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit (rank 0) on preemption or time limit. Returns the resubmission, or None to stop."""
        from submitit.helpers import DelayedSubmission

        if self.requeues >= self.max_requeues:
            append_event(self.output_dir, "requeue_refused", requeues=self.requeues, max_requeues=self.max_requeues,
                         reason=f"requeue limit reached ({self.max_requeues}); resume by hand with "
                                f"`rewardtune submit ... --resume`")
            return None
        nxt = TrainingJob(self.spec_path, self.overrides, self.tiny, self.output_dir, resume=True,
                          max_requeues=self.max_requeues, requeues=self.requeues + 1,
                          spec_sha256=self.spec_sha256, spec_dir=self.spec_dir)
        append_event(self.output_dir, "requeued", requeues=nxt.requeues, max_requeues=self.max_requeues,
                     checkpoint_written=self._stopped)
        return DelayedSubmission(nxt)


def _wait_for_requeue(output_dir: str, rank: int, timeout_s: float = 300.0) -> None:
    """Ranks > 0 after a preemption stop: rank 0's `scontrol requeue` ends this process. Return early (to fail
    at once) when rank 0 records that it will not requeue, or when nothing happens for `timeout_s`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        kinds = [e.get("event") for e in read_events(output_dir)]
        this_attempt = kinds[len(kinds) - 1 - kinds[::-1].index("started"):] if "started" in kinds else kinds
        if "requeue_refused" in this_attempt:
            return
        time.sleep(1.0)


def _init_distributed(env: Any):
    """torch.distributed from submitit's JobEnvironment: NCCL with one GPU per task, gloo on CPU."""
    import torch
    import torch.distributed as dist
    from submitit.helpers import TorchDistributedEnvironment

    denv = TorchDistributedEnvironment()
    if env.cluster == "local":
        denv.master_addr = "127.0.0.1"
    denv.export(set_cuda_visible_devices=False, overwrite=True)
    if torch.cuda.is_available():
        torch.cuda.set_device(denv.local_rank % torch.cuda.device_count())
        backend = "nccl"
    else:
        backend = "gloo"
    from datetime import timedelta

    dist.init_process_group(backend=backend, init_method="env://", rank=denv.rank, world_size=denv.world_size,
                            timeout=timedelta(minutes=10))
    return dist.group.WORLD


def _destroy_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _sha256(path: str | Path) -> str:
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def _latest_checkpoint(output_dir: str) -> str | None:
    latest = RunDir(output_dir).latest_checkpoint()
    return None if latest is None else str(latest.path)


def _has_checkpoint(output_dir: str) -> bool:
    return RunDir(output_dir).has_run()


def _last_step(result: Any) -> int | None:
    for name in ("steps_done", "step", "final_step"):
        v = getattr(result, name, None)
        if v is None and isinstance(result, Mapping):
            v = result.get(name)
        if isinstance(v, int):
            return v
    return None


def _picklable(result: Any) -> Any:
    """Results travel back through a pickle read by the submitting process: keep plain data only."""
    import dataclasses

    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        out = {}
        for f in dataclasses.fields(result):
            v = getattr(result, f.name)
            if isinstance(v, (str, int, float, bool, type(None), list, tuple, dict, Path)):
                out[f.name] = v
        return out
    if isinstance(result, (str, int, float, bool, type(None), list, tuple, dict, Path)):
        return result
    return {"repr": repr(result)}


# ------------------------------------------------------------------------------------------------- submitting
@dataclass
class Submission:
    """Handle on a submitted run: job ids, logs, and the submitit jobs while the submitting process lives."""

    run_dir: Path
    cluster: str
    job_ids: list[str]
    folders: list[Path]
    stdout: list[Path]
    stderr: list[Path]
    jobs: list[Any] = field(default_factory=list, repr=False)

    @classmethod
    def load(cls, run_dir: str | Path) -> Submission:
        """The submission recorded in a run directory (to wait on it from another process)."""
        rec = read_job_record(run_dir)
        return cls(Path(run_dir), rec["cluster"], list(rec["job_ids"]), [Path(f) for f in rec["folders"]],
                   [Path(p) for p in rec["stdout"]], [Path(p) for p in rec["stderr"]])

    @property
    def job_id(self) -> str:
        return self.job_ids[0].split("_")[0]

    def follow_commands(self) -> list[str]:
        if self.cluster != "slurm":
            return [f"tail -f {shlex.quote(str(self.stdout[0]))}"]
        jid = self.job_id
        return [f"squeue -j {jid}",
                f"sacct -j {jid} -X -o JobID,JobName,State,Elapsed,ExitCode,NodeList",
                f"tail -f {shlex.quote(str(self.stdout[0]))} {shlex.quote(str(self.stderr[0]))}",
                f"rewardtune status {shlex.quote(str(self.run_dir))}",
                f"rewardtune cancel {shlex.quote(str(self.run_dir))}"]

    def wait(self, poll_s: float = 2.0, timeout_s: float | None = None) -> list[Any]:
        """Block until every job ends; return their results or raise JobFailedError in plain words."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        results = []
        jobs = self.jobs or [None] * len(self.job_ids)
        for job, jid, folder, err in zip(jobs, self.job_ids, self.folders, self.stderr, strict=True):
            if job is None:
                job = _job_handle(self.cluster, folder, jid)
            results.append(_result_or_raise(job, jid, err, self.run_dir, poll_s, deadline))
        return results


def _job_handle(cluster: str, folder: Path, job_id: str):
    import submitit

    if cluster != "slurm":
        raise UsageError(f"jobs of --cluster {cluster} can only be followed from the process that started them")
    return submitit.SlurmJob(folder=folder, job_id=job_id)


def _result_or_raise(job: Any, job_id: str, stderr: Path, run_dir: Path, poll_s: float,
                     deadline: float | None = None) -> Any:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    if hasattr(job, "watcher"):
        # submitit caches sacct for a while; poll it ourselves so a finished job is seen within seconds
        while not job.done(force_check=True):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after the time given; see {stderr}")
            time.sleep(poll_s)
    try:
        return job.results()[0]  # rank 0's result; one list entry per task
    except (FailedJobError, UncompletedJobError) as e:
        raise JobFailedError(explain_failure(str(e), job_id, stderr, run_dir)) from None


def explain_failure(text: str, job_id: str, stderr: Path | None, run_dir: Path | None) -> str:
    """A remote traceback (or submitit's message) -> what failed, where, and where to read the rest."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    tb_start = next((i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")), None)
    headline = where = None
    if tb_start is not None:
        tail = lines[tb_start:]
        exc = [ln for ln in tail if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)(:|$)", ln)]
        headline = exc[-1] if exc else tail[-1]
        # the innermost frame outside submitit's own machinery is where the user's code failed
        frames = [ln.strip() for ln in tail if ln.strip().startswith('File "')]
        own = [f for f in frames if f"{os.sep}submitit{os.sep}" not in f]
        where = (own or frames or [None])[-1]
    elif lines:
        headline = lines[-1]
    if headline:
        # submitit's own exceptions, without their module path
        headline = re.sub(r"^submitit\.core\.utils\.UncompletedJobError: Job not requeued because: ",
                          "the job was not requeued: ", headline)
    refused = [e for e in read_events(run_dir) if e.get("event") == "requeue_refused"] if run_dir else []
    if refused and (headline is None or "UncompletedJobError" in headline or "not requeued" in headline):
        stops = [e for e in read_events(run_dir) if e.get("event") == "stopped"]
        at = f" at step {stops[-1].get('step')}" if stops and stops[-1].get("step") is not None else ""
        headline = f"preempted{at} and not requeued: {refused[-1].get('reason')}"
        if stops and stops[-1].get("checkpoint"):
            headline += f" (checkpoint: {stops[-1]['checkpoint']})"
        where = None
    msg = f"job {job_id} failed on the cluster: {headline or 'no error message was recorded'}"
    if where:
        msg += f"\n  raised at: {where}"
    if stderr is not None:
        msg += f"\n  full log: {stderr}"
    return msg


def submit(spec_path: str | Path, overrides: Sequence[str] = (), *, tiny: bool = False, cluster: str = "slurm",
           launcher: SlurmLauncher | None = None, output_dir: str | Path | None = None, resume: bool = False,
           **launcher_flags: Any) -> Submission:
    """Validate `spec_path` (with overrides) and submit it. Python twin of `rewardtune submit`.

    The spec file is copied into the job folder (RUN_DIR/slurm/submitted-spec.yaml, byte for byte): the job reads
    that copy, never the caller's working directory, so a spec named by a relative path or by a shipped name runs
    the same on the node, and editing the original after submitting changes nothing. Relative paths inside it
    (prompt files, imports) still resolve against the original's folder.

    `launcher_flags` override the spec's slurm block (partition=..., time_min=..., gpus_per_node=...)."""
    from rewardtune.spec.load import find_spec_file, load_spec

    spec = load_spec(spec_path, overrides=list(overrides), tiny=tiny)
    source = find_spec_file(spec_path)
    if source is None:  # load_spec found it a moment ago
        raise UsageError(f"spec file '{spec_path}' not found")
    source = source.resolve()
    lau = launcher or launcher_with(spec.launcher, **launcher_flags)
    run_dir = Path(output_dir or spec.resolved_output_dir).resolve()
    _refuse_live_job(run_dir)
    RunDir(run_dir).check_not_running()
    if not resume and not lau.array and _has_checkpoint(str(run_dir)):
        raise UsageError(f"{run_dir} already holds checkpoints of a run: pass --resume to continue it, or choose "
                         "another output_dir (-o).")
    world = lau.nodes * num_tasks_per_node(lau)
    if spec.train.batch_size % world:
        raise UsageError(f"train.batch_size={spec.train.batch_size} is the global batch: it must split evenly over the "
                         f"{world} processes ({lau.nodes} node(s) x {num_tasks_per_node(lau)}); use a multiple of "
                         f"{world}")
    RunDir(run_dir).check_writable()  # before anything is submitted: the job and its records write there
    ex = make_executor(lau, spec.name, run_dir, cluster)
    copy = copy_spec(source, run_dir)
    seeds = [spec.train.seed + i for i in range(lau.array)] if lau.array else [None]
    jobs_in = []
    for seed in seeds:
        ov = tuple(overrides) + ((f"train.seed={seed}",) if seed is not None else ())
        out = run_dir if seed is None else run_dir / f"seed-{seed}"
        jobs_in.append(TrainingJob(str(copy), ov, tiny, str(out), resume=resume, max_requeues=lau.max_requeues,
                                   spec_sha256=_sha256(copy), spec_dir=str(source.parent)))
    if len(jobs_in) == 1:
        jobs = [ex.submit(jobs_in[0])]
    else:
        with ex.batch():
            jobs = [ex.submit(j) for j in jobs_in]
    return _record(run_dir, cluster, source, overrides, tiny, lau, jobs, jobs_in, copy)


SUBMITTED_SPEC = "submitted-spec.yaml"


def copy_spec(source: Path, run_dir: Path) -> Path:
    """RUN_DIR/slurm/submitted-spec.yaml: the spec file as submitted, byte for byte (comments kept)."""
    from rewardtune.rundir import atomic_write_bytes

    rd = RunDir(run_dir)
    rd.slurm_dir.mkdir(parents=True, exist_ok=True)
    target = rd.slurm_dir / SUBMITTED_SPEC
    atomic_write_bytes(target, source.read_bytes(), "the submitted spec")
    return target


def _record(run_dir: Path, cluster: str, spec_path: Any, overrides: Sequence[str], tiny: bool,
            lau: SlurmLauncher, jobs: list[Any], jobs_in: list[TrainingJob], copy: Path | None = None) -> Submission:
    ids = [str(j.job_id) for j in jobs]
    folders = [Path(j.paths.folder) for j in jobs]
    outs = [Path(j.paths.stdout) for j in jobs]
    errs = [Path(j.paths.stderr) for j in jobs]
    rec = {
        "cluster": cluster,
        "job_id": ids[0].split("_")[0],
        "job_ids": ids,
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "spec": str(Path(spec_path).resolve()),
        "spec_copy": None if copy is None else str(copy),
        "overrides": list(overrides),
        "tiny": tiny,
        "run_dirs": [j.output_dir for j in jobs_in],
        "folders": [str(f) for f in folders],
        "stdout": [str(p) for p in outs],
        "stderr": [str(p) for p in errs],
        "launcher": lau.model_dump(mode="json"),
        "num_tasks": lau.nodes * num_tasks_per_node(lau),
        "python": sys.executable,
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }
    write_job_record(run_dir, rec)
    append_event(run_dir, "submitted", job_ids=ids, cluster=cluster)
    return Submission(run_dir, cluster, ids, folders, outs, errs, jobs)


def _refuse_live_job(run_dir: Path) -> None:
    p = RunDir(run_dir).job_file
    if not p.exists():
        return
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    if rec.get("cluster") != "slurm" or shutil.which("squeue") is None:
        return
    refuse_if_live(run_dir, rec, job_states(rec))


def refuse_if_live(run_dir: Path | str, rec: Mapping[str, Any], states: Mapping[str, str]) -> None:
    """Refuse to start a run in a directory whose recorded job (`rec`) is still queued or running (`states`, as
    `job_states` reads them): two jobs writing one run directory would corrupt it."""
    live = {j: s for j, s in states.items() if s in ACTIVE_STATES}
    if live:
        raise UsageError(f"run directory {run_dir} belongs to job {rec['job_id']}, which is still "
                         f"{', '.join(sorted(set(live.values())))}. Cancel it first (`rewardtune cancel {run_dir}`) "
                         "or choose another output_dir.")


# ------------------------------------------------------------------------------------------- status / cancel
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
                 "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def job_states(rec: Mapping[str, Any]) -> dict[str, str]:
    """State of each job of a record: squeue for live jobs, then sacct (needs accounting) for finished ones."""
    base = str(rec["job_id"])
    sacct = _run(["sacct", "-j", base, "-X", "-n", "-P", "-o", "JobID,State"]) if shutil.which("sacct") else ""
    squeue = _run(["squeue", "-h", "-j", base, "-o", "%i|%T"]) if shutil.which("squeue") else ""
    return parse_job_states(rec, sacct, squeue)


def parse_job_states(rec: Mapping[str, Any], sacct: str, squeue: str) -> dict[str, str]:
    """Each job of a record -> its state, from the text of `sacct -X -n -P -o JobID,State` and of
    `squeue -h -o %i|%T` for the record's job (either may be empty: no accounting, or the job left the queue)."""
    base = str(rec["job_id"])
    states: dict[str, str] = {}
    for line in sacct.splitlines():
        parts = line.split("|")
        if len(parts) >= 2 and parts[0]:
            states[parts[0]] = parts[1].split()[0]  # "CANCELLED by 0" -> CANCELLED
    for line in squeue.splitlines():
        parts = line.split("|")
        # squeue is fresher for live jobs; sacct's final state wins over squeue's COMPLETING
        if len(parts) == 2 and states.get(parts[0], "PENDING") in ACTIVE_STATES:
            states[parts[0]] = parts[1]
    return {jid: states.get(jid, states.get(base, "UNKNOWN")) for jid in rec.get("job_ids", [base])}


@dataclass
class JobStatus:
    job_id: str
    state: str
    run_dir: str
    stdout: str
    stderr: str
    requeues: int
    last_step: int | None
    error: str | None


def status(run_dir: str | Path) -> list[JobStatus]:
    """Where each job of a submitted run stands, with its error in plain words when it failed."""
    rec = read_job_record(run_dir)
    if rec.get("cluster") != "slurm":
        states = {j: _local_state(run_dir) for j in rec["job_ids"]}
    else:
        if shutil.which("squeue") is None and shutil.which("sacct") is None:
            raise UsageError("neither squeue nor sacct is on PATH: run this where SLURM is installed")
        states = job_states(rec)
    out = []
    for i, jid in enumerate(rec["job_ids"]):
        rd = rec["run_dirs"][i] if i < len(rec.get("run_dirs", [])) else str(run_dir)
        events = read_events(rd)
        requeues = sum(1 for e in events if e.get("event") == "requeued")
        steps = [e.get("step") for e in events if e.get("step") is not None]
        logged = RunDir(rd).last_logged_step()
        if logged is not None:
            steps.append(logged)
        state = states.get(jid, "UNKNOWN")
        err = None
        if state not in ACTIVE_STATES and state != "COMPLETED":
            err = _remote_error(rec, i, jid, rd)
        out.append(JobStatus(jid, state, rd, rec["stdout"][i], rec["stderr"][i], requeues,
                             max(steps) if steps else None, err))
    return out


def _local_state(run_dir: str | Path) -> str:
    ev = [e.get("event") for e in read_events(run_dir)]
    for e in reversed(ev):
        if e == "finished":
            return "COMPLETED"
        if e == "failed":
            return "FAILED"
        if e in ("started", "requeued"):
            return "RUNNING"
    return "UNKNOWN"


def _remote_error(rec: Mapping[str, Any], i: int, jid: str, run_dir: str) -> str | None:
    """Why a job failed: the traceback its rank 0 recorded in events.jsonl (JSON this package wrote: never
    submitit's result pickle, which unpickling would let run code), else the end of the job's stderr (a job killed
    before it could record anything: out of memory, a node failure, an error outside the engine)."""
    base = jid.split("_")[0]
    failed = [e for e in read_events(run_dir) if e.get("event") == "failed"
              and str(e.get("job_id", "")).split("_")[0] == base and isinstance(e.get("traceback"), str)]
    if failed:
        return explain_failure(failed[-1]["traceback"], jid, Path(rec["stderr"][i]), Path(run_dir))
    err = Path(rec["stderr"][i])
    if err.exists():
        tail = err.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
        text = "\n".join(tail)
        if "Traceback" in text or "Error" in text:
            return explain_failure(text, jid, err, Path(run_dir))
        return f"job {jid} ended without a Python error; last lines of {err}:\n  " + "\n  ".join(tail[-5:])
    return None


def cancel(run_dir: str | Path) -> list[str]:
    """Cancel every job of a submitted run; return the ids cancelled."""
    rec = read_job_record(run_dir)
    if rec.get("cluster") != "slurm":
        raise UsageError(f"run {run_dir} ran with --cluster {rec.get('cluster')}: stop it with Ctrl-C where it runs")
    if shutil.which("scancel") is None:
        raise UsageError("scancel is not on PATH: run this where SLURM is installed")
    import submitit

    base = str(rec["job_id"])
    job = submitit.SlurmJob(folder=Path(rec["folders"][0]), job_id=base)
    job.cancel(check=True)
    append_event(run_dir, "cancel_requested", job_id=base)
    return list(rec["job_ids"])
