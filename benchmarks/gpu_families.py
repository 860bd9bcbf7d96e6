"""GPU cells for the newer families: SDXL-, SD3.5-Medium- and FLUX.1-dev-architecture pipelines with random weights,
trained by rewardtune's engine as the shipped specs train them.

    python benchmarks/gpu_families.py                     # on a CUDA machine: full size, results/gpu_families.md
    python benchmarks/gpu_families.py --size dry          # anywhere: the same code on shrunk configs, CPU, seconds
    python benchmarks/gpu_families.py --families flux     # one family

Each family runs in a fresh process:
1. its pipeline is built from the public configs written out below (nothing is downloaded) with random weights and
   saved with `save_pretrained` (bf16 on a GPU). SD3.5-Medium runs without T5 (its pipeline's optional third
   encoder); FLUX.1-dev has T5-XXL, which encodes the prompts once and leaves the GPU (`model.cache_prompts`);
2. the shipped spec (`specs/sdxl.yaml`, `specs/sd3.yaml`, `specs/flux.yaml`: bf16, gradient checkpointing, LoRA
   r16, VAE slicing, 1024 px, the family's steps and guidance) is loaded with a few fields changed so that every
   family runs the same work: method DRaFT K=1 (the gradient through the last step), one prompt set, no gradient
   accumulation, and the reward rewardtune's PickScore code on a random CLIP ViT-H/14 (PickScore's architecture);
3. `Trainer.train_step()` is timed after a warm-up step: samples/s and peak `torch.cuda.max_memory_allocated`;
4. model FLOPs are counted with torch's FlopCounterMode on one more step with checkpointing off (so recomputation
   is not counted as useful work); MFU = model FLOPs / step time / the card's measured dense bf16 matmul rate.
   When that uncheckpointed step does not fit, MFU is left out.

Not compared with TRL: TRL 0.23.1's AlignProp and DDPO trainers take Stable Diffusion 1.x/2.x pipelines only.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the repository root (rewardtune, uninstalled)
from _harness import RESULTS, ROOT, machine_block, run_worker, versions_block, write_text  # noqa: E402

FAMILIES = ("sdxl", "sd3", "flux")
SPECS = {"sdxl": "specs/sdxl.yaml", "sd3": "specs/sd3.yaml", "flux": "specs/flux.yaml"}
NAMES = {"sdxl": "SDXL base 1.0", "sd3": "SD3.5 Medium", "flux": "FLUX.1-dev"}
PROMPTS = ["a photo of a cat", "a red car", "a bowl of soup", "a dog on grass", "a watercolor of a lighthouse",
           "a bowl of ramen, studio light", "an astronaut riding a horse", "a city street at night"]

# ---- the public configs (each model's config.json), written out ------------------------------------------------
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0,
              eos_token_id=2, pad_token_id=1)
CLIP_G = dict(CLIP_L, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              hidden_act="gelu", projection_dim=1280)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              dense_act_fn="gelu_new", is_gated_act=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
VAE_4 = dict(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
             norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
VAE_16 = dict(VAE_4, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, force_upcast=False)
FULL = {
    "sdxl": dict(
        unet=dict(sample_size=128, in_channels=4, out_channels=4, down_block_types=(
            "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), up_block_types=(
            "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(320, 640, 1280),
            layers_per_block=2, transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32),
        vae=VAE_4, text=CLIP_L, text_2=CLIP_G,
        scheduler=dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                       clip_sample=False, set_alpha_to_one=False, timestep_spacing="leading")),
    "sd3": dict(
        transformer=dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                         attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                         caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                         dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
        vae=dict(VAE_16, scaling_factor=1.5305, shift_factor=0.0609), text=CLIP_L, text_2=CLIP_G,
        scheduler=dict(num_train_timesteps=1000, shift=3.0)),
    "flux": dict(
        transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                         guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        vae=dict(VAE_16, scaling_factor=0.3611, shift_factor=0.1159), text=CLIP_L, t5=T5_XXL, t5_len=512,
        scheduler=dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                       max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)),
}
# The dry size: the same builders on shrunk configs (same block types and conditioning), for a CPU in seconds.
_TEXT_DRY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
_VAE_DRY = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                block_out_channels=(32, 32), layers_per_block=1, sample_size=32)
DRY = {
    "sdxl": dict(FULL["sdxl"], unet=dict(
        FULL["sdxl"]["unet"], sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(4, 8), cross_attention_dim=64,
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8),
        vae=dict(FULL["sdxl"]["vae"], **_VAE_DRY), text=dict(CLIP_L, **_TEXT_DRY), text_2=dict(CLIP_G, **_TEXT_DRY)),
    "sd3": dict(FULL["sd3"], transformer=dict(
        FULL["sd3"]["transformer"], sample_size=8, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=8,
        dual_attention_layers=(0,)), vae=dict(FULL["sd3"]["vae"], **_VAE_DRY), text=dict(CLIP_L, **_TEXT_DRY),
        text_2=dict(CLIP_G, **_TEXT_DRY)),
    "flux": dict(FULL["flux"], transformer=dict(
        FULL["flux"]["transformer"], num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
        vae=dict(FULL["flux"]["vae"], **_VAE_DRY), text=dict(CLIP_L, **_TEXT_DRY),
        t5=dict(T5_XXL, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8),
        t5_len=16),
}
RUN = {"full": dict(precision="bf16", reward="h14-random", resolution=None, steps=None, batch=1),
       "dry": dict(precision="fp32", reward="tiny", resolution=32, steps=2, batch=2)}


def build_pipeline(family: str, conf: dict, path: Path, device: str, dtype_name: str) -> dict[str, int]:
    """The family's diffusers pipeline with random weights from `conf`, saved to `path` (once); parameter counts."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from rewardtune.zoo.tokenizers import TINY_CLIP_BOS, TINY_CLIP_EOS, tiny_clip_tokenizer, tiny_t5_tokenizer

    def clip_config(c: dict) -> CLIPTextConfig:  # the special ids of the tokenizer used (tokenizing is not measured)
        return CLIPTextConfig(**{**c, "bos_token_id": TINY_CLIP_BOS, "eos_token_id": TINY_CLIP_EOS,
                                 "pad_token_id": TINY_CLIP_EOS})

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    parts: dict = {}
    stamp = path / ".complete"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the saved dtype: FLUX and T5-XXL in float32 would take 67 GB
    with torch.device("meta" if stamp.exists() else device):  # saved already: only the counts are wanted
        vae = diffusers.AutoencoderKL(**conf["vae"])
        text = conf["text"]
        if family == "sdxl":
            parts["unet"] = diffusers.UNet2DConditionModel(**conf["unet"])
            parts["text_encoder"] = CLIPTextModel(clip_config(text))
            parts["text_encoder_2"] = CLIPTextModelWithProjection(clip_config(conf["text_2"]))
        elif family == "sd3":
            parts["transformer"] = diffusers.SD3Transformer2DModel(**conf["transformer"])
            parts["text_encoder"] = CLIPTextModelWithProjection(clip_config(text))
            parts["text_encoder_2"] = CLIPTextModelWithProjection(clip_config(conf["text_2"]))
        else:
            parts["transformer"] = diffusers.FluxTransformer2DModel(**conf["transformer"])
            parts["text_encoder"] = CLIPTextModel(clip_config(text))
            parts["text_encoder_2"] = T5EncoderModel(T5Config(**conf["t5"]))
    torch.set_default_dtype(default)
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in [("vae", vae), *parts.items()]}
    if not stamp.exists():
        tok = tiny_clip_tokenizer(text["max_position_embeddings"])
        mods = {n: m.to(dtype) for n, m in parts.items()}
        if family == "sdxl":
            pipe = diffusers.StableDiffusionXLPipeline(
                vae=vae.to(dtype), tokenizer=tok, tokenizer_2=tok, scheduler=diffusers.DDIMScheduler(
                    **conf["scheduler"]), **mods)
        elif family == "sd3":
            pipe = diffusers.StableDiffusion3Pipeline(
                vae=vae.to(dtype), tokenizer=tok, tokenizer_2=tok, text_encoder_3=None, tokenizer_3=None,
                scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**conf["scheduler"]), **mods)
        else:
            pipe = diffusers.FluxPipeline(
                vae=vae.to(dtype), tokenizer=tok, tokenizer_2=tiny_t5_tokenizer(conf["t5_len"]),
                scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**conf["scheduler"]), **mods)
        pipe.save_pretrained(path)
        stamp.write_text("ok")
    return counts


def spec_for(family: str, pipe_dir: Path, run: dict, batch: int) -> dict:
    """The shipped spec of the family, changed only where every family must do the same work (see the top)."""
    import yaml

    spec = yaml.safe_load((ROOT / SPECS[family]).read_text())
    spec["model"]["pretrained"] = str(pipe_dir)
    spec["prompts"] = {"train": PROMPTS, "eval": PROMPTS[:1]}
    spec["objective"] = [{"reward": "bench-pickscore"}]
    spec["method"] = {"name": "draft_k", "k": 1}
    spec["train"].update(batch_size=batch, grad_accum=1, warmup_steps=0, checkpoint_every=10**6)
    spec["logging"] = {"images_every": 0, "eval_prompts": 1, "progress": False}
    if run["resolution"]:
        spec["sampling"]["resolution"] = run["resolution"]
    if run["steps"]:
        spec["sampling"]["steps"] = run["steps"]
    if run["precision"] == "fp32":
        spec["model"]["dtype"] = "float32"
        spec["train"]["mixed_precision"] = "no"
    return spec


def worker(a: argparse.Namespace) -> dict:
    """One family, in this process: build, load through the spec, time steps, count FLOPs."""
    import dataclasses
    from types import SimpleNamespace

    import torch
    from _step_worker import build_reward, count_flops, trainer_step

    from rewardtune.engine.build import build_trainer
    from rewardtune.registry import register_reward
    from rewardtune.spec.load import load_spec

    cuda = a.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(1)
    run = RUN[a.size]
    conf = (FULL if a.size == "full" else DRY)[a.family]
    key = hashlib.sha1(json.dumps(conf, sort_keys=True, default=str).encode()).hexdigest()[:10]
    pipe_dir = a.workdir / f"{a.family}-random-{key}"  # a config change builds anew
    t0 = time.perf_counter()
    counts = build_pipeline(a.family, conf, pipe_dir, a.device, "bfloat16" if run["precision"] == "bf16" else "float32")
    if cuda:
        torch.cuda.empty_cache()
    result: dict = {"family": a.family, "params": counts, "build_s": time.perf_counter() - t0}
    ns = SimpleNamespace(device=a.device, precision=run["precision"], reward=run["reward"], reward_image_size=32,
                         reward_dir="" if run["reward"] != "tiny" else str(_tiny_clip()))
    register_reward("bench-pickscore", differentiable=True)(build_reward(ns))
    spec = load_spec(spec_for(a.family, pipe_dir, run, a.batch or run["batch"]))
    result["settings"] = {"resolution": spec.sampling.resolution, "steps": spec.sampling.steps,
                          "guidance": spec.sampling.guidance_scale, "batch": spec.train.batch_size,
                          "lora_rank": spec.model.trainable.rank, "dtype": spec.model.dtype,
                          "mixed_precision": spec.train.mixed_precision,
                          "gradient_checkpointing": spec.train.gradient_checkpointing}
    t0 = time.perf_counter()
    trainer = build_trainer(spec, output_dir=tempfile.mkdtemp(prefix=f"rt-{a.family}-"), progress=False)
    result["load_s"] = time.perf_counter() - t0

    def sync():
        if cuda:
            torch.cuda.synchronize()

    step = trainer_step(trainer)

    try:
        for _ in range(a.warmup):
            step()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        result.update(ok=True, step_s=times)
        if cuda:
            result["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except torch.OutOfMemoryError:
        result.update(ok=False, oom=True)
        return result
    if a.flops:  # one step more, checkpointing off: recomputation is not model work
        trainer.sampling = dataclasses.replace(trainer.sampling, use_checkpoint=False)
        try:
            result["flops_per_sample"] = count_flops(step) / spec.train.batch_size
        except torch.OutOfMemoryError:
            result["flops_per_sample"] = None
            result["flops_note"] = "the uncheckpointed step did not fit"
    return result


def _tiny_clip() -> Path:
    from rewardtune.zoo import materialize

    return materialize("zoo:clip")


def _millions(n: int) -> str:
    return f"{n / 1e6:,.0f}M" if n >= 1e7 else f"{n / 1e6:.2g}M"


def report(results: dict, size: str, cuda: bool, peak: float, gpu: str, args: argparse.Namespace) -> str:
    lines = [f"# GPU cells of the newer families: random weights "
             f"({'GPU' if cuda else 'DRY RUN on a CPU: shrunk configs, nothing here is a GPU measurement'})", "",
             "Produced by `python benchmarks/gpu_families.py" + (" --size dry" if size == "dry" else "") + "` "
             "(the script's docstring says what each cell runs). "
             f"{args.steps} timed step(s) after {args.warmup} warm-up, each family in a fresh process.", "",
             "| family | parameters (denoiser / all) | resolution, steps, guidance | batch | samples/s | step s | "
             "peak GiB | model TFLOP / sample | MFU |", "|---|---|---|---|---|---|---|---|---|"]
    for fam, r in results.items():
        if not r.get("ok"):
            why = "OOM" if r.get("oom") else (r.get("error") or "failed")[-200:].replace("\n", " ")
            lines.append(f"| {NAMES[fam]} | | | | {why} | | | | |")
            continue
        p = r["params"]
        den = p.get("unet", p.get("transformer", 0))
        s = r["settings"]
        t = sorted(r["step_s"])[len(r["step_s"]) // 2]
        sps = s["batch"] / t
        f = r.get("flops_per_sample")
        mfu = f"{100 * f * sps / (peak * 1e12):.1f} %" if f and cuda and peak == peak else "n/a"
        mem = f"{r['cuda_peak_gib']:.1f}" if "cuda_peak_gib" in r else "n/a (CPU)"
        flops = f"{f / 1e12:.3g}" if f else "n/a"
        lines.append(f"| {NAMES[fam]} | {_millions(den)} / {_millions(sum(p.values()))} | {s['resolution']} px, "
                     f"{s['steps']}, {s['guidance']} | {s['batch']} | {sps:.3g} | {t:.3g} | {mem} | {flops} | {mfu} |")
    lines += ["", "Every cell: method DRaFT K=1, LoRA rank "
              + ", ".join(sorted({str(r["settings"]["lora_rank"]) for r in results.values() if r.get("ok")}) or "?")
              + (", bf16 weights, gradient checkpointing, VAE slicing; reward: PickScore's code on a random "
                 "ViT-H/14." if cuda else ", float32; reward: PickScore's code on the tiny CLIP twin."),
              f"- device: {gpu or 'CPU'}; measured dense bf16 matmul (8192^3): "
              + (f"{peak:.0f} TFLOP/s" if cuda else "n/a"), "", "## Machine and versions",
              machine_block({"gpu": gpu} if gpu else None), versions_block({"rewardtune": sys.executable}), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["auto", "full", "dry"], default="auto")
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--batch", type=int, default=0, help="per GPU (default: 1 full, 2 dry)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--flops", type=int, default=1, help="count model FLOPs for MFU (0: skip)")
    ap.add_argument("--budget-s", type=float, default=600, help="start no family after this")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rewardtune-gpu-families")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_families.md")
    ap.add_argument("--worker", choices=FAMILIES, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    a.size = a.size if a.size != "auto" else ("full" if cuda else "dry")
    a.workdir = a.workdir / a.size
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.worker:
        a.family, a.device = a.worker, a.device or ("cuda" if cuda else "cpu")
        try:
            out = worker(a)
        except Exception as e:  # noqa: BLE001  (reported in the table, the other families still run)
            import traceback

            out = {"family": a.family, "ok": False, "error": traceback.format_exc()[-1500:] or str(e)}
        print("RESULT " + json.dumps(out), flush=True)
        return 0
    if a.size == "full" and not cuda:
        print("gpu_families: the full size needs a CUDA device; pass --size dry", file=sys.stderr)
        return 2
    from gpu_scale import matmul_peak_tflops

    t_start = time.time()
    peak = matmul_peak_tflops("cuda") if cuda else float("nan")
    gpu = torch.cuda.get_device_name(0) if cuda else ""
    del torch  # each family runs in its own process, which owns the device while it runs
    results: dict = {}
    for fam in a.families:
        if time.time() - t_start > a.budget_s:
            results[fam] = {"ok": False, "error": "not started: time budget"}
            continue
        args = [__file__, "--worker", fam, "--size", a.size, "--warmup", a.warmup, "--steps", a.steps, "--flops",
                a.flops, "--workdir", a.workdir.parent, "--batch", a.batch]
        try:
            # a family started inside the budget may finish up to 2 minutes past it
            results[fam] = run_worker(sys.executable, args, timeout=max(60.0, a.budget_s - (time.time() - t_start) + 120))
        except Exception as e:  # noqa: BLE001
            results[fam] = {"ok": False, "error": str(e)[-1500:]}
        r = results[fam]
        print(f"[{time.time() - t_start:5.0f}s] {fam}: " + (
            f"{[round(t, 3) for t in r['step_s']]} s/step"
            + (f", peak {r['cuda_peak_gib']:.1f} GiB" if "cuda_peak_gib" in r else "") if r.get("ok") else
            ("OOM" if r.get("oom") else r.get("error", "")[-600:])), flush=True)
    text = report(results, a.size, cuda, peak, gpu, a)
    write_text(a.out, text)
    write_text(a.out.with_suffix(".json"), json.dumps({"size": a.size, "gpu": gpu, "peak_tflops": peak,
                                                       "results": results}, indent=1, default=str) + "\n")
    print(text)
    return 0 if all(r.get("ok") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
