"""One measurement in a fresh process: build rewardtune's or TRL's training step, time it, report peak memory.

Runs in the project venv (`--impl rewardtune`) or in TRL's venv (`--impl trl`); the repository root is on
PYTHONPATH in both, so both sides score with the very same reward object (`rewardtune.rewards.pickscore`).

Prints `RESULT {json}`: per-step wall times (warm-up steps excluded), peak RSS over the steps (VmHWM after a
reset just before the first step), the RSS before it, and on CUDA `torch.cuda.max_memory_allocated` over the steps.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import peak_rss_mb, reset_peak_rss, rss_mb, rss_parts_mb  # noqa: E402

PROMPTS = ["a photo of a cat", "a red car", "a bowl of soup", "a dog on grass", "a watercolor of a lighthouse",
           "a bowl of ramen, studio light", "an astronaut riding a horse", "a city street at night"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["rewardtune", "trl"], required=True)
    ap.add_argument("--method", default="alignprop", help="rewardtune method: alignprop | draft_k")
    ap.add_argument("--pipe-dir", required=True)
    ap.add_argument("--reward", default="tiny", help="tiny (PickScore code on the tiny CLIP twin) | h14-random")
    ap.add_argument("--reward-dir", default="", help="tiny CLIP directory (for --reward tiny)")
    ap.add_argument("--reward-image-size", type=int, default=32)
    ap.add_argument("--resolution", type=int, required=True, help="image side in pixels")
    ap.add_argument("--steps-T", type=int, default=10)
    ap.add_argument("--k", default="1", help="int, 'all', or 'rand' (AlignProp randomized truncation)")
    ap.add_argument("--rand-min", type=int, default=0, help="TRL truncated_rand_backprop_minmax[0]")
    ap.add_argument("--ckpt", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count-flops", type=int, default=0, help="also count FLOPs of one step (no checkpointing)")
    ap.add_argument("--tensor-mem", type=int, default=0,
                    help="also run one profiled step and report its peak of live tensor bytes (CPU)")
    ap.add_argument("--levers", default="",
                    help="rewardtune only: comma-separated configurations, each levers joined by '+' (" +
                         ", ".join(f"{k}: {v}" for k, v in LEVERS.items()) + "), measured one after another "
                         "on one loaded model; the timed steps of a configuration run back to back and are "
                         "timed together")
    ap.add_argument("--deadline-s", type=float, default=0,
                    help="lever sweep: start no configuration after this many seconds (0: no limit)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend of the compile/graphs levers ('eager': tracing only, for a dry run)")
    return ap.parse_args(argv)


LEVERS = {
    "base": "nothing on (AdamW, contiguous, default SDPA choice, eager, metrics read every step)",
    "fused": "train.fused_adam",
    "nosync": "train.fused_adam, and the steps' numbers read once after the timed steps (no host sync in a step)",
    "cl": "train.channels_last (UNet and VAE)",
    "flash": "SDPA restricted to the flash kernel",
    "efficient": "SDPA restricted to the memory-efficient kernel",
    "compile": "train.compile_prefix=default (torch.compile of the no-grad prefix)",
    "graphs": "train.compile_prefix=reduce-overhead (compiled prefix replayed as CUDA graphs)",
    "bN": "batch N instead of the throughput batch (e.g. b16)",
}


# ---------------------------------------------------------------------------------------------------- reward
def h14_config():
    """PickScore's architecture (CLIP ViT-H/14, laion2B config) as a transformers CLIPConfig; random weights."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                         num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                         projection_dim=1024, bos_token_id=49406, eos_token_id=49407, pad_token_id=1),
        vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="gelu", projection_dim=1024),
        projection_dim=1024, logit_scale_init_value=4.6052,
    )


def build_reward(a: argparse.Namespace):
    import torch

    from rewardtune.rewards.pickscore import PickScore

    device = torch.device(a.device)
    dtype = "bfloat16" if a.precision == "bf16" else "float32"
    if a.reward == "tiny":
        return PickScore(weights=a.reward_dir, processor=None, image_size=a.reward_image_size, max_length=16,
                         device=device, dtype=dtype, max_batch_size=1024).load()

    class RandomPickScoreH14(PickScore):
        """PickScore's code path on a randomly initialised ViT-H/14 (no weights exist offline)."""

        def _load(self):
            from transformers import CLIPModel

            from rewardtune.rewards._util import token_max_length
            from rewardtune.zoo.tokenizers import tiny_clip_tokenizer

            torch.manual_seed(1234)
            with torch.device(self.device):
                self.model = CLIPModel(h14_config()).to(self.dtype)
            self.tokenizer = tiny_clip_tokenizer(77)  # ids < 49408; the tokenizer is not what is measured
            self.max_length = token_max_length(self.tokenizer, 77)
            return [self.model]

    return RandomPickScoreH14(weights="unused", processor=None, image_size=224, max_length=77, device=device,
                              dtype=dtype, max_batch_size=1024).load()


# ------------------------------------------------------------------------------------------------ rewardtune
def trainer_step(trainer):
    """One optimizer step of a rewardtune Trainer as a callable (returning the step's K), as the training loop takes
    it; a skipped (non-finite) step is an error in a benchmark. The trainer is at `step.trainer`."""
    def step():
        metrics, _out, skipped = trainer.train_step()
        trainer.step += 1
        if skipped:
            raise RuntimeError(f"rewardtune skipped a step (non-finite): {metrics}")
        return metrics.get("k", float("nan"))

    step.trainer = trainer  # type: ignore[attr-defined]
    return step


def rewardtune_step(a: argparse.Namespace, reward, diff=None, *, fused_adam: bool = False):
    """rewardtune's own training step: `Trainer.train_step()` of the engine (method loss, backward, grad clip,
    AdamW, metrics), on a Diffusion built as `engine.build` builds it from a spec."""
    import torch

    from rewardtune.engine.distributed import DistInfo
    from rewardtune.engine.objective import Objective, ObjectiveTerm
    from rewardtune.engine.pipeline import LoraSettings, load_diffusion
    from rewardtune.engine.trainer import Trainer, TrainSettings
    from rewardtune.engine.types import SamplingSettings

    device = torch.device(a.device)
    bf16 = a.precision == "bf16"
    if diff is None:
        diff = load_diffusion(a.pipe_dir, dtype="bfloat16" if bf16 else "float32", device=device,
                              lora=LoraSettings(rank=a.rank, alpha=a.rank))
    if bf16:
        diff.amp_dtype = torch.bfloat16
    sampling = SamplingSettings(steps=a.steps_T, guidance=a.cfg, eta=a.eta, resolution=a.resolution,
                                use_checkpoint=bool(a.ckpt))
    objective = Objective([ObjectiveTerm(label="pickscore", reward=reward)])
    # TRL's AlignPropConfig defaults, so both sides run the same optimizer and clipping
    settings = TrainSettings(steps=10**6, batch_size=a.batch, lr=a.lr, weight_decay=1e-4, betas=(0.9, 0.999),
                             grad_clip=1.0, seed=a.seed, mixed_precision="bf16" if bf16 else "no", progress=False,
                             fused_adam=fused_adam)
    trainer = Trainer(diff, objective, make_method(a), sampling, settings, PROMPTS,
                      Path(tempfile.mkdtemp(prefix="rt_bench_")), info=DistInfo())
    diff.unet.train()
    step = trainer_step(trainer)
    return step, {"trainable_params": sum(p.numel() for p in trainer.params), "method": trainer.method.name}, diff


def lever_sweep(a: argparse.Namespace, reward) -> dict:
    """Each configuration of `--levers` on one loaded model: warm-up steps (compilation included), then the timed
    steps back to back, one synchronization at their end; wall time per step, peak CUDA memory. A failing
    configuration is recorded and the sweep goes on."""
    import torch

    cuda = a.device.startswith("cuda")
    out: dict = {}
    diff = None
    t_start = time.perf_counter()
    for config in [c for c in a.levers.split(",") if c]:
        on = set(config.split("+"))
        batches = {x for x in on if x[:1] == "b" and x[1:].isdigit()}
        unknown = on - set(LEVERS) - batches
        if unknown or len(batches) > 1:
            out[config] = {"ok": False, "error": f"unknown lever(s) {sorted(unknown) or sorted(batches)}"}
            continue
        if a.deadline_s and time.perf_counter() - t_start > a.deadline_s:
            out[config] = {"ok": False, "error": "not run: time budget"}
            continue
        rec: dict = {"levers": sorted(on - {"base"}), "batch": int(min(batches)[1:]) if batches else a.batch}
        try:
            sub = argparse.Namespace(**{**vars(a), "batch": rec["batch"]})
            step, _info, diff = rewardtune_step(sub, reward, diff, fused_adam=bool(on & {"fused", "nosync"}))
            trainer = step.trainer
            fmt = torch.channels_last if "cl" in on else torch.contiguous_format
            for m in (diff.denoiser, diff.vae):
                m.to(memory_format=fmt)
            mode = "reduce-overhead" if "graphs" in on else ("default" if "compile" in on else None)
            if mode is None:
                diff.prefix_denoiser = None
            elif a.compile_backend == "inductor":
                diff.prefix_denoiser = torch.compile(diff.denoiser, mode=mode, dynamic=False)
            else:
                diff.prefix_denoiser = torch.compile(diff.denoiser, backend=a.compile_backend, dynamic=False)
            kernels = [b for name, b in (("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"))
                       if name in on]
            if kernels:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                ctx = sdpa_kernel([getattr(SDPBackend, b) for b in kernels])
            else:
                ctx = contextlib.nullcontext()

            def run(n: int, nosync: bool = "nosync" in on, trainer=trainer, step=step) -> list:
                if not nosync:
                    return [step() for _ in range(n)]
                pending = []
                for _ in range(n):
                    pending.append(trainer.step_async())
                    trainer.step += 1
                read = trainer.read_steps(pending)
                if any(bad for _, _, bad in read):
                    raise RuntimeError("rewardtune skipped a step (non-finite)")
                return [m.get("k", float("nan")) for m, _, _ in read]

            with ctx:
                t0 = time.perf_counter()
                run(a.warmup)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                rec["warmup_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                run(a.steps)
                if cuda:
                    torch.cuda.synchronize()
                rec["step_s"] = (time.perf_counter() - t0) / max(1, a.steps)
            if cuda:
                rec["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            rec["rss_peak_mb"] = peak_rss_mb()  # the process's, over every configuration so far
            rec["ok"] = True
        except Exception as e:  # noqa: BLE001  (one failing lever must not lose the others)
            oom = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()
            rec.update(ok=False, oom=oom, error=f"{type(e).__name__}: {str(e)[-600:]}")
        finally:
            if diff is not None:
                diff.prefix_denoiser = None
            step = trainer = None  # noqa: F841
            if cuda:
                torch.cuda.empty_cache()
        out[config] = rec
    return out


def make_method(a: argparse.Namespace):
    from rewardtune.engine.methods.alignprop import AlignPropMethod
    from rewardtune.engine.methods.draft_k import DraftKMethod

    if a.method == "draft_k":
        return DraftKMethod(k=int(a.k))
    if a.k == "all":
        return AlignPropMethod(k=None)
    if a.k == "rand":
        return AlignPropMethod(k_range=(max(1, a.rand_min), a.steps_T))
    return AlignPropMethod(k=int(a.k))


# ------------------------------------------------------------------------------------------------------- TRL
def trl_step(a: argparse.Namespace, reward):
    """TRL 0.23.1's AlignPropTrainer.step on the same pipeline directory and reward."""
    from accelerate import PartialState

    warnings.filterwarnings("ignore")
    from trl import AlignPropConfig, AlignPropTrainer, DefaultDDPOStableDiffusionPipeline

    PartialState()  # TRL's accelerate logger needs an accelerate state before the trainer exists
    ckpt = bool(a.ckpt)

    class Pipeline(DefaultDDPOStableDiffusionPipeline):
        # AlignPropConfig has no switch for it; rgb_with_grad(gradient_checkpoint=True) is TRL's hard default
        def rgb_with_grad(self, *args, **kwargs):
            kwargs["gradient_checkpoint"] = ckpt
            return super().rgb_with_grad(*args, **kwargs)

    with contextlib.redirect_stderr(open(os.devnull, "w")):
        pipe = Pipeline(a.pipe_dir, use_lora=True)  # LoRA r=4, alpha 4, gaussian, to_q/k/v/out.0 (TRL fixed)
    if a.device != "cpu":
        pipe.sd_pipeline.to(a.device)

    def reward_fn(images, prompts, metadata):
        return reward(images, list(prompts)), {}

    counter = iter(range(10**9))

    def prompt_fn():
        return PROMPTS[next(counter) % len(PROMPTS)], {}

    work = tempfile.mkdtemp(prefix="trl_bench_")
    t = a.steps_T
    if a.k == "rand":
        trunc = dict(truncated_backprop_rand=True, truncated_rand_backprop_minmax=(a.rand_min, t))
    else:
        k = t if a.k == "all" else int(a.k)
        trunc = dict(truncated_backprop_rand=False, truncated_backprop_timestep=t - k)  # eps of steps i < T-K detached
    cfg = AlignPropConfig(
        num_epochs=10**6, sample_num_steps=t, sample_guidance_scale=a.cfg, sample_eta=a.eta,
        train_batch_size=a.batch, train_learning_rate=a.lr, mixed_precision="bf16" if a.precision == "bf16" else "no",
        log_with=None, save_freq=10**9, seed=a.seed, project_kwargs={"project_dir": work, "logging_dir": work},
        **trunc)
    trainer = AlignPropTrainer(cfg, reward_fn, prompt_fn, pipe)
    trainable = [p for n, p in pipe.unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n, p in pipe.unet.named_parameters() if p.requires_grad)
    state = {"epoch": 0, "gs": 0}

    def step():
        state["gs"] = trainer.step(state["epoch"], state["gs"])
        state["epoch"] += 1
        return float("nan")

    return step, {"trainable_params": sum(p.numel() for p in trainable), "method": "AlignPropTrainer"}, pipe


# ---------------------------------------------------------------------------------------------------- memory
def step_tensor_peak_mb(step) -> float:
    """Peak of live tensor bytes allocated during one step, above what was live when it started (CPU)."""
    from rewardtune.engine.profiling import peak_cpu_tensor_bytes

    return peak_cpu_tensor_bytes(step) / 2**20


# ---------------------------------------------------------------------------------------------------- FLOPs
def count_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step()
    return float(fc.get_total_flops())


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    result: dict = {"impl": a.impl, "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        reward = build_reward(a)
        if a.levers:
            result["levers"] = lever_sweep(a, reward)
            result["ok"] = any(r.get("ok") for r in result["levers"].values())
            print("RESULT " + json.dumps(result), flush=True)
            return
        step, info, _keep = (rewardtune_step if a.impl == "rewardtune" else trl_step)(a, reward)
        result.update(info)

        def sync():
            if cuda:
                torch.cuda.synchronize()

        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result["rss_before_mb"] = rss_mb()
        result["rss_anon_before_mb"] = rss_parts_mb()["RssAnon"]
        result["hwm_reset"] = reset_peak_rss()
        times, ks = [], []
        for i in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            k = step()
            sync()
            if i >= a.warmup:
                times.append(time.perf_counter() - t0)
                ks.append(k)
        result["step_s"] = times
        result["step_k"] = ks  # rewardtune: the K each timed step used (randomized truncation); TRL: NaN
        result["rss_peak_mb"] = peak_rss_mb()
        # the peak's anonymous part, growth over the window: VmHWM less the file-backed and shmem pages mapped at
        # the end (library pages stay mapped once touched), less the anonymous memory held before the first step
        parts = rss_parts_mb()
        result["rss_file_end_mb"] = parts["RssFile"]
        result["anon_growth_mb"] = (result["rss_peak_mb"] - parts["RssFile"] - parts["RssShmem"]
                                    - result["rss_anon_before_mb"])
        if cuda:
            result["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result["cuda_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        if a.tensor_mem:
            result["tensor_peak_mb"] = step_tensor_peak_mb(step)
        if a.count_flops:
            result["flops_per_step"] = count_flops(step)
        result["ok"] = True
    except torch.OutOfMemoryError as e:  # noqa: F841  (max-batch search)
        result.update(ok=False, oom=True)
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            result.update(ok=False, oom=True)
        else:
            raise
    print("RESULT " + json.dumps(result), flush=True)


def preload(impl: str) -> None:
    """Import the heavy modules once, in the fork server, so each forked measurement skips ~5 CPU-seconds."""
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPModel, CLIPTextModel  # noqa: F401

    import rewardtune.rewards.pickscore  # noqa: F401
    if impl == "trl":
        warnings.filterwarnings("ignore")
        import trl  # noqa: F401
        from trl import AlignPropTrainer  # noqa: F401
    else:
        import rewardtune.engine.methods.alignprop  # noqa: F401
        import rewardtune.engine.pipeline  # noqa: F401


def serve(impl: str) -> None:
    """Fork server: read one JSON argv list per stdin line; run each in a freshly forked child.

    The child is a new process (its own address space, VmHWM reset before its first step), so nothing of one
    measurement's peak reaches the next; the parent never runs a torch op, so no thread pool is forked.
    """
    preload(impl)
    out = sys.stdout
    print("READY", flush=True)
    for line in sys.stdin:
        argv = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                main(argv)
            except BaseException:  # noqa: BLE001
                import traceback

                print("FAILED " + json.dumps(traceback.format_exc()[-4000:]), flush=True)
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(f"DONE {status}", file=out, flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
    else:
        main()
