"""rewardtune's training step vs TRL 0.23.1's AlignPropTrainer, side by side on the tiny SD-1.x twin (CPU).

    python benchmarks/train_step_vs_trl.py                  # grid + scaling, writes benchmarks/results/
    python benchmarks/train_step_vs_trl.py --mode grid      # K in {1, all} x latent {8, 16} x checkpointing on/off
    python benchmarks/train_step_vs_trl.py --mode scaling   # K=1, sampling steps T in {10, 25, 50}
    python benchmarks/train_step_vs_trl.py --quick          # one repeat, fewer steps (smoke run, not for reporting)

Both sides get the same pipeline directory (`zoo:sd1` / `zoo:sd1.latent16`, saved with `save_pretrained`), the
same reward object (rewardtune's PickScore code on the tiny CLIP twin), batch, sampling steps T, CFG, eta, K,
LoRA (r=4, alpha 4, gaussian init, to_q/to_k/to_v/to_out.0: TRL's fixed choice), AdamW settings and grad clipping.
TRL runs in its own venv (`$REWARDTUNE_TRL_VENV`, default /work/refvenvs/trl), which this script creates on first
use: `torch==2.13.0` first, then `trl==0.23.1 diffusers peft ftfy`.

Every measurement is a fresh process (so peak RSS of one cell never leaks into another); rewardtune and TRL runs
alternate, cell by cell, and which goes first alternates between repeats, so machine noise hits both. Reported:
min/median/max over repeats of each process's median step time, of its peak RSS during the steps, and of the
paired ratio TRL/rewardtune within a repeat.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the repository root (rewardtune, uninstalled)
from _harness import (  # noqa: E402
    RESULTS,
    ROOT,
    ForkServer,
    ensure_trl_venv,
    fmt,
    machine_block,
    ratio_spread,
    run_worker,
    spread,
    versions_block,
    write_text,
)

WORKER = ROOT / "benchmarks" / "_step_worker.py"
SETTINGS = dict(batch=2, cfg=5.0, eta=0.0, rank=4, lr=1e-3)


def materialize(ref: str) -> str:
    from rewardtune.zoo import materialize as m

    return str(m(ref))


def cells_for(mode: str) -> list[dict]:
    cells = []
    if mode in ("grid", "all"):
        for latent in (8, 16):
            for k in ("1", "all"):
                for ckpt in (1, 0):
                    cells.append(dict(group="grid", latent=latent, k=k, ckpt=ckpt, T=10))
    if mode in ("scaling", "all"):
        for t in (10, 25, 50):
            if mode == "all" and t == 10:
                continue  # the grid's (latent 8, K=1, ckpt on, T=10) cell serves
            cells.append(dict(group="scaling", latent=8, k="1", ckpt=1, T=t))
    return cells


def worker_args(impl: str, cell: dict, pipes: dict, clip_dir: str, a) -> list[str]:
    s = SETTINGS
    return [WORKER, "--impl", impl, "--pipe-dir", pipes[cell["latent"]], "--reward", "tiny", "--reward-dir", clip_dir,
            "--resolution", str(cell["latent"] * 2), "--steps-T", str(cell["T"]), "--k", cell["k"],
            "--ckpt", str(cell["ckpt"]), "--batch", str(s["batch"]), "--cfg", str(s["cfg"]), "--eta", str(s["eta"]),
            "--rank", str(s["rank"]), "--lr", str(s["lr"]), "--warmup", str(a.warmup), "--steps", str(a.steps),
            "--threads", str(a.threads), "--tensor-mem", "1"]


def key(cell: dict) -> str:
    return f"{cell['group']}|L{cell['latent']}|K{cell['k']}|ckpt{cell['ckpt']}|T{cell['T']}"


def measure(a) -> dict:
    trl_py = ensure_trl_venv(a.trl_venv)
    pipes = {8: materialize("zoo:sd1"), 16: materialize("zoo:sd1.latent16")}
    clip_dir = materialize("zoo:clip")
    cells = cells_for(a.mode)
    raw: dict[str, dict[str, list[dict]]] = {key(c): {"rewardtune": [], "trl": [], "cell": c} for c in cells}
    rng = random.Random(0)
    t_start = time.time()
    load_start = os.getloadavg()
    servers = {}
    if not a.no_fork_server:
        log = Path(tempfile.gettempdir()) / "rewardtune-bench-workers.log"  # workers' stderr (TRL's tqdm etc.)
        servers = {"rewardtune": ForkServer(sys.executable, "rewardtune", log), "trl": ForkServer(trl_py, "trl", log)}
    for r in range(a.repeats):
        order = list(cells)
        rng.shuffle(order)
        for i, cell in enumerate(order):
            impls = ["rewardtune", "trl"] if (r + i) % 2 == 0 else ["trl", "rewardtune"]
            for impl in impls:
                args = worker_args(impl, cell, pipes, clip_dir, a)
                if servers:
                    res = servers[impl].run(args[1:])
                else:
                    res = run_worker(sys.executable if impl == "rewardtune" else trl_py, args)
                raw[key(cell)][impl].append(res)
                med = sorted(res["step_s"])[len(res["step_s"]) // 2]
                print(f"[{time.time() - t_start:6.0f}s] rep {r + 1}/{a.repeats} {key(cell):32s} {impl:10s} "
                      f"step {med:.3f}s  tensor peak {res['tensor_peak_mb']:.1f} MB  peak RSS "
                      f"{res['rss_peak_mb']:.0f} MB (anon growth {res['anon_growth_mb']:.1f})", flush=True)
    for srv in servers.values():
        srv.close()
    return {"raw": raw, "trl_python": str(trl_py), "elapsed_s": time.time() - t_start, "settings": SETTINGS,
            "load_avg": {"start": load_start, "end": os.getloadavg()},
            "repeats": a.repeats, "warmup": a.warmup, "steps": a.steps, "threads": a.threads}


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def summarize(data: dict) -> list[dict]:
    rows = []
    for k, d in data["raw"].items():
        rt, tr = d["rewardtune"], d["trl"]
        n = min(len(rt), len(tr))
        rt_t = [_median(x["step_s"]) for x in rt[:n]]
        tr_t = [_median(x["step_s"]) for x in tr[:n]]
        rt_m = [x["rss_peak_mb"] for x in rt[:n]]
        tr_m = [x["rss_peak_mb"] for x in tr[:n]]
        rt_d = [x["rss_peak_mb"] - x["rss_before_mb"] for x in rt[:n]]
        tr_d = [x["rss_peak_mb"] - x["rss_before_mb"] for x in tr[:n]]
        rt_a = [x.get("anon_growth_mb", float("nan")) for x in rt[:n]]
        tr_a = [x.get("anon_growth_mb", float("nan")) for x in tr[:n]]
        rt_tm = [x["tensor_peak_mb"] for x in rt[:n]]
        tr_tm = [x["tensor_peak_mb"] for x in tr[:n]]
        rows.append(dict(key=k, cell=d["cell"], rt_time=spread(rt_t), trl_time=spread(tr_t),
                         rt_tmem=spread(rt_tm), trl_tmem=spread(tr_tm), tmem_ratio=ratio_spread(rt_tm, tr_tm),
                         speedup=ratio_spread(tr_t, rt_t), speedup_min=(min(tr_t) / min(rt_t)) if n else float("nan"), rt_mem=spread(rt_m), trl_mem=spread(tr_m),
                         mem_ratio=ratio_spread(rt_m, tr_m), rt_dmem=spread(rt_d), trl_dmem=spread(tr_d),
                         rt_anon=spread(rt_a), trl_anon=spread(tr_a), anon_ratio=ratio_spread(rt_a, tr_a)))
    return rows


def report(data: dict, rows: list[dict], out: Path) -> str:
    s = data["settings"]
    lines = [
        "# Training step: rewardtune vs TRL 0.23.1 AlignPropTrainer (CPU, tiny SD-1.x twin)",
        "",
        "Produced by `python benchmarks/train_step_vs_trl.py` (see benchmarks/README.md). Each number is "
        "**median (min–max)** over repeats; each repeat is one fresh process per implementation and cell, "
        "rewardtune and TRL interleaved. A process's step time is the median of its timed steps "
        f"({data['steps']} after {data['warmup']} warm-up). Speed-up = TRL time / rewardtune time, paired within a "
        "repeat; min/min = TRL's fastest repeat / rewardtune's fastest (the least disturbed by other jobs); memory "
        "ratios = rewardtune / TRL, paired likewise.",
        "",
        "## Settings (identical on both sides)",
        f"- batch {s['batch']}, DDIM, CFG {s['cfg']} (rewardtune: one batched UNet call on [uncond; cond]; TRL: the "
        f"same), eta {s['eta']}, LoRA r={s['rank']} alpha={s['rank']} on to_q/to_k/to_v/to_out.0, AdamW lr {s['lr']} "
        "betas (0.9, 0.999) wd 1e-4, grad-norm clip 1.0, fp32.",
        "- reward: rewardtune's `PickScore` code (scaled CLIP cosine) on the tiny CLIP twin (`zoo:clip`, 32 px), the "
        "same Python object type on both sides; pipelines `zoo:sd1` (latent 8, 16 px images) and `zoo:sd1.latent16` "
        "(latent 16, 32 px), loaded from the same saved directories.",
        "- K = number of final DDIM steps whose ε carries a graph. TRL: `truncated_backprop_rand=False`, "
        "`truncated_backprop_timestep = T - K`. rewardtune: `alignprop` with `k=K` (`k=None` for all).",
        "- gradient checkpointing: rewardtune `use_checkpoint` (differentiable UNet steps and the VAE decode); TRL has "
        "no config switch, so the benchmark passes `gradient_checkpoint=` to its `rgb_with_grad` (TRL's default is "
        "on, for every UNet call including the detached ones).",
        f"- torch threads per process: {data['threads'] or 'default'}; repeats: {data['repeats']}; whole run "
        f"{data['elapsed_s'] / 60:.1f} min; load average (1/5/15 min) "
        + " at start, ".join("/".join(f"{x:.1f}" for x in data["load_avg"][w]) for w in ("start", "end"))
        + " at end (other engineers' jobs share this machine).",
        "",
        "## Machine and versions",
        machine_block(),
        versions_block({"rewardtune venv": sys.executable, "TRL venv": data["trl_python"]}),
        "",
        "Three memory measures. **Step tensor peak**: one extra profiled step per process "
        "(`torch.profiler`, `profile_memory=True`) gives the peak of live tensor bytes the step allocated above what "
        "was live when it began: activations, gradients and temporaries, the CPU analogue of "
        "`torch.cuda.max_memory_allocated` over a step. **Peak RSS**: the process's VmHWM, reset (clear_refs) right "
        "before the first step, so weights, libraries and imports are included. Part of it is file-backed: pages of "
        "the mapped shared libraries (libtorch alone is hundreds of MB), whose resident count depends on the page "
        "cache and on which venv's copy of the same wheels is mapped, not on what the process allocates (the same "
        "rewardtune step measured 485 MB in one venv and 566 MB in a fresh copy of it, with the same anonymous "
        "memory). **Anonymous RSS growth**: VmHWM less the file-backed and shmem pages mapped after the steps, less "
        "the anonymous RSS before the first step: what the steps added to the heap (tensors, allocator caches, "
        "Python objects). The RSS ratio below is of this growth.",
        "",
    ]
    grid = [r for r in rows if r["cell"]["group"] == "grid"]
    if grid:
        lines += ["## Grid (T = 10 sampling steps)", "",
                  "| latent | K | ckpt | rewardtune s/step | TRL s/step | speed-up (TRL/rt) | min/min | rewardtune step tensor "
                  "peak MB | TRL step tensor peak MB | ratio (rt/TRL) | rewardtune peak RSS MB | TRL peak RSS MB | "
                  "rewardtune anon RSS growth MB | TRL anon RSS growth MB | ratio (rt/TRL) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in grid:
            c = r["cell"]
            lines.append(f"| {c['latent']} | {c['k']} | {'on' if c['ckpt'] else 'off'} | {fmt(r['rt_time'])} | "
                         f"{fmt(r['trl_time'])} | **{fmt(r['speedup'])}** | {r['speedup_min']:.2f} | {fmt(r['rt_tmem'])} | "
                         f"{fmt(r['trl_tmem'])} | **{fmt(r['tmem_ratio'])}** | {fmt(r['rt_mem'], 4)} | "
                         f"{fmt(r['trl_mem'], 4)} | {fmt(r['rt_anon'])} | {fmt(r['trl_anon'])} | "
                         f"**{fmt(r['anon_ratio'])}** |")
        lines.append("")
    scal = sorted([r for r in rows if r["cell"]["group"] == "scaling" or
                   (r["cell"]["latent"] == 8 and r["cell"]["k"] == "1" and r["cell"]["ckpt"] == 1)],
                  key=lambda r: r["cell"]["T"])
    if any(r["cell"]["group"] == "scaling" for r in scal):
        lines += ["## Scaling with sampling steps T (latent 8, K = 1, checkpointing on)", "",
                  "| T | rewardtune s/step | TRL s/step | speed-up | min/min | rewardtune step tensor peak MB | TRL step "
                  "tensor peak MB | rewardtune peak RSS MB | TRL peak RSS MB | rewardtune anon RSS growth MB | TRL anon "
                  "RSS growth MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in scal:
            c = r["cell"]
            lines.append(f"| {c['T']} | {fmt(r['rt_time'])} | {fmt(r['trl_time'])} | **{fmt(r['speedup'])}** | "
                         f"{r['speedup_min']:.2f} | "
                         f"{fmt(r['rt_tmem'])} | {fmt(r['trl_tmem'])} | {fmt(r['rt_mem'], 4)} | {fmt(r['trl_mem'], 4)} | "
                         f"{fmt(r['rt_anon'])} | {fmt(r['trl_anon'])} |")
        lines.append("")
    text = "\n".join(lines)
    write_text(out, text + "\n")
    write_text(out.with_suffix(".json"), json.dumps({"data": data, "rows": rows}, indent=1, default=str))
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["all", "grid", "scaling"], default="all")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per measurement (1: a shared 2-core machine makes 2-thread OpenMP collapse)")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 1 timed step (smoke run; not for reporting)")
    ap.add_argument("--trl-venv", type=Path, default=None)
    ap.add_argument("--no-fork-server", action="store_true",
                    help="spawn a new interpreter per measurement instead of forking a pre-imported one")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.quick:
        a.repeats, a.steps = 1, 1
    out = a.out or RESULTS / ("train_step_vs_trl.md" if a.mode == "all" else f"train_step_vs_trl_{a.mode}.md")
    data = measure(a)
    rows = summarize(data)
    print(report(data, rows, out))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
