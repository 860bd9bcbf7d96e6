"""Images per second of `rewardtune score` against image-reward 1.5's own per-image `inference_rank`.

Both score the same image files against the same prompt with the same random-weight ImageReward model (BLIP
ViT-L/16 + BERT-base with cross-attention + the 768-1024-128-64-16-1 head, as ImageReward-v1.0), side by side
in one run: the reference runs in its own venv as a worker process, and every repeat times the reference and then
rewardtune, so machine noise hits both alike. Timed on both sides: reading the files, preprocessing, the forward
passes and the head (model loading excluded; both already warmed up once).

- reference: `ImageReward.inference_rank(prompt, paths)` inside `torch.no_grad()` (as its README calls it);
  it opens, preprocesses and encodes one image at a time.
- rewardtune: `rewardtune.scoring.score_files(paths, {"imagereward": reward}, prompt=..., batch_size=B)`, the
  function `rewardtune score` runs: each image decoded once, same-size images scored in batches of B.

The reference venv needs image-reward 1.5 with transformers<5 and torchvision (never in the project venv):
`bash scripts/parity/setup_venvs.sh` builds /work/refvenvs/ir. The reference model gets random weights (seeded;
head weights re-drawn at a larger scale so scores spread) and is saved as `ImageReward.safetensors` +
`med_config.json` + a small BERT vocabulary; rewardtune loads that directory through its own key mapping. The
scores of both sides are compared as a check that the same model ran.

    /work/venv/bin/python benchmarks/score_throughput.py                # full size, writes the results file
    /work/venv/bin/python benchmarks/score_throughput.py --size tiny --images 8 --repeats 2 --out -   # smoke run

Options: --ref-python (default /work/refvenvs/ir/bin/python), --images N (512x512 PNGs made from the ImageReward
example photos), --repeats R, --batch-sizes 1,8,16, --threads T (torch threads on both sides), --device cpu|cuda,
--out FILE (rewrites this machine's section) or -.

On a machine that has torch + torchvision but no reference venv (the GPU machine): copy the venv's transformers,
tokenizers, huggingface_hub, ImageReward, fairscale, timm and requests packages into a folder and run both sides
with that machine's interpreter, `--ref-python $(which python) --ref-pythonpath FOLDER --device cuda`.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "fixtures" / "images"
PROMPT = "a painting of an ocean with clouds and birds, day time, low depth field effect"
SIZES = {  # vision (width, depth, heads, patch) and BERT (hidden, layers, heads, intermediate) of the model
    "full": dict(vis=(1024, 24, 16, 16), txt=(768, 12, 12, 3072), vocab=30524),  # ImageReward-v1.0's shapes
    "tiny": dict(vis=(64, 2, 4, 16), txt=(64, 2, 4, 128), vocab=None),
}


# ============================================================================================ reference worker
def worker(args) -> None:
    """Runs in the reference venv: build image-reward's model with random weights, save it, then time
    `inference_rank` each time a line arrives on stdin. Replies are JSON lines on stdout."""
    import types

    sys.modules.setdefault("clip", types.ModuleType("clip"))  # imported by ImageReward, unused for scoring
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    for n in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        setattr(mu, n, getattr(pu, n))  # moved in transformers 4.4x; image-reward imports them from the old place
    # ImageReward/__init__ imports its training code (ReFL: datasets, diffusers...); load only the model modules
    spec = importlib.util.find_spec("ImageReward")
    pkg = types.ModuleType("ImageReward")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["ImageReward"] = pkg

    import ImageReward.models.BLIP.blip as ir_blip
    import ImageReward.models.BLIP.blip_pretrain as ir_pre
    import torch
    import transformers
    from ImageReward.ImageReward import MLP
    from ImageReward.ImageReward import ImageReward as IRModel
    from ImageReward.models.BLIP.vit import VisionTransformer
    from transformers import BertTokenizer

    torch.set_num_threads(args.threads)
    cfg = SIZES[args.size]
    mdir = Path(args.model_dir)
    mdir.mkdir(parents=True, exist_ok=True)
    # bert-base-uncased's vocabulary cannot be downloaded here: a small WordPiece vocabulary covering the prompt
    words = sorted(set(PROMPT.replace(",", " ,").split()) | set(["photo", "of", "a", "the", "and", "with", "in"]))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ","] + words + list("abcdefghijklmnopqrstuvwxyz")
    (mdir / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizer(vocab_file=str(mdir / "vocab.txt"))
    tok.add_special_tokens({"bos_token": "[DEC]"})  # as ImageReward's init_tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.additional_special_tokens_ids[0]
    tok.save_pretrained(mdir)
    ir_pre.init_tokenizer = lambda: tok
    ir_blip.init_tokenizer = lambda: tok
    vw, vdepth, vheads, patch = cfg["vis"]
    if args.size != "full":  # ImageReward hard-codes ViT-L/16; shrink it for smoke runs
        ir_pre.create_vit = lambda vit, image_size, *a, **k: (
            VisionTransformer(img_size=image_size, patch_size=patch, embed_dim=vw, depth=vdepth, num_heads=vheads), vw)
    h, layers, heads, inter = cfg["txt"]
    med = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "hidden_size": h, "initializer_range": 0.02, "intermediate_size": inter,
           "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": heads,
           "num_hidden_layers": layers, "pad_token_id": 0, "type_vocab_size": 2,
           "vocab_size": cfg["vocab"] or len(tok), "encoder_width": vw, "add_cross_attention": True}
    (mdir / "med_config.json").write_text(json.dumps(med, indent=2))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = IRModel(med_config=str(mdir / "med_config.json"), device=args.device)
    if h != 768:
        model.mlp = MLP(h)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the head's own init gives near-constant scores: re-draw it at a larger scale
        for p in model.mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.5 / p.shape[-1] ** 0.5 if p.ndim == 2 else 0.1))
    model.eval()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(mdir / "ImageReward.safetensors"))
    model.to(args.device)
    params = sum(p.numel() for p in model.parameters())
    paths = json.loads(Path(args.paths).read_text())

    def reply(obj) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    reply({"ready": True, "build_s": time.perf_counter() - t0, "params": params, "torch": torch.__version__,
           "transformers": transformers.__version__, "image_reward": importlib.metadata.version("image-reward"),
           "vision_heads": vheads, "timm": importlib.metadata.version("timm")})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        n = len(paths) if cmd == "run" else int(cmd.split()[1])
        t0 = time.perf_counter()
        with torch.no_grad():
            _, rewards = model.inference_rank(PROMPT, paths[:n])
        sync()
        reply({"seconds": time.perf_counter() - t0, "n": n, "scores": rewards if isinstance(rewards, list) else [rewards]})


# =================================================================================================== main side
def make_images(d: Path, n: int) -> list[str]:
    """n distinct 512x512 PNGs: the four ImageReward example photos under flips and rotations."""
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    base = [Image.open(PHOTOS / f"{i}.webp").convert("RGB") for i in (1, 2, 3, 4)]
    ops = [None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
           Image.Transpose.ROTATE_270, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.TRANSPOSE,
           Image.Transpose.TRANSVERSE]
    out = []
    for i in range(n):
        im = base[i % 4]
        op = ops[(i // 4) % len(ops)]
        im = im if op is None else im.transpose(op)
        if i >= 4 * len(ops):  # more images than variants: shift the content a little
            im = Image.fromarray(__import__("numpy").roll(__import__("numpy").asarray(im), 7 * (i // 32), axis=1))
        p = d / f"img{i:03d}.png"
        im.save(p)
        out.append(str(p))
    return out


class Reference:
    def __init__(self, python: str, size: str, model_dir: Path, paths_file: Path, threads: int, device: str,
                 pythonpath: str | None = None):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        if pythonpath:  # reference packages unpacked beside a shared interpreter (e.g. on a GPU machine)
            env["PYTHONPATH"] = pythonpath
        self.proc = subprocess.Popen(
            [python, __file__, "--worker", "--size", size, "--model-dir", str(model_dir), "--paths", str(paths_file),
             "--threads", str(threads), "--device", device], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=env)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"reference worker exited with code {self.proc.wait()} (see its stderr above)")
        return json.loads(line)

    def run(self, n: int | None = None) -> dict:
        self.proc.stdin.write("run\n" if n is None else f"run {n}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


def spread(xs: list[float]) -> tuple[float, float, float]:
    return min(xs), statistics.median(xs), max(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--paths", help=argparse.SUPPRESS)
    ap.add_argument("--ref-python", default="/work/refvenvs/ir/bin/python")
    ap.add_argument("--ref-pythonpath", default=None, help="PYTHONPATH for the reference worker only")
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", default="1,8,16")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "score_throughput.md"))
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import torch

    sys.path.insert(0, str(ROOT))
    from rewardtune.registry import get_card, resolve_class
    from rewardtune.scoring import score_files

    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if not Path(args.ref_python).exists():
        raise SystemExit(f"{args.ref_python} not found: build the reference venv with scripts/parity/setup_venvs.sh")
    work = Path(tempfile.mkdtemp(prefix="rt-score-bench-"))
    load_start = os.getloadavg()
    try:
        paths = make_images(work / "imgs", args.images)
        (work / "paths.json").write_text(json.dumps(paths))
        print(f"[bench] {len(paths)} images 512x512, building the {args.size} reference model ...", file=sys.stderr)
        ref = Reference(args.ref_python, args.size, work / "model", work / "paths.json", args.threads, args.device,
                        args.ref_pythonpath)
        print(f"[bench] reference ready ({ref.info['params'] / 1e6:.0f}M params, {ref.info['build_s']:.0f} s)",
              file=sys.stderr)
        card = get_card("imagereward")
        preset = dict(card.presets["default"], weights=str(work / "model"), filename="ImageReward.safetensors",
                      tokenizer=None, vision_heads=ref.info["vision_heads"])
        reward = resolve_class(card.implementation)(**preset, device=args.device, dtype="float32",
                                                    max_batch_size=max(batch_sizes))
        t0 = time.perf_counter()
        reward.load()
        ours_load = time.perf_counter() - t0
        rewards = {"imagereward": reward}

        def ours(bs: int, files=paths) -> tuple[float, list[float]]:
            t = time.perf_counter()
            rows = score_files(files, rewards, prompt=PROMPT, batch_size=bs)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            bad = [r.error for r in rows if not r.ok]
            if bad:
                raise SystemExit(f"rewardtune failed on some files: {bad[:3]}")
            return dt, [r.scores["imagereward"] for r in rows]

        # warm-up (first calls allocate and pick kernels) and the check that both ran the same model
        ref_warm = ref.run(2)
        ours(2, paths[:2])
        ref_first = ref.run()
        _, our_scores = ours(max(batch_sizes))
        diff = max(abs(a - b) for a, b in zip(ref_first["scores"], our_scores, strict=True))
        score_range = max(our_scores) - min(our_scores)
        print(f"[bench] scores agree: max |ref - ours| = {diff:.2e} (scores span {score_range:.3f})", file=sys.stderr)

        times: dict[str, list[float]] = {"reference": [ref_first["seconds"]]}
        for bs in batch_sizes:
            times[f"bs{bs}"] = []
        for r in range(args.repeats):
            if r > 0:
                times["reference"].append(ref.run()["seconds"])
            for bs in batch_sizes:
                times[f"bs{bs}"].append(ours(bs)[0])
            print(f"[bench] repeat {r + 1}/{args.repeats}: ref {len(paths) / times['reference'][-1]:.2f} img/s, "
                  + ", ".join(f"bs{bs} {len(paths) / times[f'bs{bs}'][-1]:.2f}" for bs in batch_sizes),
                  file=sys.stderr)
        ref.close()
        del ref_warm
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()

    n = len(paths)
    ips = {k: [n / t for t in v] for k, v in times.items()}
    ref_med = statistics.median(ips["reference"])
    import PIL
    import transformers
    from _harness import machine_info  # stdlib only; benchmarks/ is on sys.path when run as a script

    m = machine_info()
    kind = f"cpu-{m['cores']}cores" if args.device == "cpu" else "cuda"
    hw = f"{m['cpu']}, {m['cores']} cores" if args.device == "cpu" else torch.cuda.get_device_name()
    ref_pkgs = (f"image-reward {ref.info['image_reward']}, transformers {ref.info['transformers']}, "
                f"timm {ref.info['timm']}")
    ref_env = (f"{ref_pkgs} and fairscale on PYTHONPATH of a shared interpreter (copied from the reference venv)"
               if args.ref_pythonpath else f"{ref_pkgs}, in its own venv ({args.ref_python})")
    cmd = (f"python benchmarks/score_throughput.py --device {args.device} --size {args.size} --images {n} "
           f"--repeats {args.repeats} --batch-sizes {args.batch_sizes} --threads {args.threads}")
    lines = [
        f"<!-- run:{kind} -->",
        f"## {'CPU' if args.device == 'cpu' else 'CUDA'}: {hw}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {n} images (512x512 PNG) scored against one prompt "
        f"by the same random-weight ImageReward model ({args.size}: {ref.info['params'] / 1e6:.0f}M parameters), "
        f"float32 on {args.device}, {args.threads} torch threads on both sides, {args.repeats} interleaved repeats.",
        "",
        "| implementation | batch | images/s min | median | max | median speed-up |",
        "|---|---|---|---|---|---|",
        "| image-reward 1.5 `inference_rank` (per image, in `torch.no_grad()`) | 1 | "
        + " | ".join(f"{x:.2f}" for x in spread(ips["reference"])) + " | 1.00x |",
    ]
    for bs in batch_sizes:
        lo, med, hi = spread(ips[f"bs{bs}"])
        lines.append(f"| rewardtune `score` (`scoring.score_files`) | {bs} | {lo:.2f} | {med:.2f} | {hi:.2f} | "
                     f"{med / ref_med:.2f}x |")
    lines += [
        "",
        f"- Same model on both sides: the largest score difference over the {n} images was {diff:.2e}, with scores "
        f"spanning {score_range:.3f} (what remains is preprocessing: the reference resizes 8-bit PIL images, "
        "rewardtune resizes float pixels in torch).",
        "- Raw seconds per run: " + "; ".join(f"{k}: " + ", ".join(f"{t:.2f}" for t in v) for k, v in times.items())
        + f". rewardtune's model load (not timed above) took {ours_load:.1f} s.",
        f"- Machine: {m['cpu']}, {m['cores']} cores visible, {m['memory']} RAM"
        + ("" if args.device == "cpu" else f", {hw}") + f"; {m['os']}. Load average (1/5/15 min) "
        f"{load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f} at start, "
        f"{load_end[0]:.1f}/{load_end[1]:.1f}/{load_end[2]:.1f} at end.",
        f"- rewardtune side: Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, Pillow {PIL.__version__}.",
        f"- Reference side: torch {ref.info['torch']}, {ref_env}.",
        f"- Command: `{cmd}`" + (" (with `--ref-python`/`--ref-pythonpath`)" if args.ref_pythonpath else ""),
        f"<!-- /run:{kind} -->",
        "",
    ]
    section = "\n".join(lines)
    if args.out == "-":
        print(section)
        return
    out = Path(args.out)
    text = out.read_text() if out.exists() else HEADER
    start, end = f"<!-- run:{kind} -->", f"<!-- /run:{kind} -->\n"
    if start in text and end in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(section)
    print(f"[bench] wrote {out} (section {kind})", file=sys.stderr)


HEADER = """# `rewardtune score` throughput vs image-reward's `inference_rank`

Produced by `benchmarks/score_throughput.py` (its docstring says exactly what is timed). Both sides score the same
512x512 PNG files against one prompt with the same random-weight, full-size ImageReward model (BLIP ViT-L/16 +
BERT-base with cross-attention + the MLP head; weights built by image-reward itself, saved, and loaded by rewardtune
through its own key mapping). Timed on both sides: reading and decoding the files, preprocessing, the forward
passes and the head; model loading excluded; one warm-up run each first. The repeats alternate between the two
sides so that noise from other work on the machine hits both. Images per second, higher is better; the speed-up
is the ratio of medians.

- image-reward's `inference_rank` opens, preprocesses and encodes one image at a time (run in `torch.no_grad()`,
  as its README does).
- rewardtune's `score` (`rewardtune.scoring.score_files`, what the CLI runs) reads headers first, decodes files
  to uint8 in threads one batch ahead of the model, groups same-size images and scores them in batches.
- Each section is rewritten by a run of the script on that kind of machine.
"""


if __name__ == "__main__":
    main()
