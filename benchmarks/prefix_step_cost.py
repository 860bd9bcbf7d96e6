"""What one step of the no-grad prefix costs: rewardtune's prefix vs TRL's grad + checkpoint + detach.

    python benchmarks/prefix_step_cost.py [--latents 8 16] [--threads 1]

Times one CFG UNet call (batch 2 prompts x [uncond; cond]) of the tiny SD-1.x twin with LoRA r=4, four ways:
rewardtune's prefix (`torch.no_grad()` with the LoRA folded into the weights, `FoldedLora`), plain
`torch.no_grad()` through the LoRA layers, with grad inside non-reentrant `torch.utils.checkpoint` and the output
detached (TRL 0.23.1's `pipeline_step_with_grad` before its truncation point), and with grad but no checkpoint,
detached. The ratio bounds the K=1 speed-up of `train_step_vs_trl.py` as T grows. Prints median (min–max) over
repeats of 10 calls each, the calls interleaved across the four ways.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    print("| latent | no_grad, LoRA folded (rewardtune) | no_grad through LoRA | grad + checkpoint, detached (TRL) | "
          "grad, no checkpoint, detached | TRL / rewardtune |")
    print("|---|---|---|---|---|---|")
    for lat in a.latents:
        measure(lat, a.repeats)


def measure(lat: int, repeats: int) -> None:
    import torch
    from torch.utils.checkpoint import checkpoint

    from rewardtune.engine.pipeline import FoldedLora, LoraSettings, load_diffusion

    # the engine's own loader: frozen weights, SDPA, LoRA r=4 alpha 4 (gaussian) on to_q/to_k/to_v/to_out.0
    diff = load_diffusion("zoo:sd1" if lat == 8 else f"zoo:sd1.latent{lat}", lora=LoraSettings(rank=4))
    unet = diff.unet
    x = torch.randn(4, 4, lat, lat)
    emb = torch.randn(4, 16, unet.config.cross_attention_dim)
    t = torch.tensor([500])
    folded = FoldedLora(diff)
    assert FoldedLora.eligible(diff)

    def folded_no_grad():
        with torch.no_grad():
            folded.on()
            try:
                return unet(x, t, encoder_hidden_states=emb).sample
            finally:
                folded.off()

    def no_grad():
        with torch.no_grad():
            return unet(x, t, encoder_hidden_states=emb).sample

    def trl_ckpt():
        return checkpoint(unet, x, t, emb, use_reentrant=False)[0].detach()

    def grad_detached():
        return unet(x, t, encoder_hidden_states=emb).sample.detach()

    ways = {"folded": folded_no_grad, "no_grad": no_grad, "trl_ckpt": trl_ckpt, "grad": grad_detached}
    res: dict[str, list[float]] = {k: [] for k in ways}
    for rep in range(repeats + 1):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            for _ in range(10):
                fn()
            if rep:  # the first round warms up
                res[name].append((time.perf_counter() - t0) / 10 * 1000)

    def f(v):
        return f"{statistics.median(v):.1f} ms ({min(v):.1f}–{max(v):.1f})"

    ratio = statistics.median(res["trl_ckpt"]) / statistics.median(res["folded"])
    print(f"| {lat} | {f(res['folded'])} | {f(res['no_grad'])} | {f(res['trl_ckpt'])} | {f(res['grad'])} "
          f"| {ratio:.2f}x |")


if __name__ == "__main__":
    main()
