"""Shared benchmark plumbing: fresh-subprocess measurements, spreads, machine/version capture, the TRL venv.

Every measurement runs in its own Python process so that peak memory (RSS on CPU, `max_memory_allocated` on
GPU) of one cell never leaks into another. Workers print one JSON line prefixed with `RESULT ` on stdout.

This module imports only the standard library: it runs in the parent (the project venv) and is never imported
by TRL's venv except through `_step_worker.py`, which only uses the memory helpers below.
"""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"

# TRL 0.23.1 is the last release with AlignPropTrainer. torch is installed first and pinned so pip keeps it
# (an unpinned torch can pull a multi-GB CUDA build on a CPU machine).
TRL_TORCH_SPEC = os.environ.get("REWARDTUNE_TRL_TORCH", "torch==2.13.0")
TRL_PACKAGES = ["trl==0.23.1", "diffusers", "peft", "ftfy"]


def default_trl_venv() -> Path:
    """$REWARDTUNE_TRL_VENV; else the workplace's shared /work/refvenvs/trl when present; else .nox/trl-0.23.1."""
    if os.environ.get("REWARDTUNE_TRL_VENV"):
        return Path(os.environ["REWARDTUNE_TRL_VENV"])
    shared = Path("/work/refvenvs/trl")
    return shared if shared.exists() else ROOT / ".nox" / "trl-0.23.1"


# ---------------------------------------------------------------------------------------------------- stats
def spread(xs: list[float]) -> dict:
    xs = [float(x) for x in xs]
    if not xs:
        return {"n": 0, "min": float("nan"), "median": float("nan"), "max": float("nan")}
    return {"n": len(xs), "min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def fmt(s: dict, digits: int = 3) -> str:
    """`median (min-max)`."""
    if not s or s.get("n", 0) == 0:
        return "n/a"
    f = f"{{:.{digits}g}}"
    return f"{f.format(s['median'])} ({f.format(s['min'])}–{f.format(s['max'])})"


def ratio_spread(num: list[float], den: list[float]) -> dict:
    """Ratios of paired measurements (same repeat, interleaved), e.g. TRL time / rewardtune time."""
    return spread([a / b for a, b in zip(num, den, strict=False) if b > 0])


# ----------------------------------------------------------------------------------------- process memory
def _status_kb(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else -1


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def rss_parts_mb() -> dict[str, float]:
    """VmRSS split as Linux does: anonymous (heap, tensors, Python objects), file-backed (mapped shared libraries
    and files: their resident pages depend on the page cache and on what other processes have touched, not on
    what this process allocates) and shmem. NaN where /proc is missing."""
    out = {}
    for k in ("RssAnon", "RssFile", "RssShmem"):
        kb = _status_kb(k)
        out[k] = kb / 1024 if kb >= 0 else float("nan")
    return out


def peak_rss_mb() -> float:
    """High-water RSS since the last `reset_peak_rss()` (or process start)."""
    kb = _status_kb("VmHWM")
    if kb < 0:  # not Linux
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, writing 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------- subprocesses
def run_script(python: str | Path, args: list, *, env: dict, cwd: str | Path = ROOT,
               timeout: float | None = None) -> dict:
    """Run a script in a fresh process and return the dict its last `RESULT {json}` line carries, plus
    `process_wall_s`. Its stderr (progress bars, warnings) goes to a file, not a pipe, so a long worker never
    blocks on a full pipe nor dies on a closed one; a non-zero exit or no RESULT line raises RuntimeError with the
    output's tail."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.run([str(python), *map(str, args)], stdout=subprocess.PIPE, stderr=err, text=True,
                           timeout=timeout, env=env, cwd=str(cwd))
        err.seek(0)
        stderr = err.read()
    wall = time.perf_counter() - t0
    for line in reversed(p.stdout.splitlines() if p.returncode == 0 else []):  # a worker that failed after its
        if line.startswith("RESULT "):                                          # result counts as failed
            out = json.loads(line[len("RESULT "):])
            out["process_wall_s"] = wall
            return out
    tail = "\n".join((p.stdout + "\n" + stderr).strip().splitlines()[-25:])
    raise RuntimeError(f"worker failed (rc={p.returncode}): {python} {' '.join(map(str, args))}\n{tail}")


def run_worker(python: str | Path, args: list, *, timeout: float = 900, env: dict | None = None) -> dict:
    """Run `_step_worker.py` (or any script printing `RESULT {json}`) in a fresh process; return the dict."""
    return run_script(python, args, env=worker_env(env), timeout=timeout)


def worker_env(extra: dict | None = None) -> dict:
    e = dict(os.environ)
    e.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0",
              "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"})
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    if extra:
        e.update(extra)
    return e


class ForkServer:
    """`_step_worker.py --serve IMPL` in one venv: imports once, forks a fresh child per measurement.

    Saves the ~5 CPU-seconds of importing torch/diffusers/peft/transformers(/trl) per measurement on a 2-core
    machine, while each measurement still runs in its own new process.
    """

    def __init__(self, python: str | Path, impl: str, log: Path | None = None):
        self.log = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115  (lives as long as the server)
        self.p = subprocess.Popen([str(python), str(BENCH / "_step_worker.py"), "--serve", impl],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                  env=worker_env(), cwd=str(ROOT), bufsize=1)
        self._wait_for("READY")

    def _wait_for(self, prefix: str) -> str:
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"fork server exited (rc={self.p.poll()}); see its log")
            if line.startswith(prefix):
                return line

    def run(self, args: list[str]) -> dict:
        t0 = time.perf_counter()
        self.p.stdin.write(json.dumps([str(a) for a in args]) + "\n")
        self.p.stdin.flush()
        result = failed = None
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"fork server exited (rc={self.p.poll()})")
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
            elif line.startswith("FAILED "):
                failed = json.loads(line[len("FAILED "):])
            elif line.startswith("DONE "):
                break
        if result is None:
            raise RuntimeError(f"measurement failed: {' '.join(map(str, args))}\n{failed or line}")
        result["process_wall_s"] = time.perf_counter() - t0
        return result

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.stdin.close()
            self.p.wait(timeout=60)


def ensure_trl_venv(path: Path | None = None, log=print) -> Path:
    """Create (once) a separate venv with TRL 0.23.1; returns its python. Never touches the project venv."""
    path = Path(path or default_trl_venv())
    py = path / "bin" / "python"
    if py.exists():
        chk = subprocess.run([str(py), "-c", "import trl, diffusers, peft, torch; print(trl.__version__)"],
                             capture_output=True, text=True)
        if chk.returncode == 0 and chk.stdout.strip() == "0.23.1":
            return py
    log(f"installing TRL 0.23.1 into {path} ({TRL_TORCH_SPEC} first, then {' '.join(TRL_PACKAGES)}) ...")
    path.parent.mkdir(parents=True, exist_ok=True)
    base = os.environ.get("REWARDTUNE_TRL_BASE_PYTHON", sys.executable)
    subprocess.run([base, "-m", "venv", str(path)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + [TRL_TORCH_SPEC], check=True)
    subprocess.run(pip + TRL_PACKAGES, check=True)
    return py


# ------------------------------------------------------------------------------------------ machine/versions
def _versions_of(python: str | Path) -> dict:
    code = ("import json, importlib.metadata as m\n"
            "out = {}\n"
            "for n in ['torch', 'diffusers', 'transformers', 'peft', 'accelerate', 'trl']:\n"
            "    try: out[n] = m.version(n)\n"
            "    except Exception: pass\n"
            "import sys; out['python'] = sys.version.split()[0]\n"
            "print(json.dumps(out))")
    p = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except Exception:
        return {}


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except Exception:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    try:
        # "-dirty" when the measured code is not the commit's (uncommitted changes to tracked files)
        rev = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                             text=True, cwd=str(ROOT)).stdout.strip()
    except OSError:
        rev = ""
    return {"cpu": cpu, "cores": cores, "memory": mem, "os": platform.platform(), "git": rev,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def versions_block(envs: dict[str, str | Path]) -> str:
    lines = []
    for label, py in envs.items():
        v = _versions_of(py)
        lines.append(f"- {label} (`{py}`): " + ", ".join(f"{k} {v[k]}" for k in sorted(v)))
    return "\n".join(lines)


def machine_block(extra: dict | None = None) -> str:
    m = machine_info()
    if extra:
        m.update(extra)
    return "\n".join(f"- {k}: {v}" for k, v in m.items() if v not in ("", None))


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
