"""The run directory: what a run writes where. This module is the only one that knows the layout; the trainer,
`rewardtune status` and the SLURM launcher all go through `RunDir`. Importing it is cheap (no torch).

    RUN_DIR/
      spec.yaml                 the resolved spec the run was started with (a resume must give the same spec)
      versions.json             library versions of the latest attempt
      metrics.jsonl             one JSON line per logged step (step 0: the 'before' eval)
      tensorboard/              event files (logging.trackers: [tensorboard])
      wandb/                    wandb's own files and run-id.txt, the id a resumed run logs on under (logging.trackers)
      images/                   before.png, step_NNNNNN.png, after.png, compare.png (before/after pairs)
      checkpoints/step_NNNNNNNN/  state.json + tensors.safetensors: one directory per checkpoint, written under a
                                temporary name and renamed into place (never a pickle)
      lora/                     the exported LoRA (unet/ or transformer/: the fully fine-tuned denoiser)
      result.json               how the latest attempt ended: done, stopped (resumable) or failed
      run.lock                  flock-ed by the process running in this directory (pid, host, command inside)
      slurm/job.json            submitted runs: job ids, logs, command line (rewardtune.launch.slurm)
      slurm/events.jsonl        submitted runs: one line per attempt start, stop, requeue, failure, completion
      slurm/<job id>/           submitit's own folder
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rewardtune.errors import OutputDirError

CHECKPOINT_RE = re.compile(r"^step_(\d{8})$")
TMP_PREFIX = ".tmp-"  # temp files and directories of atomic writes; removed when a write fails or at the next save
LEGACY_CHECKPOINT_RE = re.compile(r"^step_\d+\.(pt|pth|bin|pkl|pickle)$")


@dataclass(frozen=True)
class CheckpointRef:
    step: int
    path: Path


class RunDir:
    """Paths of one run directory, and the reads every caller shares (checkpoints, metrics, result, events)."""

    SPEC = "spec.yaml"
    VERSIONS = "versions.json"
    METRICS = "metrics.jsonl"
    RESULT = "result.json"
    BEST = "best.json"
    LOCK = "run.lock"
    CHECKPOINTS = "checkpoints"
    IMAGES = "images"
    TENSORBOARD = "tensorboard"
    WANDB = "wandb"
    LORA = "lora"
    UNET = "unet"
    TRANSFORMER = "transformer"
    SLURM = "slurm"
    JOB = "job.json"
    EVENTS = "events.jsonl"
    # what a fresh start (overwrite) removes; the spec, versions, job records and the lock stay
    OUTPUTS = (CHECKPOINTS, LORA, UNET, TRANSFORMER, IMAGES, TENSORBOARD, WANDB, METRICS, RESULT, BEST)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---------------------------------------------------------------------------------------------- paths
    @property
    def spec_file(self) -> Path:
        return self.path / self.SPEC

    @property
    def versions_file(self) -> Path:
        return self.path / self.VERSIONS

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def result_file(self) -> Path:
        return self.path / self.RESULT

    @property
    def best_file(self) -> Path:
        return self.path / self.BEST

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def images_dir(self) -> Path:
        return self.path / self.IMAGES

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def wandb_dir(self) -> Path:
        return self.path / self.WANDB

    @property
    def lora_dir(self) -> Path:
        return self.path / self.LORA

    @property
    def unet_dir(self) -> Path:
        return self.path / self.UNET

    @property
    def transformer_dir(self) -> Path:
        return self.path / self.TRANSFORMER

    @property
    def slurm_dir(self) -> Path:
        return self.path / self.SLURM

    @property
    def job_file(self) -> Path:
        return self.slurm_dir / self.JOB

    @property
    def events_file(self) -> Path:
        return self.slurm_dir / self.EVENTS

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step_{step:08d}"

    # --------------------------------------------------------------------------------------- checkpoints
    def checkpoints(self) -> list[CheckpointRef]:
        """Checkpoint directories, oldest first (whether they load is for `engine.outputs` to find out)."""
        d = self.checkpoints_dir
        if not d.is_dir():
            return []
        found = []
        for p in d.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir():
                found.append(CheckpointRef(int(m.group(1)), p))
        return sorted(found, key=lambda c: c.step)

    def latest_checkpoint(self) -> CheckpointRef | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def legacy_checkpoints(self) -> list[Path]:
        """Pickle checkpoints (`step_N.pt`) of older versions, or planted there: never loaded."""
        d = self.checkpoints_dir
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if LEGACY_CHECKPOINT_RE.match(p.name))

    def has_run(self) -> bool:
        """Whether this directory holds a run that a fresh start would destroy."""
        return bool(self.checkpoints() or self.legacy_checkpoints())

    def clear_outputs(self) -> None:
        """Remove what a previous run wrote (to start over in its directory); keeps the lock and job records."""
        for name in self.OUTPUTS:
            p = self.path / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()

    # ------------------------------------------------------------------------------------- spec, metrics
    def read_spec(self) -> dict[str, Any] | None:
        """The spec the run was started with, as saved (None when there is none). rewardtune writes it without
        anchors or aliases, so a file that has any (an alias bomb) or is huge was not written by it: refused
        before anything is expanded."""
        import yaml

        from rewardtune.errors import CheckpointError

        if not self.spec_file.is_file():
            return None
        bad = f"{self.spec_file} was not written by rewardtune"
        if self.spec_file.stat().st_size > 16 * 2**20:
            raise CheckpointError(f"{bad} (over 16 MB). Restore it, or start the run over.")
        try:
            text = self.spec_file.read_text(encoding="utf-8")
            if any(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=yaml.SafeLoader)):
                raise CheckpointError(f"{bad} (it uses YAML aliases). Restore it, or start the run over.")
            data = yaml.safe_load(text)
        except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
            raise CheckpointError(f"{bad} or was damaged ({type(e).__name__}). Restore it, or start the run "
                                  "over.") from None
        return data if isinstance(data, dict) else None

    def metrics(self) -> list[dict[str, Any]]:
        """Every complete line of metrics.jsonl (a line cut by a crash or a full disk is skipped)."""
        if not self.metrics_file.is_file():
            return []
        out = []
        for line in self.metrics_file.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rec = json.loads(line)
                if isinstance(rec, dict):
                    out.append(rec)
        return out

    def last_logged_step(self) -> int | None:
        """The newest step in metrics.jsonl, read from its end (the file grows with the run)."""
        p = self.metrics_file
        if not p.is_file():
            return None
        with open(p, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            tail = f.read().decode("utf-8", errors="replace").splitlines()
        for line in reversed(tail):
            try:
                step = json.loads(line).get("step")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(step, int):
                return step
        return None

    # ------------------------------------------------------------------------------------ result, events
    def write_result(self, result: dict[str, Any]) -> None:
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
        atomic_write_bytes(self.result_file, (json.dumps(rec, indent=2, default=str) + "\n").encode())

    def write_best(self, best: dict[str, Any]) -> None:
        """best.json: the eval that `logging.select_by` ranks first so far, and the step whose checkpoint holds it
        (at the end: the step whose weights were exported)."""
        atomic_write_bytes(self.best_file, (json.dumps(best, indent=2, allow_nan=False) + "\n").encode(),
                           "the best eval's record")

    def read_best(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.best_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return None
        ok = isinstance(data, dict) and isinstance(data.get("step"), int) and isinstance(data.get("value"), int | float)
        return data if ok and isinstance(data.get("metric"), str) else None

    def read_result(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.result_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def append_event(self, event: str, **data: Any) -> None:
        """One JSON line in slurm/events.jsonl (appends are atomic for lines this short)."""
        self.slurm_dir.mkdir(parents=True, exist_ok=True)
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, **data}
        with open(self.events_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=str) + "\n")

    def read_events(self) -> list[dict[str, Any]]:
        p = self.events_file
        if not p.exists():
            return []
        out = []
        for line in p.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))  # a line cut by a kill is skipped
        return out

    # -------------------------------------------------------------------------------- usability and lock
    def check_writable(self) -> None:
        """Create the directory if needed and prove a file can be written in it; OutputDirError otherwise."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise OutputDirError(f"output directory {p} is a file, not a directory. Choose another output "
                                 "directory, or move the file away.")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            blocker = next((a for a in p.parents if a.exists() and not a.is_dir()), p)
            raise OutputDirError(f"output directory {p} cannot be created: {blocker} is a file, not a directory. "
                                 "Choose another output directory.") from None
        except OSError as e:
            raise write_error(e, p, "the output directory") from None
        try:
            name = tmp_name(p / "write-test")
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                os.write(fd, b"rewardtune\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)
        except OSError as e:
            raise write_error(e, p, "a test file") from None

    def lock(self) -> RunLock:
        """Take the run directory's lock (OutputDirError naming the holder when another process has it)."""
        return RunLock(self.lock_file).acquire()

    def lock_holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (pid, host, started, command), or None when no process does."""
        return RunLock(self.lock_file).holder()

    def check_not_running(self) -> None:
        """OutputDirError naming the process when a run holds this directory now."""
        holder = self.lock_holder()
        if holder is not None:
            raise OutputDirError(f"output directory {self.path} is in use by a run ({_describe(holder)}). Wait for "
                                 "that run to end or stop it, or choose another output directory.")

    # ------------------------------------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        """Where a run stands, from its files alone: running (and by whom), its last result, steps, checkpoints."""
        holder = self.lock_holder() if self.lock_file.exists() else None
        result = self.read_result()
        latest = self.latest_checkpoint()
        if holder is not None:
            state = "RUNNING"
        elif result is not None:
            state = {"done": "COMPLETED", "stopped": "STOPPED", "failed": "FAILED"}.get(result.get("outcome"),
                                                                                       "UNKNOWN")
        elif self.spec_file.exists():
            state = "ENDED"  # started, then killed before it could write a result
        else:
            state = "UNKNOWN"
        return {"state": state, "holder": holder, "result": result, "last_step": self.last_logged_step(),
                "checkpoint": None if latest is None else str(latest.path),
                "checkpoint_step": None if latest is None else latest.step}


class RunLock:
    """An exclusive `flock` on RUN_DIR/run.lock, held for a whole run. The OS releases it when the process ends,
    however it ends (kill -9 included), so a stale lock never blocks a run. The file holds the holder's pid, host
    and command line, so the refusal can say who holds it. The file is never deleted (deleting it while another
    process waits on it would let two processes hold 'the' lock)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(e, self.path, "the run's lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputDirError(f"output directory {self.path.parent} is in use by another run "
                                 f"({_describe(holder)}). Wait for that run to end or stop it, or choose another "
                                 "output directory.") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            # a filesystem without locks (some NFS setups): run unlocked rather than not at all
            print(f"warning: {self.path.parent}'s filesystem does not support file locks ({e.strerror}); two runs "
                  "in this directory would not be stopped from overwriting each other", file=sys.stderr)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv)}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as e:
            os.close(fd)
            raise write_error(e, self.path, "the run's lock file") from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def holder(self) -> dict[str, Any] | None:
        """The holder's record when some process holds the lock; None when it is free (or there is no file)."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_holder(fd)
            except OSError:
                return None
            return None  # got it: nobody holds the exclusive lock (closing the file lets it go)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode("utf-8", errors="replace") or "{}")
    except (OSError, json.JSONDecodeError):
        data = {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "a process that has not written its details yet"
    text = f"pid {holder['pid']} on {holder.get('host', '?')}"
    if holder.get("started"):
        text += f", started {holder['started']}"
    if holder.get("command"):
        text += f": {holder['command']}"
    return text


# -------------------------------------------------------------------------------------------- atomic writes
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_error(e: OSError, path: Path, what: str) -> OutputDirError:
    """An OSError met while writing under an output directory -> a message naming the problem and the fix."""
    path = Path(path)
    if e.errno in DISK_FULL:
        free = ""
        with contextlib.suppress(OSError):
            existing = next(a for a in (path, *path.parents) if a.exists())
            free = f"; {shutil.disk_usage(existing).free / 2**20:.1f} MB free there"
        kind = "quota exceeded" if e.errno == errno.EDQUOT else "no space left on the device"
        return OutputDirError(f"{kind} while writing {what} ({path}{free}). Nothing partial was kept. Free some "
                              "space on that filesystem (or choose an output directory on another one); a run then "
                              "resumes from its last complete checkpoint.")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "the filesystem is read-only" if e.errno == errno.EROFS else "permission denied"
        return OutputDirError(f"cannot write {what} ({path}): {why}. Choose an output directory you can write to.")
    return OutputDirError(f"cannot write {what} ({path}): {e.strerror or e}. Choose another output directory or "
                          "fix this one.")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], what: str | None = None) -> None:
    """Write `path` through a temp file in the same directory (fsync, rename): readers see the old file or the
    new one, never a partial one. On any failure the temp file is removed; a full disk or an unwritable
    directory becomes OutputDirError."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any file
    except OSError as e:
        raise write_error(e, path, what or path.name) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(e, path, what or path.name) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes, what: str | None = None) -> None:
    atomic_write(path, lambda f: f.write(data), what)


def tmp_name(path: Path, tag: str = "") -> Path:
    """A fresh temp name next to `path`; `iter_tmp` finds what a crash left of it."""
    return path.with_name(f"{TMP_PREFIX}{path.name}{tag}.{os.getpid()}.{uuid.uuid4().hex[:8]}")


def fsync_dir(path: str | Path) -> None:
    """Make a rename in `path` durable (best effort: some filesystems cannot fsync a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def iter_tmp(directory: Path) -> Iterator[Path]:
    """Temp files and directories that a write interrupted by a crash left behind."""
    if directory.is_dir():
        yield from (p for p in directory.iterdir() if p.name.startswith(TMP_PREFIX))
