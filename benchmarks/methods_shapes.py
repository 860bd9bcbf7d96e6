"""Every method on the shapes world, on the same budget and seeds: the judge's accuracy and the reward against
optimizer steps and against training CPU-seconds, with the spread over seeds, and the steps each needs to reach a
target accuracy. Plus two measurements the curves alone
do not answer: the variance of the gradient estimate (does DRaFT-LV lower it?) and what ReFL's pretraining loss
changes.

    python benchmarks/methods_shapes.py                          # all methods, 3 seeds -> results/methods_shapes.*
    python benchmarks/methods_shapes.py --methods draft_k refl --seeds 0 --steps 20 --out /tmp/m   # smoke run
    python benchmarks/methods_shapes.py --only-plot              # plot and report again from the .json
    python benchmarks/methods_shapes.py --only-gradients         # re-run only the gradient pass (5 minutes)
    python benchmarks/methods_shapes.py --methods ranked --merge  # re-run some methods; the other rows are kept

The report's hand-written "## What is seen" section, where the results' .md has one, is kept when it is written
again: update it by hand when the numbers it discusses change.

Each run is `specs/demo.yaml` with the method swapped (every method trains the same LoRA, rank 8, on the same
prompts, reward, sampling settings and eval seeds; the eval is the 64-image held-out set). Runs are separate
processes on one thread each, two at a time on a 2-core machine; finished runs in --work are reused. Nothing here is a test: the numbers are what
they are, and the report says where a method loses.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, ROOT, machine_info, run_script, worker_env  # noqa: E402

# name -> overrides of specs/demo.yaml (a method block, and anything else the method needs)
METHODS: dict[str, list[str]] = {
    "draft_k (K=1)": ["method={name: draft_k, k: 1}"],
    "draft_k (K=1) + KL 0.01": ["method={name: draft_k, k: 1, kl_coeff: 0.01}"],
    "draft_k (K=1), lr x5": ["method={name: draft_k, k: 1}", "train.lr=5e-3"],
    "alignprop (K~U[1,10])": ["method={name: alignprop, k_range: [1, 10]}"],
    "draft_lv (n=2)": ["method={name: draft_lv, n: 2}"],
    "refl": ["method={name: refl, stop_range: [15, 19], loss: neg}"],
    "refl + pretrain": ["method={name: refl, stop_range: [15, 19], loss: neg, "
                        "pretrain: {data: PRETRAIN, batch_size: 8}}"],
    "ranked (4 -> 1)": ["method={name: ranked, samples_per_prompt: 4, top_m: 1, prompts_per_round: 8, "
                        "steps_per_round: 5}"],
    "ranked dpo (beta 500)": ["method={name: ranked, samples_per_prompt: 4, top_m: 1, prompts_per_round: 8, "
                              "steps_per_round: 5, loss: dpo, beta: 500}"],
}
SHORT = {k: k.split(" ")[0] for k in METHODS}
#: a file-name-safe id per configuration: its run folders are `<slug>-s<seed>` in the work folder
SLUG = {"draft_k (K=1)": "draft_k", "draft_k (K=1) + KL 0.01": "draft_k-kl", "draft_k (K=1), lr x5": "draft_k-lr5",
        "alignprop (K~U[1,10])": "alignprop-rand", "draft_lv (n=2)": "draft_lv", "refl": "refl",
        "refl + pretrain": "refl-pretrain", "ranked (4 -> 1)": "ranked",
        "ranked dpo (beta 500)": "ranked-dpo"}


def pretrain_jsonl(folder: Path, n: int = 256, seed: int = 4242) -> Path:
    """World images and captions as ReFL's pretraining data (the data the base model was trained on)."""
    import numpy as np
    from PIL import Image

    from rewardtune.world import shapes as W

    folder.mkdir(parents=True, exist_ok=True)
    imgs, scenes = W.sample(n, seed)
    lines = []
    for i, (img, sc) in enumerate(zip(imgs, scenes, strict=True)):
        Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(folder / f"{i:04d}.png")
        lines.append(json.dumps({"image": f"{i:04d}.png", "caption": sc.caption}))
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------- worker
def worker(cfg: dict) -> dict:
    import torch

    import rewardtune

    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    res = rewardtune.run(str(ROOT / "specs" / "demo.yaml"), overrides=cfg["overrides"], output_dir=cfg["out"],
                         overwrite=True, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = result_from_run(Path(cfg["out"]), res.steps_done, wall, cpu)
    (Path(cfg["out"]) / "bench_result.json").write_text(json.dumps(out))
    return out


def result_from_run(folder: Path, steps: int, wall: float | None, cpu: float | None) -> dict:
    """A finished run's curve (every eval: the judge's accuracies and the reward) from its metrics.jsonl."""
    recs = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_s, curve = 0.0, []
    for r in recs:
        train_s += r.get("time/step_s", 0.0)
        if "eval/shapes-eval" in r:
            curve.append({"step": r["step"], "train_s": round(train_s, 2), "both": r["eval/shapes-eval"],
                          "colour": r["eval/shapes-eval/colour_ok"], "shape": r["eval/shapes-eval/shape_ok"],
                          "reward": r["eval/clip"]})
    return {"curve": curve, "wall_s": wall, "cpu_s": cpu, "train_s": train_s, "steps": steps,
            "mean_grad_norm": statistics.fmean(r["grad_norm"] for r in recs if r.get("grad_norm") is not None),
            "kl": [r["kl"] for r in recs if "kl" in r][-1:]}


# ------------------------------------------------------------------------------------------ gradient variance
def gradient_pass(chosen: dict[str, list[str]], pretrain: Path, draws: int = 16, seed: int = 0) -> dict:
    """Per configuration, on one fixed batch of 8 prompts at the base model, in this one process on one thread:
    - the CPU seconds of one training gradient (the method's whole loss: sampling chain, decode, reward, backward),
      the cost that the curves' time axis multiplies by the step count;
    - the variance of the gradient estimate over `draws` independent noise draws, relative to its mean:
      tr(Cov g) / ||E g||^2 (lower = less noisy), with a 95% jackknife interval over the draws, and its ratio to
      the first configuration's. Draw d seeds the same generator for every configuration, so the ratio is paired
      where the method's first use of it is the initial noise (the DRaFT-K variants, DRaFT-LV); AlignProp and ReFL
      first draw their truncation or stop step from it, so theirs start from other noise (the ratio's jackknife
      over draw pairs holds either way; pairing only narrows it).
    ranked is left out (its step trains on a round's kept images; its cost is in its runs' CPU time), and so is the
    variance of ReFL with pretraining (its steps alternate between two different losses)."""
    import torch

    from rewardtune.engine.build import build_trainer
    from rewardtune.engine.types import Batch
    from rewardtune.spec.load import load_spec

    torch.set_num_threads(1)
    configs = {k: v for k, v in chosen.items() if not k.startswith("ranked")}
    if "draft_lv (n=2)" in configs:
        configs["draft_lv (n=4)"] = ["method={name: draft_lv, n: 4}"]
    out = {}
    for name, ov in configs.items():
        spec = load_spec(ROOT / "specs" / "demo.yaml", overrides=[o.replace("PRETRAIN", str(pretrain)) for o in ov])
        with tempfile.TemporaryDirectory() as tmp:
            tr = build_trainer(spec, output_dir=tmp, progress=False)
            prompts = tr.train_prompts[:8]
            grads, cpu = [], []
            for d in range(draws):
                tr.opt.zero_grad(set_to_none=True)
                gen = torch.Generator().manual_seed(seed * 1000 + d)
                b = Batch(prompts, torch.arange(8), d, 0, gen, slice(0, 8), 8, tr.diff.device)
                c0 = time.process_time()
                tr.method.loss(tr.ctx, b).loss.backward()
                cpu.append(time.process_time() - c0)
                grads.append(torch.cat([p.grad.flatten() for p in tr.params]).clone())
            g = torch.stack(grads).double()
            out[name] = {"draws": draws, "cpu_s_per_step": statistics.median(cpu), "cpu_s_min": min(cpu),
                         "cpu_s_max": max(cpu)}
            if "pretrain" not in name:  # the draws' Gram matrix: every variance statistic below comes from it
                out[name]["gram"] = (g @ g.T).tolist()
            print(f"[gradient pass] {name}: {out[name]}", flush=True)
    return out


def relative_variance(gram, w):
    """tr(Cov g) / ||E g||^2 estimated from draws weighted by `w` (rows of 0/1, e.g. leave-one-out), through the
    draws' Gram matrix G: with n draws, mean m, ||m||^2 = w'Gw / n^2 and the sample variance
    s^2 = (sum_i w_i G_ii / n - ||m||^2) n / (n - 1); ||m||^2 overstates ||E g||^2 by s^2 / n, which is taken off."""
    n = w.sum(-1)
    mean_sq = ((w @ gram) * w).sum(-1) / n**2
    s2 = ((w * gram.diagonal()).sum(-1) / n - mean_sq) * n / (n - 1)
    return s2 / (mean_sq - s2 / n)


#: the 97.5% point of Student's t with n - 1 degrees of freedom, for n draws
T975 = {8: 2.365, 12: 2.201, 16: 2.131, 24: 2.069, 32: 2.040, 64: 1.998}


def variance_intervals(gram, base_gram) -> dict:
    """The relative variance of one configuration's draws and its ratio to the base configuration's (draw by draw),
    each with a 95% jackknife interval (leave one draw out; Student t with n - 1 degrees of freedom, on the log
    scale: both are positive ratios). `benchmarks/variance_intervals_check.py` measures how often such intervals
    cover a known answer. None where the noise is too large for ||E g||^2 to come out positive (not resolved)."""
    import torch

    n = len(gram)
    if n not in T975:
        raise ValueError(f"{n} draws: the t quantile is tabled for {sorted(T975)} draws")
    t975 = T975[n]
    everything, loo = torch.ones(1, n, dtype=torch.float64), 1 - torch.eye(n, dtype=torch.float64)

    def interval(full: float, parts) -> list[float] | None:
        if full <= 0 or bool((parts <= 0).any()):  # noise so large that ||E g||^2 is not resolved: no interval
            return None
        logs = parts.log()
        se = float(((n - 1) / n * (logs - logs.mean()).pow(2).sum()).sqrt())
        return [math.exp(math.log(full) - t975 * se), math.exp(math.log(full) + t975 * se)]

    gram, base_gram = torch.as_tensor(gram, dtype=torch.float64), torch.as_tensor(base_gram, dtype=torch.float64)
    rv, rv_loo = float(relative_variance(gram, everything)[0]), relative_variance(gram, loo)
    base, base_loo = float(relative_variance(base_gram, everything)[0]), relative_variance(base_gram, loo)
    if rv <= 0:
        return {"relative_variance": None, "vs_base": None}
    out = {"relative_variance": rv, "relative_variance_ci95": interval(rv, rv_loo), "vs_base": None}
    if base > 0:
        out.update(vs_base=rv / base, vs_base_ci95=interval(rv / base, rv_loo / base_loo))
    return out


# ------------------------------------------------------------------------------------------------- reporting
#: the both-correct accuracy a method must reach for the "steps to target" column
TARGET = 0.70


def cpu_per_step(name: str, data: dict) -> float | None:
    """CPU seconds of one training step: from the gradient pass, else (ranked) its runs' CPU time per step."""
    g = data.get("gradients", {}).get(name)
    if g:
        return g["cpu_s_per_step"]
    cpus = [r["cpu_s"] / r["steps"] for r in data["runs"][name] if r.get("cpu_s")]
    return statistics.median(cpus) if cpus else None


def aggregate(data: dict) -> dict:
    out = {}
    for name, rs in data["runs"].items():
        steps = [p["step"] for p in rs[0]["curve"]]
        pts = []
        for i, st in enumerate(steps):
            row = {"step": st}
            for key in ("both", "colour", "shape", "reward"):
                xs = [r["curve"][i][key] for r in rs if i < len(r["curve"])]
                row[key] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}
            pts.append(row)
        to_target = [next((p["step"] for p in r["curve"] if p["both"] >= TARGET), None) for r in rs]
        out[name] = {"points": pts, "cpu_s_per_step": cpu_per_step(name, data), "steps_to_target": to_target}
    return out


def plot(agg: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharey="row")
    for ci, (name, a) in enumerate(agg.items()):
        colour = plt.cm.tab10(ci % 10)
        pts = a["points"]
        for row, key, label in ((0, "both", "judge: colour and shape right"), (1, "reward", "CLIP reward (cosine)")):
            med = [p[key]["median"] for p in pts]
            lo = [p[key]["min"] for p in pts]
            hi = [p[key]["max"] for p in pts]
            for col in (0, 1):
                if col == 1 and a["cpu_s_per_step"] is None:
                    continue
                xs = [p["step"] * (1 if col == 0 else a["cpu_s_per_step"]) for p in pts]
                ax = axes[row][col]
                ax.plot(xs, med, color=colour, label=name if (row, col) == (0, 0) else None, lw=1.8)
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.12)
                ax.set_xlabel("optimizer steps" if col == 0 else "training CPU-seconds (steps x CPU s per step)")
                ax.set_ylabel(label)
                ax.grid(alpha=0.3)
    for col in (0, 1):
        axes[0][col].axhline(TARGET, color="grey", ls=":", lw=1)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(agg: dict) -> str:
    lines = [f"| method | judge both | colour | shape | CLIP reward | steps to {TARGET:.0%} (per seed) | "
             "CPU s / step | CPU s to target (median) |", "|---" * 8 + "|"]

    def f(s: dict, pct: bool = True) -> str:
        k = 100 if pct else 1
        d = 0 if pct else 3
        return f"{s['median'] * k:.{d}f} ({s['min'] * k:.{d}f}–{s['max'] * k:.{d}f})"

    for name, a in agg.items():
        first, last = a["points"][0], a["points"][-1]
        tt = a["steps_to_target"]
        cps = a["cpu_s_per_step"]
        # a seed that never reached the target counts as never (not left out): the median is then over every seed
        med = statistics.median([math.inf if t is None else t for t in tt]) if tt else math.inf
        missed = sum(t is None for t in tt)
        to_cpu = "—" if math.isinf(med) or not cps else (
            f"{med * cps:.0f}" + (f" ({missed} of {len(tt)} seeds never)" if missed else ""))
        lines.append(f"| {name} | {f(first['both'])} → **{f(last['both'])}** | {f(last['colour'])} | "
                     f"{f(last['shape'])} | {f(first['reward'], False)} → {f(last['reward'], False)} | "
                     f"{', '.join('never' if t is None else str(t) for t in tt)} | "
                     f"{'—' if cps is None else f'{cps:.2f}'} | {to_cpu} |")
    return "\n".join(lines)


def run_jobs(chosen: dict[str, list[str]], seeds: list[int], steps: int, eval_every: int, work: Path,
             pre: Path, jobs: int) -> dict[str, list[dict]]:
    """Every (configuration, seed) as its own process, `jobs` at a time; a run whose folder in `work` already
    holds its result is not run again (so an interrupted benchmark resumes where it stopped)."""
    todo = []
    for name, ov in chosen.items():
        for seed in seeds:
            ov2 = [o.replace("PRETRAIN", str(pre)) for o in ov] + [
                f"train.steps={steps}", f"train.seed={seed}", f"logging.images_every={eval_every}",
                f"train.checkpoint_every={steps}"]
            todo.append((name, seed, {"overrides": ov2, "out": str(work / f"{SLUG[name]}-s{seed}")}))

    def go(job):
        name, seed, cfg = job
        cached = Path(cfg["out"]) / "bench_result.json"
        if cached.exists():
            return name, seed, json.loads(cached.read_text())
        t0 = time.perf_counter()
        r = run_script(sys.executable, [__file__, "--worker", json.dumps(cfg)], env=worker_env())
        print(f"[{time.perf_counter() - t0:6.0f}s] {name} seed {seed}: both "
              f"{r['curve'][0]['both']:.3f} -> {r['curve'][-1]['both']:.3f}, reward "
              f"{r['curve'][0]['reward']:.3f} -> {r['curve'][-1]['reward']:.3f}", flush=True)
        return name, seed, r

    runs: dict[str, list[dict]] = {k: [] for k in chosen}
    with ThreadPoolExecutor(jobs) as ex:
        for name, seed, r in ex.map(go, todo):
            runs[name].append({"seed": seed, **r})
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="*", default=None, help="method names (first word) or full labels")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "methods_shapes")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "rewardtune-methods-shapes",
                    help="run folders; finished runs found here are reused")
    ap.add_argument("--no-gradients", action="store_true", help="skip the gradient cost and variance pass")
    ap.add_argument("--only-gradients", action="store_true",
                    help="re-run only the gradient pass, into the runs already in --out's .json")
    ap.add_argument("--only-plot", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="with --methods: replace only their runs (and gradient rows) in --out's .json, keep the rest")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(json.loads(a.worker))), flush=True)
        return
    a.out, a.work = a.out.resolve(), a.work.resolve()  # the workers run from the checkout root
    jpath = a.out.with_suffix(".json")
    if a.only_plot:
        data = json.loads(jpath.read_text())
    elif a.only_gradients:
        data = json.loads(jpath.read_text())
        chosen = {k: v for k, v in METHODS.items() if k in data["runs"]}
        data["gradients"] = gradient_pass(chosen, pretrain_jsonl(a.work / "pretrain"))
        data["gradients_machine"] = machine_info()
        jpath.write_text(json.dumps(data, indent=1))
    else:
        chosen = {k: v for k, v in METHODS.items()
                  if a.methods is None or k in a.methods or SHORT[k] in a.methods}
        pre = pretrain_jsonl(a.work / "pretrain")
        runs = run_jobs(chosen, a.seeds, a.steps, a.eval_every, a.work, pre, a.jobs)
        if a.merge:
            data = json.loads(jpath.read_text())
            if (data["steps"], data["seeds"], data["eval_every"]) != (a.steps, a.seeds, a.eval_every):
                sys.exit(f"--merge: {jpath} holds {data['steps']} steps, seeds {data['seeds']}, eval every "
                         f"{data['eval_every']}; run with those (or without --merge)")
            data["runs"].update(runs)
            for name in runs:  # which rows were measured at another commit than the table's
                data.setdefault("reruns", {})[name] = machine_info()
            if not a.no_gradients:
                data.setdefault("gradients", {}).update(gradient_pass(chosen, pre))
        else:
            data = {"runs": runs, "steps": a.steps, "seeds": a.seeds, "eval_every": a.eval_every,
                    "machine": machine_info()}
            data["git"] = data["machine"]["git"] or "?"
            if not a.no_gradients:
                data["gradients"] = gradient_pass(chosen, pre)
        jpath.parent.mkdir(parents=True, exist_ok=True)
        jpath.write_text(json.dumps(data, indent=1))
    agg = aggregate(data)
    title = (f"shapes world, LoRA r8 on shapes-sd1, CLIP reward, {data['steps']} steps x 8 prompts, "
             f"median and min-max over seeds {data['seeds']} (eval: 64 held-out images)")
    plot(agg, a.out.with_suffix(".png"), title)
    md = [f"# Methods on the shapes world ({data['steps']} steps, seeds {data['seeds']})", "",
          "Judge accuracy (%) on the 64-image held-out eval set, before → after, median (min–max) over seeds; "
          "the reward is the optimized CLIP cosine on the same images. CPU s / step: one training step's loss and "
          "backward on one thread, measured in one process (the gradient pass below), so the machine's load "
          "during the runs does not enter it.", "", table(agg), ""]
    if "gradients" in data:
        base = next(iter(data["gradients"]))
        stats = {k: {**v, **variance_intervals(v["gram"], data["gradients"][base]["gram"])} if "gram" in v else v
                 for k, v in data["gradients"].items()}
        md += ["Gradient pass at the base model (one fixed batch of 8 prompts, 16 noise draws whose seeds every "
               "method shares, one thread): relative variance tr(Cov g) / ‖E g‖² (lower is less noisy; ‖ḡ‖² less "
               "its share of the noise estimates ‖E g‖²) with its 95% jackknife interval over the draws, its "
               f"ratio to {base}'s (the same draw left out of both; paired noise for the DRaFT variants, not for "
               "AlignProp and ReFL, which draw their step first), and CPU seconds per gradient, median (min–max).", "",
               f"| method | relative variance | vs {base} | CPU s per gradient |", "|---|---|---|---|"]
        md += [f"| {k} | {_interval(v, 'relative_variance')} | {_vs_base(k, base, v)} | "
               f"{v['cpu_s_per_step']:.2f} ({v['cpu_s_min']:.2f}–{v['cpu_s_max']:.2f}) |"
               for k, v in stats.items()]
    md += ["", f"Machine: {data['machine']}; git {data.get('git', '?')}."]
    if "gradients_machine" in data:
        md += [f"Gradient pass re-run alone at git {data['gradients_machine']['git']}, "
               f"{data['gradients_machine']['date']}."]
    for name, m in data.get("reruns", {}).items():
        md += [f"{name}: its runs measured apart from the table's, at git {m['git']}, {m['date']}."]
    md += [""]
    mpath = a.out.with_suffix(".md")
    seen = mpath.read_text().partition("\n## What is seen")[2] if mpath.exists() else ""
    if seen:  # hand-written discussion of the results: kept
        md += ["## What is seen" + seen.rstrip("\n"), ""]
    mpath.write_text("\n".join(md))
    print("\n".join(md))


def _vs_base(name: str, base: str, v: dict) -> str:
    if name == base:
        return "1x"
    if v.get("vs_base_ci95") == [1.0, 1.0]:
        return "1x (the same gradients)"
    return _interval(v, "vs_base", "x")


def _interval(v: dict, key: str, unit: str = "") -> str:
    if v.get(key) is None:
        return "—"
    if not v.get(key + "_ci95"):  # a result from before the intervals
        return f"{v[key]:.3g}{unit}"
    lo, hi = v[key + "_ci95"]
    return f"{v[key]:.3g}{unit} ({_g(lo)}–{_g(hi)})"


def _g(x: float) -> str:
    """Three significant digits, more where three would round a bound onto 1 (0.9998 is not 1)."""
    for digits in (3, 4, 5, 6):
        out = format(x, f".{digits}g")
        if out != "1" or x == 1:
            return out
    return out


if __name__ == "__main__":
    main()
