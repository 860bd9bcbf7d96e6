"""Every GPU measurement of the project in one command, sized for 8 minutes of a lent H100/H200.

    bash benchmarks/gpu_check.sh                 # on the GPU machine (installs the carried wheels, then this)
    python benchmarks/gpu_check.py --dry-run     # anywhere: the same code paths on tiny models, CPU, seconds

In order, each stage within what is left of `--budget-s`:
1. the GPU tests (`pytest -m gpu`): the engine on CUDA (bitwise resume under `train.deterministic`, with the
   step's numbers read every step and, with `train.fused_adam`, every 3 steps; bf16/fp16; a fused step that never
   waits for the device under CUDA's sync debug mode) and the rewards on CUDA;
2. `gpu_scale.py`: the SD-1.5-architecture cells against TRL 0.23.1 at equal settings (512 px, 50 DDIM steps,
   CFG 7.5, LoRA r=4, bf16, PickScore-architecture reward with random weights): K=1 and randomized truncation, the
   lever sweep (larger batches, fused AdamW, no host syncs, channels_last, SDPA kernels, compiled / CUDA-graph
   prefix), the largest batch that fits.
3. (`--stages families`, a second call: building FLUX-size models takes minutes) `gpu_families.py`: SDXL-,
   SD3.5-Medium- and FLUX.1-dev-architecture cells with random weights (samples/s, peak memory, MFU).
Writes `gpu_check.json` and `gpu_check.md` (what ran, what passed, where the numbers are) and `gpu_scale.{md,json}`
into `--out-dir` (default benchmarks/results/), and copies them to $OUT when that is set (the device tool's
folder that comes back).

`--dry-run` runs the same stages on a CPU: the GPU tests (all skipped without CUDA), and gpu_scale.py at its
`dry` size (the reduced SD-1.5 topology, 64 px, 2 steps, fp32), rewardtune cells only, the compile levers traced
with the `eager` backend. tests/test_gpu_check.py runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, ROOT, machine_block, worker_env, write_text  # noqa: E402

GPU_TESTS = ["tests/engine/test_engine_gpu.py", "tests/rewards/test_gpu.py"]
RESUME_TEST = "test_deterministic_resume_on_cuda_is_bitwise_equal"


def run_tests(out_dir: Path, timeout: float) -> dict:
    """`pytest -m gpu` over the GPU test files; per-test outcomes from its JUnit XML."""
    xml = out_dir / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", f"--junitxml={xml}",
           *GPU_TESTS]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=worker_env())
        rc, tail = p.returncode, (p.stdout + p.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        rc, tail = -1, f"timed out after {timeout:.0f} s\n" + str(e.stdout or "")[-2000:]
    res: dict = {"command": " ".join(cmd[1:]), "rc": rc, "wall_s": round(time.time() - t0, 1), "tail": tail,
                 "tests": {}}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
            kids = {c.tag for c in case}
            res["tests"][name] = ("failed" if kids & {"failure", "error"} else
                                  "skipped" if "skipped" in kids else "passed")
        xml.unlink()
    counts: dict[str, int] = {}
    for outcome in res["tests"].values():
        counts[outcome] = counts.get(outcome, 0) + 1
    res["counts"] = counts
    resume = {n: o for n, o in res["tests"].items() if RESUME_TEST in n}
    res["bitwise_resume"] = resume or "not run"
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models: the same code paths in seconds")
    ap.add_argument("--budget-s", type=float, default=450, help="all stages together (the device lends 8 minutes)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--batch", type=int, default=0, help="throughput batch of gpu_scale.py (default: its own)")
    ap.add_argument("--max-batch", type=int, default=16, help="largest batch the fit search tries (TRL and "
                                                             "rewardtune's plain step; the lever sweep goes further)")
    ap.add_argument("--no-trl", action="store_true", help="rewardtune cells only")
    ap.add_argument("--stages", default="tests,scale", help="comma-separated, of tests, scale, families "
                                                            "(default tests,scale: the 8-minute check)")
    a = ap.parse_args(argv)
    stages = set(a.stages.split(","))
    if stages - {"tests", "scale", "families"}:
        ap.error(f"--stages: unknown stage(s) {', '.join(sorted(stages - {'tests', 'scale', 'families'}))}; "
                 "the stages are tests, scale, families")
    t_start = time.time()
    out_dir: Path = a.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not a.dry_run:
        print("gpu_check: no CUDA device here; run it on a GPU machine, or pass --dry-run", file=sys.stderr)
        return 2
    left = lambda: a.budget_s - (time.time() - t_start)  # noqa: E731
    report: dict = {"dry_run": a.dry_run, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                    "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    del torch

    # 1. the GPU tests: a few tiny models, about a minute
    if "tests" in stages:
        report["tests"] = run_tests(out_dir, timeout=max(30.0, min(150.0, left() / 3)))
        print(f"[{time.time() - t_start:5.0f}s] GPU tests: {report['tests']['counts']} (rc {report['tests']['rc']})",
              flush=True)

    # 2. gpu_scale.py with what is left (it stops starting new measurements at its own budget)
    if "scale" in stages:
        cmd = ["--out", str(out_dir / "gpu_scale.md")]
        if a.dry_run:
            cmd += ["--size", "dry", "--repeats", "1", "--warmup", "0", "--steps", "1", "--max-batch", "4",
                    "--flops", "0", "--no-trl", "--levers", "base,nosync,cl,flash,nosync+cl+b4,compile",
                    "--compile-backend", "eager"]
        else:
            budget = max(60.0, left() - 45)  # the last measurement may run past gpu_scale's budget: leave room
            # model FLOPs: the architecture's constants from the H100 run (counting costs two processes); the lever
            # sweep first (its base is rewardtune's K=1 cell), leaving 90 s for TRL's K=1 cell
            cmd += ["--repeats", "1", "--warmup", "1", "--steps", "1", "--max-batch", str(a.max_batch), "--flops",
                    "0", "--reserve-s", "90", "--budget-s", f"{budget:.0f}"]
            if a.no_trl:
                cmd.append("--no-trl")
        if a.batch:
            cmd += ["--batch", str(a.batch)]
        report["gpu_scale"] = run_script("gpu_scale.py", cmd, out_dir / "gpu_scale.md")
        data = report["gpu_scale"].pop("data", None)
        if data:
            report["gpu_scale"]["rows"] = data.get("rows")
            report["gpu_scale"]["levers"] = {k: {f: v.get(f) for f in ("ok", "step_s", "cuda_peak_gib", "error")}
                                             for k, v in data.get("results", {}).get("levers", {}).items()}
        print(f"[{time.time() - t_start:5.0f}s] gpu_scale.py rc {report['gpu_scale']['rc']}", flush=True)

    # 3. the newer families (opt-in)
    if "families" in stages:
        cmd = ["--out", str(out_dir / "gpu_families.md"), "--budget-s", f"{max(60.0, left() - 30):.0f}"]
        if a.dry_run:
            cmd += ["--size", "dry", "--warmup", "0", "--steps", "1"]
        report["gpu_families"] = run_script("gpu_families.py", cmd, out_dir / "gpu_families.md")
        data = report["gpu_families"].pop("data", None)
        if data:
            report["gpu_families"]["cells"] = {f: {k: r.get(k) for k in ("ok", "step_s", "cuda_peak_gib",
                                                                           "flops_per_sample", "error")}
                                               for f, r in data.get("results", {}).items()}
        print(f"[{time.time() - t_start:5.0f}s] gpu_families.py rc {report['gpu_families']['rc']}", flush=True)
    report["elapsed_s"] = round(time.time() - t_start, 1)

    write_text(out_dir / "gpu_check.json", json.dumps(report, indent=1, default=str) + "\n")
    lines = [f"# GPU check ({'DRY RUN on a CPU: nothing here is a GPU measurement' if a.dry_run else report['device']})",
             "", f"Produced by `{'python benchmarks/gpu_check.py --dry-run' if a.dry_run else 'bash benchmarks/gpu_check.sh'}"
             f"{'' if a.stages == 'tests,scale' else ' --stages ' + a.stages}`"
             f" on {report['started']}, {report['elapsed_s']:.0f} s, torch {report['torch']}.", "",
             "## Machine", machine_block({"gpu": report["device"]}), ""]
    ok = True
    if "tests" in report:
        t = report["tests"]
        lines += ["## GPU tests", "", f"`{t['command']}`: {t['counts']} in {t['wall_s']} s (rc {t['rc']}).", "",
                  f"- bitwise resume under train.deterministic: {t['bitwise_resume']}"]
        lines += [f"- {n}: {o}" for n, o in t["tests"].items() if RESUME_TEST not in n]
        lines.append("")
        ok = ok and t["rc"] in (0, 5)
    for key, title in (("gpu_scale", "Throughput, memory, MFU, levers"), ("gpu_families", "SDXL, SD3.5, FLUX")):
        if key in report:
            r = report[key]
            lines += [f"## {title}", "", f"`{r['command']}` (rc {r['rc']}, {r['wall_s']} s): see "
                      f"{', '.join(Path(x).name for x in r['results']) or 'no results file'}.", ""]
            ok = ok and r["rc"] == 0 and not re.search(r"Traceback", r["tail"])
    write_text(out_dir / "gpu_check.md", "\n".join(lines) + "\n")
    dest = os.environ.get("OUT")
    if dest:
        for name in ("gpu_check.json", "gpu_check.md", "gpu_scale.md", "gpu_scale.json", "gpu_families.md",
                     "gpu_families.json"):
            if (out_dir / name).exists():
                shutil.copy(out_dir / name, Path(dest) / name)
    print(f"gpu_check: wrote {out_dir / 'gpu_check.md'} ({'ok' if ok else 'with failures: see it'})")
    return 0 if ok else 1


def run_script(script: str, args: list[str], md: Path) -> dict:
    """Run a benchmark script of this folder; what it returned, wrote and said (its JSON results as `data`)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *args]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=worker_env())
    files = [x for x in (md, md.with_suffix(".json")) if x.exists() and x.stat().st_mtime >= t0]  # not a stale one
    out = {"command": " ".join([script, *args]), "rc": p.returncode, "wall_s": round(time.time() - t0, 1),
           "tail": (p.stdout + p.stderr)[-3000:],
           "results": [str(x.relative_to(ROOT)) if x.is_relative_to(ROOT) else str(x) for x in files]}
    if md.with_suffix(".json") in files:
        out["data"] = json.loads(md.with_suffix(".json").read_text())
    return out


if __name__ == "__main__":
    sys.exit(main())
