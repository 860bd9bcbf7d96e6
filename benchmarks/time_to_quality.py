"""Time to quality on the shapes world: rewardtune's demo setting against TRL 0.23.1's AlignPropTrainer (CPU).

    python benchmarks/time_to_quality.py                        # 3 seeds per side -> results/time_to_quality.*
    python benchmarks/time_to_quality.py --sides rewardtune --seeds 0 --rt-steps 4 --every 2 --out /tmp/ttq
    python benchmarks/time_to_quality.py --only-report          # re-write the table and plot from the json

Both sides start from the shipped `zoo:shapes-sd1` pipeline and optimize the same reward, the raw cosine of the
shipped shapes CLIP (`zoo:shapes-clip`, preset `shapes`), on the builtin `shapes` training prompts, at 32 px and
8 samples per optimizer step.
- rewardtune: `specs/demo.yaml` (DRaFT-1, LoRA r8, DDIM 20, CFG 3, eta 0, lr 1e-3), driven step by step through
  `Trainer.train_step()`. The demo's `shapes-eval` monitor is dropped from the training objective (it only logs;
  the gradient is the same without it).
- TRL: `AlignPropTrainer` with `AlignPropConfig`'s defaults (50 DDIM steps, eta 1, CFG 5, randomized truncation
  K ~ U[0, 50], its LoRA r4 on to_q/k/v/out.0, lr 1e-3, AdamW, clip 1) at the pipeline's own 32 px (TRL has no
  resolution setting: it samples at the UNet's sample size), except: train_batch_size 8 (TRL's default is 1;
  8 matches the demo, so a step is the same number of samples), mixed_precision "no" (its fp16 default does not
  run on a CPU), and the reward and prompts above. It runs in its
  own venv (`.nox/trl-0.23.1`, created on first use) and never imports rewardtune: its reward loads the CLIP with
  transformers and computes the cosine itself; a parity check compares it with rewardtune's reward on the same
  images before any run.

Each run trains on one torch thread and saves its LoRA in diffusers' format (`save_lora_weights`) every `--every`
optimizer steps, with its clocks (wall and `time.process_time`) paused while it saves. The evaluation is the same
code for both sides and runs afterwards in this process: each saved LoRA is fused into the base UNet
(`load_lora_weights` + `fuse_lora`) and `Trainer.evaluate` of the demo spec samples its 64 held-out images
(`shapes-eval` prompts, the run's seed's fixed eval noise, DDIM 20, CFG 3) and the world's judge scores them.
Time to quality is the first saved point whose both-correct accuracy reaches `--target`.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    RESULTS,
    ROOT,
    default_trl_venv,
    ensure_trl_venv,
    machine_info,
    run_script,
    spread,
    versions_block,
    worker_env,
)

MODELS = ROOT / "rewardtune" / "data" / "models"
PIPE_DIR = MODELS / "shapes-sd1"
CLIP_DIR = MODELS / "shapes-clip"
DEMO = ROOT / "specs" / "demo.yaml"
BATCH = 8
TRAIN_OBJECTIVE = "objective=[{reward: clip, preset: shapes, kwargs: {raw_cosine: true}}]"


# ------------------------------------------------------------------------------------------------- clocks
class Clock:
    """Wall and CPU seconds of this process's training, with pauses (saving is not training)."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self._w = self._c = None

    def start(self):
        self._w, self._c = time.perf_counter(), time.process_time()

    def stop(self):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


def _save_point(log: list, clock: Clock, step: int, out: Path, save, reward: float) -> None:
    clock.stop()
    d = out / f"lora-{step:05d}"
    save(d)
    log.append({"step": step, "samples": step * BATCH, "wall_s": round(clock.wall, 3), "cpu_s": round(clock.cpu, 3),
                "lora": d.name, "train_reward": reward})
    (out / "log.json").write_text(json.dumps(log, indent=1))
    clock.start()


# ------------------------------------------------------------------------------------------ rewardtune worker
def rewardtune_worker(cfg: dict) -> dict:
    import torch

    from rewardtune.engine.build import build_trainer
    from rewardtune.engine.pipeline import lora_save
    from rewardtune.spec.load import load_spec

    torch.set_num_threads(1)
    out = Path(cfg["out"])
    spec = load_spec(DEMO, overrides=[TRAIN_OBJECTIVE, f"train.seed={cfg['seed']}", f"train.steps={cfg['steps']}",
                                      *cfg.get("overrides", [])])
    tr = build_trainer(spec, output_dir=out / "run", progress=False)
    log: list[dict] = []
    clock = Clock()
    clock.start()
    rewards = []
    while tr.step < cfg["steps"]:
        metrics, _o, bad = tr.train_step()
        tr.step += 1
        rewards.append(metrics.get("reward/clip", float("nan")))
        if tr.step % cfg["every"] == 0 or tr.step == cfg["steps"]:
            _save_point(log, clock, tr.step, out, lambda d: lora_save(tr.diff, str(d)),
                        statistics.fmean(rewards[-cfg["every"]:]))
    clock.stop()
    return {"log": log, "threads": torch.get_num_threads(), "skipped": tr.skipped}


# ------------------------------------------------------------------------------------------------ TRL worker
def clip_reward_fn(clip_dir: str, pre: dict):
    """The shapes CLIP's raw cosine, written with transformers alone (no rewardtune): pixels [B,3,H,W] in [0,1]
    -> shortest-edge resize (antialiased bicubic, skipped at the model's size), centre crop, normalize, cosine of
    the projected image and text embeddings."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval().requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(clip_dir)
    size = int(pre["image_size"])
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    max_len = min(tok.model_max_length, model.config.text_config.max_position_embeddings)

    def pooled(o):
        return o if isinstance(o, torch.Tensor) else o.pooler_output

    def fn(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x = images.float()
        h, w = x.shape[-2:]
        nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = (x[..., top:top + size, left:left + size] - mean) / std
        t = tok(list(prompts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        img = pooled(model.get_image_features(pixel_values=x)).float()
        txt = pooled(model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"])).float()
        return (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1)

    return fn


def trl_parity(cfg: dict) -> dict:
    import numpy as np
    import torch

    fn = clip_reward_fn(cfg["clip_dir"], cfg["pre"])
    x = torch.from_numpy(np.load(cfg["images"]))
    with torch.no_grad():
        scores = fn(x, cfg["prompts"])
    return {"scores": [float(s) for s in scores], "rewardtune_imported": "rewardtune" in sys.modules}


def trl_worker(cfg: dict) -> dict:
    import contextlib
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from accelerate import PartialState
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    from trl import AlignPropConfig, AlignPropTrainer, DefaultDDPOStableDiffusionPipeline

    PartialState()  # TRL's accelerate logger needs an accelerate state before the trainer exists
    out = Path(cfg["out"])
    with contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115
        pipe = DefaultDDPOStableDiffusionPipeline(cfg["pipe_dir"], use_lora=True)
    reward = clip_reward_fn(cfg["clip_dir"], cfg["pre"])
    rewards: list[float] = []

    def reward_fn(images, prompts, metadata):
        r = reward(images, list(prompts))
        rewards.append(float(r.detach().mean()))
        return r, {}

    rng = random.Random(cfg["seed"])
    prompts = cfg["prompts"]

    def prompt_fn():
        return rng.choice(prompts), {}

    work = tempfile.mkdtemp(prefix="trl_ttq_")
    # AlignPropConfig defaults, except what must match (see the module docstring)
    conf = AlignPropConfig(num_epochs=10**6, train_batch_size=BATCH, mixed_precision="no",
                           log_with=None, save_freq=10**9, seed=cfg["seed"],
                           project_kwargs={"project_dir": work, "logging_dir": work})
    trainer = AlignPropTrainer(conf, reward_fn, prompt_fn, pipe)
    settings = {k: getattr(conf, k) for k in ("sample_num_steps", "sample_eta", "sample_guidance_scale",
                                             "train_learning_rate", "truncated_backprop_rand",
                                             "truncated_rand_backprop_minmax", "truncated_backprop_timestep",
                                             "train_max_grad_norm", "train_adam_weight_decay",
                                             "train_gradient_accumulation_steps", "train_batch_size")}
    settings["resolution"] = pipe.unet.config.sample_size * pipe.sd_pipeline.vae_scale_factor
    lora = next(iter(pipe.unet.peft_config.values()))
    settings["lora"] = {"r": lora.r, "alpha": lora.lora_alpha, "targets": sorted(lora.target_modules)}
    (out / "settings.json").write_text(json.dumps(settings, indent=1))

    def save(d: Path):
        StableDiffusionPipeline.save_lora_weights(str(d), unet_lora_layers=get_peft_model_state_dict(pipe.unet),
                                                  safe_serialization=True)

    log: list[dict] = []
    clock = Clock()
    clock.start()
    epoch = gs = 0
    while clock.cpu + (time.process_time() - clock._c) < cfg["cpu_budget"] and epoch < cfg["max_steps"]:
        gs = trainer.step(epoch, gs)
        epoch += 1
        if epoch % cfg["every"] == 0:
            _save_point(log, clock, epoch, out, save, statistics.fmean(rewards[-cfg["every"]:]))
    if not log or log[-1]["step"] != epoch:
        _save_point(log, clock, epoch, out, save, statistics.fmean(rewards[-cfg["every"]:]))
    clock.stop()
    return {"log": log, "settings": settings, "threads": torch.get_num_threads(),
            "rewardtune_imported": "rewardtune" in sys.modules}


# ------------------------------------------------------------------------------------------------- evaluator
class Evaluator:
    """rewardtune's own eval of the demo spec (64 held-out images, fixed noise per seed, the world's judge), on
    the base UNet with a saved diffusers-format LoRA fused in."""

    def __init__(self):
        import torch
        from diffusers import StableDiffusionPipeline

        torch.set_num_threads(1)
        self.pipe = StableDiffusionPipeline.from_pretrained(str(PIPE_DIR), safety_checker=None,
                                                            requires_safety_checker=False)
        self.base = {k: v.clone() for k, v in self.pipe.unet.state_dict().items()}
        self.trainers: dict[int, object] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="ttq_eval_"))

    def trainer(self, seed: int):
        from rewardtune.engine.build import build_trainer
        from rewardtune.spec.load import load_spec

        if seed not in self.trainers:
            spec = load_spec(DEMO, overrides=["model.trainable={type: full}", f"train.seed={seed}"])
            self.trainers[seed] = build_trainer(spec, output_dir=self.tmp / f"seed{seed}", progress=False)
        return self.trainers[seed]

    def fused(self, lora_dir: Path | None) -> dict:
        self.pipe.unet.load_state_dict(self.base)
        if lora_dir is None:
            return self.base
        self.pipe.load_lora_weights(str(lora_dir), adapter_name="ttq")
        self.pipe.fuse_lora(lora_scale=1.0)
        self.pipe.unload_lora_weights()
        return {k: v.clone() for k, v in self.pipe.unet.state_dict().items()}

    def __call__(self, seed: int, lora_dir: Path | None) -> dict:
        import torch

        tr = self.trainer(seed)
        with torch.no_grad():
            tr.diff.denoiser.load_state_dict(self.fused(lora_dir))
        r = tr.evaluate("ttq", None)
        return {"both": r["eval/shapes-eval"], "colour": r["eval/shapes-eval/colour_ok"],
                "shape": r["eval/shapes-eval/shape_ok"], "reward": r["eval/clip"]}


def eval_worker(cfg: dict) -> dict:
    """The base model (step 0) and every saved LoRA of one run, through `Evaluator`."""
    ev = Evaluator()
    curve = [{"step": 0, "samples": 0, "cpu_s": 0.0, "wall_s": 0.0, **ev(cfg["seed"], None)}]
    for p in cfg["log"]:
        curve.append({**{k: p[k] for k in ("step", "samples", "cpu_s", "wall_s", "train_reward")},
                      **ev(cfg["seed"], Path(cfg["out"]) / p["lora"])})
    return {"curve": curve}


def reward_preset() -> tuple[dict, object]:
    """The training reward's preprocessing as rewardtune builds it from the demo spec (for TRL's worker)."""
    import torch

    from rewardtune.engine.build import build_objective
    from rewardtune.engine.distributed import DistInfo
    from rewardtune.spec.load import load_spec

    spec = load_spec(DEMO, overrides=[TRAIN_OBJECTIVE])
    obj = build_objective(spec, torch.device("cpu"), DistInfo())
    r = obj.terms[0].reward
    assert r.raw_cosine and r.interpolation == "bicubic" and r.crop_rounding == "floor", r.__dict__
    return {"image_size": r.image_size, "mean": list(r.mean), "std": list(r.std)}, obj


def parity_check(trl_python: Path, pre: dict, obj) -> dict:
    """rewardtune's reward and TRL's worker's reward on the same images: world renders and base-model samples."""
    import numpy as np
    import torch

    from rewardtune.prompts import resolve_prompts
    from rewardtune.world import shapes as W

    imgs, scenes = W.sample(12, seed=77)
    prompts = [sc.caption for sc in scenes]
    prompts = prompts[:6] + [W.prompts()[(i * 7) % 32] for i in range(6)]  # half right, half mismatched
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    noise = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    x = torch.cat([x, noise])
    prompts += resolve_prompts(_builtin("shapes"), ROOT)[:4]
    with torch.no_grad():
        ours = [float(v) for v in obj.terms[0].reward(x, prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x.numpy())
        theirs = _run(trl_python, "--trl-parity", {"images": str(Path(tmp) / "x.npy"), "prompts": prompts,
                                                   "clip_dir": str(CLIP_DIR), "pre": pre}, trl=True)
    diff = max(abs(a - b) for a, b in zip(ours, theirs["scores"], strict=True))
    spread_ = max(ours) - min(ours)
    if diff > 1e-5 or spread_ < 0.1 or theirs["rewardtune_imported"]:
        raise SystemExit(f"reward parity failed: max |diff| {diff:.2e}, spread {spread_:.3f}, "
                         f"TRL side imported rewardtune: {theirs['rewardtune_imported']}")
    return {"images": len(prompts), "max_abs_diff": diff, "score_range": [min(ours), max(ours)]}


def _builtin(name: str):
    from rewardtune.spec.schema import PromptSource

    return PromptSource(builtin=name)


# ---------------------------------------------------------------------------------------------- subprocesses
def _run(python: Path | str, flag: str, cfg: dict, *, trl: bool = False) -> dict:
    env = worker_env({"OMP_NUM_THREADS": "1"})
    if trl:
        env.pop("PYTHONPATH", None)  # TRL's side must not see rewardtune
    return run_script(python, [Path(__file__).resolve(), flag, json.dumps(cfg)], env=env,
                      cwd=tempfile.gettempdir() if trl else ROOT)


# ------------------------------------------------------------------------------------------------- reporting
def first_reaching(curve: list[dict], target: float) -> dict | None:
    return next((p for p in curve if p["both"] >= target), None)


def summarize(data: dict) -> dict:
    target = data["target"]
    out = {}
    for side, runs in data["runs"].items():
        hits = [first_reaching(r["curve"], target) for r in runs]
        reached = [h for h in hits if h is not None]
        last = [r["curve"][-1] for r in runs]
        s = {"seeds": [r["seed"] for r in runs], "reached": len(reached), "n": len(runs),
             "per_seed": [None if h is None else {k: h[k] for k in ("step", "samples", "cpu_s", "wall_s")}
                          for h in hits],
             "final_both": spread([p["both"] for p in last]), "final_step": spread([p["step"] for p in last]),
             "final_cpu_s": spread([p["cpu_s"] for p in last]),
             "best_both": spread([max(p["both"] for p in r["curve"]) for r in runs]),
             "cpu_s_per_step": spread([r["curve"][-1]["cpu_s"] / max(1, r["curve"][-1]["step"]) for r in runs]),
             "wall_s_per_step": spread([r["curve"][-1]["wall_s"] / max(1, r["curve"][-1]["step"]) for r in runs])}
        for k in ("step", "samples", "cpu_s", "wall_s"):
            s[k] = spread([h[k] for h in reached]) if len(reached) == len(runs) else None
        out[side] = s
    return out


def _f(s: dict | None, digits: int = 0, pct: bool = False) -> str:
    if not s or not s.get("n"):
        return "not reached"
    k = 100 if pct else 1
    return f"{s['median'] * k:.{digits}f} ({s['min'] * k:.{digits}f}–{s['max'] * k:.{digits}f})"


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    colours = {"rewardtune": "tab:blue", "trl": "tab:red"}
    labels = {"rewardtune": "rewardtune (specs/demo.yaml: DRaFT-1, DDIM 20)",
              "trl": "TRL 0.23.1 AlignPropTrainer (defaults: 50 steps, K~U[0,50])"}
    for side, runs in data["runs"].items():
        for ax, key in ((axes[0], "cpu_s"), (axes[1], "samples")):
            hi_x = min(r["curve"][-1][key] for r in runs)
            grid = np.linspace(0, hi_x, 200)
            ys = np.stack([np.interp(grid, [p[key] for p in r["curve"]], [p["both"] for p in r["curve"]])
                           for r in runs])
            ax.plot(grid, np.median(ys, 0) * 100, color=colours[side], lw=2, label=labels[side])
            ax.fill_between(grid, ys.min(0) * 100, ys.max(0) * 100, color=colours[side], alpha=0.15)
            for r in runs:
                ax.plot([p[key] for p in r["curve"]], [p["both"] * 100 for p in r["curve"]], color=colours[side],
                        lw=0.6, alpha=0.5, marker=".", ms=3)
    for ax, xl in ((axes[0], "training CPU seconds (one thread, time.process_time)"),
                   (axes[1], "training samples (8 per optimizer step)")):
        ax.axhline(data["target"] * 100, color="grey", ls="--", lw=1)
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("judge: colour and shape right (%)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"shapes world, time to {data['target']:.0%} both-correct on the 64 held-out eval images: median "
                 f"and min–max over seeds {data['seeds']} (dots: each seed's saved LoRAs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(data: dict) -> str:
    summ = summarize(data)
    t = data["target"]
    rt, trl = summ.get("rewardtune"), summ.get("trl")
    lines = ["# Time to quality on the shapes world: rewardtune vs TRL 0.23.1 AlignPropTrainer (CPU)", "",
             f"Target: the judge's both-correct accuracy on the demo's 64 held-out eval images reaches "
             f"**{t:.0%}**. Median (min–max) over seeds {data['seeds']}; a LoRA was saved and evaluated every "
             f"{data.get('rt_eval_every', data['every'])} optimizer steps (TRL: every {data['trl_every']}), so a "
             f"run's first step at the target is known to within that interval. TRL ran {data['trl_max_steps']} "
             f"steps (or until {data['trl_cpu_budget']:.0f} CPU seconds, whichever came first); rewardtune ran "
             f"{data['rt_steps']} steps.", "",
             "| | reached | steps | samples | CPU s | wall s | CPU s / step | accuracy at the end (step) | best |",
             "|---|---|---|---|---|---|---|---|---|"]
    for side, s in summ.items():
        lines.append(f"| {side} | {s['reached']}/{s['n']} | {_f(s['step'])} | {_f(s['samples'])} | {_f(s['cpu_s'])} "
                     f"| {_f(s['wall_s'])} | {_f(s['cpu_s_per_step'], 2)} | {_f(s['final_both'], 0, True)}% "
                     f"({_f(s['final_step'])}) | {_f(s['best_both'], 0, True)}% |")
    lines.append("")
    if rt and trl:
        lines += ratio_lines(rt, trl, data)
    lines += ["", "Other targets (seeds that reached it; CPU s to it, median (min–max) over those seeds):", "",
              "| target | " + " | ".join(data["runs"]) + " |", "|---" * (1 + len(data["runs"])) + "|"]
    for other in (0.5, 0.6, 0.7, 0.8):
        cells = []
        for runs in data["runs"].values():
            hits = [h for h in (first_reaching(r["curve"], other) for r in runs) if h is not None]
            cells.append(f"{len(hits)}/{len(runs)}" + (f": {_f(spread([h['cpu_s'] for h in hits]))} CPU s, "
                                                        f"{_f(spread([h['samples'] for h in hits]))} samples"
                                                        if hits else ""))
        lines.append(f"| {other:.0%} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (steps / samples / CPU s / wall s to the target):", ""]
    for side, s in summ.items():
        for seed, h in zip(s["seeds"], s["per_seed"], strict=True):
            lines.append(f"- {side}, seed {seed}: " + ("not reached within budget" if h is None else
                                                        f"{h['step']} / {h['samples']} / {h['cpu_s']:.0f} / "
                                                        f"{h['wall_s']:.0f}"))
    lines += ["", "Accuracy curves (both-correct %, each seed, at the saved steps):", ""]
    for side, runs in data["runs"].items():
        for r in runs:
            lines.append(f"- {side}, seed {r['seed']}: " + ", ".join(
                f"{p['step']}: {p['both'] * 100:.0f}" for p in r["curve"]))
    if "trl_settings" in data:
        lines += ["", f"TRL's settings as run (AlignPropConfig): `{json.dumps(data['trl_settings'])}`"]
    if "parity" in data:
        p = data["parity"]
        lines += ["", f"Reward parity: TRL's worker's CLIP cosine (transformers only) vs rewardtune's `clip` reward "
                      f"on {p['images']} images (world renders with right and wrong captions, noise): max |diff| "
                      f"{p['max_abs_diff']:.1e} over scores {p['score_range'][0]:.3f} to {p['score_range'][1]:.3f}."]
    lines += ["", "## Setup", "", data.get("setup", ""), "", "## Machine", "",
              "\n".join(f"- {k}: {v}" for k, v in data["machine"].items()), data.get("versions", ""), ""]
    return "\n".join(lines)


def _crossing(curve: list[dict], target: float) -> tuple[float, float] | None:
    """CPU seconds between which a run first reached `target`: (the last evaluated point below, the first at or
    above), or None when it never did."""
    for prev, p in zip(curve, curve[1:], strict=False):
        if p["both"] >= target:
            return prev["cpu_s"], p["cpu_s"]
    return None


def ratio_lines(rt: dict, trl: dict, data: dict) -> list[str]:
    """TRL's time to the target over rewardtune's, paired by seed, as the bounds the evaluation points allow."""
    per_step = trl["cpu_s_per_step"]["median"] / rt["cpu_s_per_step"]["median"]
    target = data["target"]
    curves = {side: {r["seed"]: r["curve"] for r in data["runs"][side]} for side in ("rewardtune", "trl")}
    parts = []
    for seed in sorted(curves["rewardtune"]):
        r, t = _crossing(curves["rewardtune"][seed], target), _crossing(curves["trl"].get(seed, []), target)
        if r is None:
            parts.append(f"seed {seed}: rewardtune did not reach it")
        elif t is None:
            end = curves["trl"][seed][-1]["cpu_s"] if seed in curves["trl"] else float("nan")
            parts.append(f"seed {seed}: TRL did not reach it in {end:.0f} CPU s, rewardtune by {r[1]:.0f}: "
                         f"more than {end / r[1]:.1f}x")
        else:
            hi = f"{t[1] / r[0]:.1f}x" if r[0] > 0 else "more"
            parts.append(f"seed {seed}: TRL between {t[0]:.0f} and {t[1]:.0f} CPU s, rewardtune between {r[0]:.0f} "
                         f"and {r[1]:.0f}: {t[0] / r[1]:.1f}x to {hi}")
    return [f"**TRL's time to {target:.0%} over rewardtune's, paired by seed** (CPU seconds; a run reached the target "
            "between two evaluated points, so each ratio is a range): " + "; ".join(parts) + f". TRL's CPU cost per "
            f"optimizer step is {per_step:.1f}x rewardtune's.",
            "", "Wall-clock over CPU time at the end of each run (how much else shared the machine): " + ", ".join(
                f"{side} seed {seed} {c[-1]['wall_s'] / c[-1]['cpu_s']:.2f}" for side in ("rewardtune", "trl")
                for seed, c in sorted(curves[side].items()) if c[-1]["cpu_s"] > 0) + "."] + ([
            "", "Lanes (side by side; each ran its runs in this order, each run's evaluation right after it): "
            + "; ".join(", ".join(lane) for lane in data["lanes"]) + "."] if data.get("lanes") else [])


# ---------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sides", nargs="*", default=["rewardtune", "trl"], choices=["rewardtune", "trl"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--target", type=float, default=0.7, help="both-correct accuracy to reach (default 0.7)")
    ap.add_argument("--rt-steps", type=int, default=100, help="rewardtune's optimizer steps per run")
    ap.add_argument("--every", type=int, default=10, help="save and evaluate every N optimizer steps")
    ap.add_argument("--rt-eval-every", type=int, default=10,
                    help="evaluate rewardtune's saved LoRAs every N steps (0: every saved one)")
    ap.add_argument("--trl-cpu-budget", type=float, default=400.0, help="CPU seconds per TRL run")
    ap.add_argument("--trl-max-steps", type=int, default=50)
    ap.add_argument("--trl-every", type=int, default=5, help="TRL's save interval (its steps cost more)")
    ap.add_argument("--jobs", type=int, default=2,
                    help="lanes of runs at a time, one thread each; runs are interleaved by seed and dealt to lanes "
                         "round-robin (with both sides and 2 jobs: one lane per side)")
    ap.add_argument("--trl-python", type=Path, default=None, help="python of a venv with TRL 0.23.1")
    ap.add_argument("--out", type=Path, default=RESULTS / "time_to_quality")
    ap.add_argument("--keep", type=Path, default=None, help="keep the runs' LoRAs here (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --keep: do not re-run runs that an earlier invocation finished there")
    ap.add_argument("--only-report", action="store_true")
    ap.add_argument("--rt-worker", help=argparse.SUPPRESS)
    ap.add_argument("--trl-worker", help=argparse.SUPPRESS)
    ap.add_argument("--trl-parity", help=argparse.SUPPRESS)
    ap.add_argument("--eval-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    for flag, fn in ((a.rt_worker, rewardtune_worker), (a.trl_worker, trl_worker), (a.trl_parity, trl_parity),
                     (a.eval_worker, eval_worker)):
        if flag:
            print("RESULT " + json.dumps(fn(json.loads(flag))), flush=True)
            return
    jpath = a.out.with_suffix(".json")
    if a.only_report:
        data = json.loads(jpath.read_text())
    else:
        data = measure(a)
        jpath.parent.mkdir(parents=True, exist_ok=True)
        jpath.write_text(json.dumps(data, indent=1))
    plot(data, a.out.with_suffix(".png"))
    md = report(data)
    a.out.with_suffix(".md").write_text(md)
    print(md)


def measure(a) -> dict:
    from rewardtune.prompts import resolve_prompts

    work = a.keep or Path(tempfile.mkdtemp(prefix="ttq-"))
    work.mkdir(parents=True, exist_ok=True)
    data: dict = {"target": a.target, "seeds": a.seeds, "every": a.every, "rt_steps": a.rt_steps,
                  "rt_eval_every": a.rt_eval_every or a.every,
                  "trl_every": a.trl_every, "trl_cpu_budget": a.trl_cpu_budget, "trl_max_steps": a.trl_max_steps,
                  "runs": {},
                  "machine": machine_info()}
    trl_py = None
    envs = {"rewardtune": sys.executable}
    if "trl" in a.sides:
        trl_py = a.trl_python or ensure_trl_venv(default_trl_venv())
        envs["TRL"] = trl_py
        pre, obj = reward_preset()
        cached = work / "parity.json"  # checked by an earlier invocation on the same kept runs
        data["parity"] = json.loads(cached.read_text()) if a.reuse and cached.exists() else parity_check(
            trl_py, pre, obj)
        cached.write_text(json.dumps(data["parity"]))
        print(f"reward parity: {data['parity']}", flush=True)
    data["versions"] = versions_block(envs)
    prompts = resolve_prompts(_builtin("shapes"), ROOT)
    jobs = []
    for seed in a.seeds:
        for side in a.sides:
            d = work / f"{side}-{seed}"
            if side == "rewardtune":
                jobs.append((side, seed, sys.executable, "--rt-worker",
                             {"out": str(d), "seed": seed, "steps": a.rt_steps, "every": a.every}))
            else:
                jobs.append((side, seed, trl_py, "--trl-worker",
                             {"out": str(d), "seed": seed, "cpu_budget": a.trl_cpu_budget,
                              "max_steps": a.trl_max_steps, "every": a.trl_every, "prompts": prompts,
                              "pipe_dir": str(PIPE_DIR), "clip_dir": str(CLIP_DIR), "pre": pre}))
    # Interleaved (each seed's runs of both sides next to each other) and dealt round-robin to `--jobs` lanes that
    # each run their jobs one after another: with both sides and 2 jobs, one lane is TRL's and one rewardtune's, so
    # both sides run beside the other side from the start. rewardtune's lane ends first, and TRL's last runs then
    # have the machine to themselves: what contention remains favours TRL.
    lanes = [jobs[i::a.jobs] for i in range(a.jobs)]
    data["lanes"] = [[f"{side} seed {seed}" for side, seed, *_ in lane] for lane in lanes if lane]

    def go(job):
        side, seed, py, flag, cfg = job
        Path(cfg["out"]).mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        r = finished_run(Path(cfg["out"]), cfg) if a.reuse else None
        if r is None:
            r = _run(py, flag, cfg, trl=side == "trl")
        else:
            print(f"{side} seed {seed}: reusing the finished run in {cfg['out']}", flush=True)
        print(f"[{time.perf_counter() - t0:6.0f}s] {side} seed {seed}: {r['log'][-1]['step']} steps, "
              f"{r['log'][-1]['cpu_s']:.0f} CPU s", flush=True)
        # evaluated in its own process as soon as the run ends, so evaluation overlaps the other runs
        log = r["log"]
        if side == "rewardtune" and a.rt_eval_every:  # fewer evaluations (each is 64 images x 20 DDIM steps)
            log = [p for i, p in enumerate(log) if p["step"] % a.rt_eval_every == 0 or i == len(log) - 1]
        cached = Path(cfg["out"]) / "curve.json"  # an earlier invocation's evaluation of the same points
        curve = json.loads(cached.read_text()) if a.reuse and cached.exists() else None
        if curve is None or [p["step"] for p in curve[1:]] != [p["step"] for p in log]:
            curve = _run(sys.executable, "--eval-worker", {"seed": seed, "out": cfg["out"], "log": log})["curve"]
            cached.write_text(json.dumps(curve, indent=1))
        print(f"{side} seed {seed}: " + ", ".join(f"{p['step']}:{p['both']:.2f}" for p in curve), flush=True)
        return side, seed, r, curve

    with ThreadPoolExecutor(a.jobs) as ex:
        results = [r for lane in ex.map(lambda lane: [go(job) for job in lane], lanes) for r in lane]
    for side, seed, r, curve in sorted(results, key=lambda x: (x[0], x[1])):
        data["runs"].setdefault(side, []).append({"seed": seed, "curve": curve})
        if side == "trl" and r.get("settings"):
            data["trl_settings"] = r["settings"]
    data["setup"] = SETUP
    return data


def finished_run(out: Path, cfg: dict) -> dict | None:
    """A run kept in `out` (`--keep` of an earlier invocation) that got as far as this one would: its log."""
    if not (out / "log.json").exists():
        return None
    log = json.loads((out / "log.json").read_text())
    last = log[-1] if log else None
    if last is None or not (out / last["lora"]).exists():
        return None
    if "steps" in cfg:  # rewardtune
        done = last["step"] >= cfg["steps"]
    else:
        done = last["step"] >= cfg["max_steps"] or last["cpu_s"] >= cfg["cpu_budget"]
    if not done:
        return None
    settings = out / "settings.json"
    return {"log": log, "settings": json.loads(settings.read_text()) if settings.exists() else None}


SETUP = """\
- Same base pipeline (`rewardtune/data/models/shapes-sd1`), same reward (raw cosine of the shipped shapes CLIP,
  preset `shapes`), same training prompts (builtin `shapes`, 32 captions), 32 px, 8 samples per optimizer step,
  one torch thread per run, in lanes that run side by side on the 2-core machine (listed above), each lane its runs
  one after another. CPU seconds are the clock compared, since they depend least on what else runs; the wall/CPU
  ratio of each run above shows how much else did.
- rewardtune: `specs/demo.yaml` as shipped (DRaFT-1: gradient through the last of 20 DDIM steps, eta 0, CFG 3,
  LoRA r8 alpha 8 gaussian on to_q/k/v/out.0, AdamW lr 1e-3, weight decay 1e-4, clip 1), minus the `shapes-eval`
  monitor term (it only logs).
- TRL: `AlignPropConfig` defaults (50 DDIM steps, eta 1, CFG 5, randomized truncation K ~ U[0, 50] with gradient
  checkpointing, LoRA r4 alpha 4 gaussian on to_q/k/v/out.0, AdamW lr 1e-3, weight decay 1e-4, clip 1, loss
  10 - mean reward) at the pipeline's 32 px, except: train_batch_size 8 (default 1); mixed_precision "no"
  (default fp16, which needs a GPU); the reward and prompt functions.
- Evaluation, identical for both: each saved LoRA (diffusers format) is fused into the base UNet and rewardtune's
  `Trainer.evaluate` of the demo spec samples the 64 held-out images (`shapes-eval` prompts x 2, the seed's fixed
  eval noise, DDIM 20, eta 0, CFG 3); the world's rule-based judge scores colour and shape. Note that TRL trains
  at CFG 5 and is evaluated at CFG 3, the demo's setting."""


if __name__ == "__main__":
    main()
