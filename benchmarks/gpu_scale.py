"""GPU scale: an SD-1.5-architecture pipeline with random weights, trained against a PickScore-architecture reward.

    python benchmarks/gpu_scale.py                 # on a CUDA machine: full size (below); results/gpu_scale.md
    python benchmarks/gpu_scale.py --size reduced  # what a machine without a GPU runs (the default there)

Full size: UNet2DConditionModel, AutoencoderKL and CLIP-L text encoder built from SD-1.5's public configs (written
out below, nothing is downloaded) with random weights (UNet ~860M parameters); 512x512, 50 DDIM steps, CFG 7.5,
eta 0, LoRA r=4, bf16 frozen weights (LoRA master weights fp32); reward = rewardtune's PickScore code on a randomly
initialised CLIP ViT-H/14 (PickScore's architecture) in bf16.

Measured, each cell in a fresh (forked) process, rewardtune and TRL interleaved:
- rewardtune `draft_k` K=1, rewardtune `alignprop` with randomized truncation K ~ U[1, 50] (one draw per step),
  TRL 0.23.1 AlignPropTrainer with fixed truncation K=1 and with its randomized truncation (minmax (0, 50); TRL
  draws a cut point afresh at every denoising step), all at the same batch;
- samples/s, peak `torch.cuda.max_memory_allocated`, and MFU = model FLOPs / time / the card's measured dense
  bf16 matmul rate. Model FLOPs are counted with torch's FlopCounterMode on one step without checkpointing
  (so recomputation is not counted as useful work) and are the same for rewardtune and TRL at equal K;
- the largest batch per GPU that fits (powers of two, one training step each) for rewardtune draft_k K=1 and
  TRL K=1.

On a machine without CUDA the same code runs at a reduced size (same topologies, narrower and shallower, 64 px,
10 steps, fp32) and the results file says so.
"""
from __future__ import annotations

import argparse
import json
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
    run_worker,
    spread,
    versions_block,
    write_text,
)
from _step_worker import LEVERS  # noqa: E402

# ---- SD-1.5's public configs (unet/config.json, vae/config.json, text_encoder/config.json, scheduler) --------
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, act_fn="silu", norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, scaling_factor=0.18215,
)
SD15_TEXT = dict(  # openai/clip-vit-large-patch14 text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000, prediction_type="epsilon")

# Reduced size for CPU-only machines: the same block topology, narrower and shallower.
REDUCED_UNET = dict(SD15_UNET, sample_size=8, block_out_channels=(32, 32, 64, 64), layers_per_block=1,
                    cross_attention_dim=64, attention_head_dim=4)
REDUCED_VAE = dict(SD15_VAE, sample_size=64, block_out_channels=(16, 16, 32, 32), layers_per_block=1,
                   norm_num_groups=16)
REDUCED_TEXT = dict(SD15_TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)

FULL = dict(size="full", resolution=512, T=50, cfg=7.5, eta=0.0, rank=4, precision="bf16", reward="h14-random",
            batch=8, unet=SD15_UNET, vae=SD15_VAE, text=SD15_TEXT)
REDUCED = dict(size="reduced", resolution=64, T=10, cfg=7.5, eta=0.0, rank=4, precision="fp32", reward="tiny",
               batch=2, unet=REDUCED_UNET, vae=REDUCED_VAE, text=REDUCED_TEXT)
DRY = dict(REDUCED, size="dry", T=2)  # gpu_check.py --dry-run: the same code paths in seconds

# the lever sweep (`--levers`): rewardtune draft_k K=1 at the throughput batch, one lever at a time, then together
LEVER_CONFIGS = ("base,nosync,cl,flash,nosync+cl+flash,nosync+cl+flash+b16,nosync+cl+flash+b32,compile,"
                 "nosync+cl+flash+compile,fused,efficient,graphs,nosync+cl+flash+b64")


def build_pipeline_dir(conf: dict, path: Path, device: str) -> dict:
    """Random-weight pipeline from the configs, saved with save_pretrained (bf16 on GPU) so both sides load it."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from rewardtune.zoo.tokenizers import tiny_clip_tokenizer

    stamp = path / ".complete"
    dtype = torch.bfloat16 if conf["precision"] == "bf16" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**conf["unet"])
        vae = AutoencoderKL(**conf["vae"])
        text = CLIPTextModel(CLIPTextConfig(**conf["text"]))
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in (("unet", unet), ("vae", vae), ("text", text))}
    if not stamp.exists():
        pipe = StableDiffusionPipeline(
            unet=unet.to(dtype), vae=vae.to(dtype), text_encoder=text.to(dtype),
            tokenizer=tiny_clip_tokenizer(77),  # ids < 49408; tokenization is not what is measured
            scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
            image_encoder=None, requires_safety_checker=False)
        pipe.save_pretrained(path)
        stamp.write_text("ok")
    del unet, vae, text
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return counts


def matmul_peak_tflops(device: str, n: int = 8192, reps: int = 10) -> float:
    import torch

    if not device.startswith("cuda"):
        return float("nan")
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12)
    del a, b
    torch.cuda.empty_cache()
    return best


def args_for(impl: str, conf: dict, pipe_dir: Path, clip_dir: str, device: str, *, k: str, method: str = "alignprop",
             batch: int, warmup: int, steps: int, ckpt: int = 1, count_flops: int = 0, levers: str = "",
             compile_backend: str = "inductor") -> list[str]:
    extra = ["--levers", levers, "--compile-backend", compile_backend] if levers else []
    return [*extra, "--impl", impl, "--method", method, "--pipe-dir", str(pipe_dir), "--reward", conf["reward"],
            "--reward-dir", clip_dir, "--resolution", str(conf["resolution"]), "--steps-T", str(conf["T"]),
            "--k", k, "--ckpt", str(ckpt), "--batch", str(batch), "--cfg", str(conf["cfg"]), "--eta", str(conf["eta"]),
            "--rank", str(conf["rank"]), "--warmup", str(warmup), "--steps", str(steps), "--device", device,
            "--precision", conf["precision"], "--count-flops", str(count_flops), "--rand-min", "0",
            "--threads", "0" if device.startswith("cuda") else "1"]


CELLS = [  # (label, impl, method, k)
    ("rewardtune draft_k K=1", "rewardtune", "draft_k", "1"),
    ("TRL AlignProp K=1", "trl", "alignprop", "1"),
    ("rewardtune alignprop K~U[1,T]", "rewardtune", "alignprop", "rand"),
    ("TRL AlignProp randomized (0,T)", "trl", "alignprop", "rand"),
]


class Spawner:
    """Same interface as ForkServer: one new interpreter per measurement."""

    def __init__(self, python: str):
        self.python = python

    def run(self, args: list[str]) -> dict:
        return run_worker(self.python, [ROOT / "benchmarks" / "_step_worker.py", *args], timeout=300)

    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["auto", "full", "reduced", "dry"], default="auto")
    ap.add_argument("--batch", type=int, default=0, help="batch of the throughput cells (default: 8 full, 2 reduced)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=64, help="largest batch the fit search tries (0: skip)")
    ap.add_argument("--budget-s", type=float, default=480, help="stop starting new measurements after this")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rewardtune-gpu-scale")
    ap.add_argument("--trl-python", default="", help="python with trl==0.23.1 (default: the benchmark's TRL venv)")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_scale.md")
    ap.add_argument("--levers", default=LEVER_CONFIGS, help="lever sweep configurations ('' skips it); see "
                                                            "_step_worker.py --help")
    ap.add_argument("--compile-backend", default="inductor", help="of the compile/graphs levers")
    ap.add_argument("--no-trl", action="store_true", help="rewardtune cells only (no TRL at hand)")
    ap.add_argument("--no-randomized", action="store_true", help="skip the randomized-truncation cells")
    ap.add_argument("--flops", type=int, default=1, help="count model FLOPs (for MFU); 0 skips it (then the full "
                                                          "size uses --flops-known)")
    ap.add_argument("--flops-known", default="88.19,1.98",
                    help="full size: TFLOP per sample at K=1, and per further differentiable step, as counted on "
                         "the H100 run (the architecture's constants) for --flops 0")
    ap.add_argument("--reserve-s", type=float, default=0, help="budget the lever sweep leaves for the cells after it")
    a = ap.parse_args(argv)
    t_start = time.time()

    import torch

    cuda = torch.cuda.is_available()
    size = a.size if a.size != "auto" else ("full" if cuda else "reduced")
    conf = dict({"full": FULL, "reduced": REDUCED, "dry": DRY}[size])
    device = "cuda" if cuda else "cpu"
    batch = a.batch or conf["batch"]
    trl_py = "" if a.no_trl else a.trl_python or (sys.executable if cuda else str(ensure_trl_venv()))
    cells = [c for c in CELLS if not (a.no_trl and c[1] == "trl") and not (a.no_randomized and c[3] == "rand")]
    workdir = a.workdir / size
    workdir.mkdir(parents=True, exist_ok=True)
    log = lambda *x: print(f"[{time.time() - t_start:6.0f}s]", *x, flush=True)  # noqa: E731

    pipe_dir = workdir / "sd15-random"
    counts = build_pipeline_dir(conf, pipe_dir, device)
    log("pipeline params", counts)
    clip_dir = ""
    if conf["reward"] == "tiny":
        from rewardtune.zoo import materialize

        clip_dir = str(materialize("zoo:clip"))
    peak = matmul_peak_tflops(device)
    log(f"bf16 matmul peak {peak:.0f} TFLOP/s" if cuda else "no CUDA: reduced size on CPU")
    gpu_name = torch.cuda.get_device_name(0) if cuda else ""
    del torch  # the parent never runs model code; workers are forked from servers that never touched CUDA

    wlog = Path(tempfile.gettempdir()) / "rewardtune-gpu-scale-workers.log"
    impls = ["rewardtune"] + ([] if a.no_trl else ["trl"])
    pythons = {"rewardtune": sys.executable, "trl": trl_py}
    if cuda:  # CUDA must not be touched before a fork: spawn a new interpreter per measurement instead
        servers = {i: Spawner(pythons[i]) for i in impls}
    else:
        servers = {i: ForkServer(pythons[i], i, wlog) for i in impls}
    results: dict = {"cells": {c[0]: [] for c in CELLS}, "fit": {}, "flops": {}, "levers": {}}

    partial = a.out.with_suffix(".partial.json")

    def run_safe(server, args):
        try:
            r = server.run(args)
        except Exception as e:  # noqa: BLE001  (one failed cell must not lose the others)
            log("FAILED", str(e)[-1500:])
            r = {"ok": False, "error": str(e)[-1500:]}
        r["args"] = [str(x) for x in args]
        results.setdefault("all", []).append(r)
        write_text(partial, json.dumps(results, default=str))  # raw data survives a kill
        return r

    def over_budget() -> bool:
        return time.time() - t_start > a.budget_s

    # model FLOPs per sample: draft_k at K=1 and K=2 (no checkpointing, batch 1); F(K) = F0 + K * F1
    for k in ("1", "2") if a.flops else ():
        r = run_safe(servers["rewardtune"], args_for("rewardtune", conf, pipe_dir, clip_dir, device, k=k, method="draft_k",
                                               batch=1, warmup=0, steps=0, ckpt=0, count_flops=1))
        results["flops"][k] = r.get("flops_per_step", float("nan"))
        log(f"model FLOPs/sample at K={k}: {results['flops'][k] / 1e12:.2f} TFLOP")
    if not a.flops and size == "full":
        k1, per = (float(x) * 1e12 for x in a.flops_known.split(","))
        results["flops"] = {"1": k1, "2": k1 + per, "source": "--flops-known"}
        a.flops = 1
    f1 = results["flops"].get("2", float("nan")) - results["flops"].get("1", float("nan"))
    f0 = results["flops"].get("1", float("nan")) - f1

    # the levers, one after another on one loaded model (rewardtune draft_k K=1 at the throughput batch)
    # first: its `base` is the rewardtune draft_k K=1 cell, and what is left of the budget after it goes to TRL
    if a.levers and not over_budget():
        deadline = a.budget_s - (time.time() - t_start) - a.reserve_s
        r = run_safe(servers["rewardtune"], args_for("rewardtune", conf, pipe_dir, clip_dir, device, k="1",
                                                     method="draft_k", batch=batch, warmup=a.warmup,
                                                     steps=a.steps, levers=a.levers,
                                                     compile_backend=a.compile_backend) + [
                                                         "--deadline-s", f"{max(deadline, 1):.0f}"])
        results["levers"] = r.get("levers", {})
        base = results["levers"].get("base", {})
        if base.get("ok"):
            cell = {"ok": True, "step_s": [base["step_s"]] * a.steps, "rss_peak_mb": base["rss_peak_mb"],
                    "from": "lever sweep, base"}
            if "cuda_peak_gib" in base:
                cell["cuda_peak_gib"] = base["cuda_peak_gib"]
            results["cells"]["rewardtune draft_k K=1"].append(cell)
        for cfg, rec in results["levers"].items():
            log("lever", cfg, f"{rec.get('step_s', float('nan')):.3f} s/step" if rec.get("ok") else rec.get("error"))


    for rep in range(a.repeats):
        order = cells if rep % 2 == 0 else [c for pair in zip(cells[1::2], cells[0::2], strict=False) for c in pair]
        for label, impl, method, k in order:
            if results["cells"][label] and rep == 0:
                continue  # the lever sweep's base measured it
            if over_budget():
                log("time budget reached; skipping", label)
                continue
            r = run_safe(servers[impl], args_for(impl, conf, pipe_dir, clip_dir, device, k=k, method=method,
                                                 batch=batch, warmup=a.warmup, steps=a.steps))
            results["cells"][label].append(r)
            log(label, "ok" if r.get("ok") else "OOM", [round(x, 3) for x in r.get("step_s", [])],
                f"peak {r.get('cuda_peak_gib', float('nan')):.1f} GiB")

    # largest batch that fits: powers of two from the measured batch, one step each
    for label, impl, method, k in [c for c in cells if c[3] == "1"]:
        best, b, why = None, batch * 2, "limit"  # `batch` itself ran in the cells above
        while a.max_batch and b <= a.max_batch:
            if over_budget():
                why = "time budget"
                break
            r = run_safe(servers[impl], args_for(impl, conf, pipe_dir, clip_dir, device, k=k, method=method,
                                                 batch=b, warmup=0, steps=1))
            log("fit", label, b, "ok" if r.get("ok") else "OOM", f"{r.get('cuda_peak_gib', float('nan')):.1f} GiB")
            if not r.get("ok"):
                why = "OOM" if r.get("oom") else "error"
                break
            best = (b, r.get("cuda_peak_gib"), r["step_s"][0])
            b *= 2
        results["fit"][label] = {"largest_ok": best, "stopped_at": b, "limit": a.max_batch, "why": why}
    for s in servers.values():
        s.close()

    # ---------------------------------------------------------------------------------------------- report
    expected_k = {"1": 1.0, "rand": (1 + conf["T"]) / 2}
    trl_rand_k = sum((i + 1) / (conf["T"] + 1) for i in range(conf["T"]))  # E[#grad steps], per-step draws
    rows = []
    for label, impl, _method, k in cells:
        runs = [r for r in results["cells"][label] if r.get("ok")]
        times = [t for r in runs for t in r["step_s"]]
        sps = [batch / t for t in times]
        kk = expected_k[k] if impl == "rewardtune" else (1.0 if k == "1" else trl_rand_k)
        model_flops = (f0 + kk * f1) * batch
        mfu = [100 * model_flops / t / (peak * 1e12) for t in times] if cuda and a.flops else []
        mem = [r.get("cuda_peak_gib", r["rss_peak_mb"] / 1024) for r in runs]
        rows.append(dict(label=label, sps=spread(sps), mem=spread(mem), mfu=spread(mfu), k=kk, n=len(times)))
    by = {r["label"]: r for r in rows}

    def cmp(a_label, b_label):
        ra, rb = by.get(a_label), by.get(b_label)
        if not ra or not rb or not ra["n"] or not rb["n"]:
            return "n/a", "n/a"
        return (f"{ra['sps']['median'] / rb['sps']['median']:.2f}x", f"{ra['mem']['median'] / rb['mem']['median']:.2f}x")

    mem_unit = "GiB (max_memory_allocated)" if cuda else "GiB (peak RSS)"
    lines = [
        f"# GPU scale: SD-1.5 architecture, random weights ({'GPU' if cuda else 'CPU, REDUCED SIZE: no GPU was available'})",
        "",
        "Produced by `python benchmarks/gpu_scale.py` (see benchmarks/README.md)." + (
            "" if cuda else " **This machine has no GPU: the pipeline is shrunk (same topology, narrower and "
            "shallower), 64 px, 10 steps, fp32, tiny CLIP reward. These numbers say nothing about GPU scale.**"),
        "Each number is **median (min–max)** over all timed steps of all repeats (each repeat a fresh process; "
        f"{a.repeats} repeats x {a.steps} timed steps after {a.warmup} warm-up).",
        "",
        "## Setup",
        f"- size: {size}; UNet {counts['unet'] / 1e6:.0f}M, VAE {counts['vae'] / 1e6:.1f}M, text encoder "
        f"{counts['text'] / 1e6:.0f}M parameters (random weights from the configs in the script)",
        f"- {conf['resolution']}x{conf['resolution']}, {conf['T']} DDIM steps, CFG {conf['cfg']}, eta {conf['eta']}, "
        f"LoRA r={conf['rank']}, {conf['precision']}, batch {batch} per GPU, gradient checkpointing on (both)",
        "- reward: " + ("rewardtune's PickScore code on a random CLIP ViT-H/14 (PickScore's architecture), bf16"
                        if cuda else "rewardtune's PickScore code on the tiny CLIP twin"),
        f"- device: {gpu_name or 'CPU'}; measured dense bf16 matmul (8192^3): "
        + (f"{peak:.0f} TFLOP/s" if cuda else "n/a"),
        (f"- model FLOPs per sample (FlopCounterMode, no checkpointing): K=1 {(f0 + f1) / 1e12:.2f} "
         f"TFLOP; each further differentiable step +{f1 / 1e12:.2f} TFLOP. MFU of randomized cells uses the "
         f"expected K (rewardtune {expected_k['rand']:.1f}, TRL {trl_rand_k:.1f} grad steps)." if a.flops else
         "- model FLOPs: not counted (--flops 0), so no MFU"),
        "",
        "## Machine and versions",
        machine_block({"gpu": gpu_name} if gpu_name else None),
        versions_block({"rewardtune": sys.executable} if cuda or not trl_py else
                       {"rewardtune": sys.executable, "TRL": trl_py}),
        "",
        "## Throughput, memory, MFU",
        "",
        f"| cell | samples/s | peak {mem_unit} | MFU |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {fmt(r['sps'])} | {fmt(r['mem'])} | "
                     f"{fmt(r['mfu']) + ' %' if r['mfu']['n'] else 'n/a'} |")
    s1, m1 = cmp("rewardtune draft_k K=1", "TRL AlignProp K=1")
    s2, m2 = cmp("rewardtune alignprop K~U[1,T]", "TRL AlignProp randomized (0,T)")
    lines += ["", f"- K=1: rewardtune/TRL samples/s {s1}, peak memory {m1} (targets: >= 2x, <= 0.6x).",
              f"- randomized: rewardtune/TRL samples/s {s2}, peak memory {m2}.", "",
              "## Largest batch per GPU that fits (powers of two, K=1, one step)", "",
              "| cell | largest batch that ran | its peak GiB | its step s | samples/s | MFU | next tried |",
              "|---|---|---|---|---|---|---|"]

    def mfu_of(step_s: float, b: int) -> str:
        ok = cuda and a.flops and step_s == step_s and step_s > 0
        return f"{100 * (f0 + f1) * b / step_s / (peak * 1e12):.1f} %" if ok else "n/a"

    for label, f in results["fit"].items():
        best = f["largest_ok"]
        nxt = f["stopped_at"]
        nxt_s = (f"{nxt}: {f['why']}" if f["why"] != "limit" else f"{nxt}: not tried (limit {f['limit']})")
        if best:
            lines.append(f"| {label} | {best[0]} | {best[1] if best[1] is None else round(best[1], 1)} | "
                         f"{best[2]:.2f} | {best[0] / best[2]:.3g} | {mfu_of(best[2], best[0])} | {nxt_s} |")
        else:
            lines.append(f"| {label} | none | | | | | {nxt_s} |")
    if results["levers"]:
        base = results["levers"].get("base", {})
        lines += ["", f"## Levers (rewardtune draft_k K=1, batch {batch}, one model, each configuration after the "
                      "last; timed steps back to back)", "",
                  "Levers: " + "; ".join(f"`{k}` {v}" for k, v in LEVERS.items()) + ".", "",
                  "| configuration | batch | s/step | samples/s | samples/s vs base | peak GiB | MFU | "
                  "warm-up s (compile included) |", "|---|---|---|---|---|---|---|---|"]
        for cfg, rec in results["levers"].items():
            if not rec.get("ok"):
                lines.append(f"| {cfg} | {rec.get('batch', '')} | "
                             f"{('OOM' if rec.get('oom') else rec.get('error', '?'))[:160]} | | | | | |")
                continue
            t, b = rec["step_s"], rec.get("batch", batch)
            vs = f"{base['step_s'] / base.get('batch', batch) * b / t:.2f}x" if base.get("ok") else "n/a"
            gib = f"{rec['cuda_peak_gib']:.1f}" if "cuda_peak_gib" in rec else "n/a"
            lines.append(f"| {cfg} | {b} | {t:.3f} | {b / t:.3g} | {vs} | {gib} | {mfu_of(t, b)} | "
                         f"{rec.get('warmup_s', float('nan')):.1f} |")
    lines.append("")
    text = "\n".join(lines)
    write_text(a.out, text + "\n")
    write_text(a.out.with_suffix(".json"), json.dumps(dict(results=results, rows=rows, conf={
        k: v for k, v in conf.items() if k not in ("unet", "vae", "text")}, peak_tflops=peak, gpu=gpu_name,
        elapsed_s=time.time() - t_start), indent=1, default=str))
    partial.unlink(missing_ok=True)
    print(text)
    log("wrote", a.out)


if __name__ == "__main__":
    main()
