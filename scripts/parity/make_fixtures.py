"""Make the parity fixtures: each reference implementation, with seeded random weights, on fixed inputs.

    bash scripts/parity/setup_venvs.sh                 # once: /work/refvenvs/{ir,oc} (+ HPSv2's transform files)
    python scripts/parity/make_fixtures.py             # all families, each in its reference venv
    python scripts/parity/make_fixtures.py clip hpsv2  # some of them

The driver runs itself with `--family NAME` under the reference venv's python. That part imports only the
reference packages (never rewardtune) and writes `tests/fixtures/parity/<family>/`:

- `model/`: the tiny model in the reference's own checkpoint format (state dict keys as the reference names them,
  stored as safetensors; configs; tokenizer files);
- `reference.safetensors`: `pixel_q` (uint8 [4,3,56,56], see `tensor_inputs`), the reference's token ids and
  attention masks, `tensor_scores` (reference scores on exactly those tensors), `pil_scores` (the reference's
  whole PIL path, from image file to score, on real photos and crops of them) and `pil_pixel_values_sub7`
  (every 7th pixel of the reference's preprocessed PIL-path input, to check preprocessing on its own);
- `fixture.json`: what was run (package versions, prompts, photos, crop boxes, seeds, spreads).

Weights are re-drawn at std 1.5/sqrt(fan_in) (biases std 0.1, LayerNorms untouched) after the reference builds the
model, then rounded to float16 values and stored as float16 (exact, half the size): default inits make heads (ImageReward's MLP, the aesthetic MLP) and tiny towers nearly constant, and a
fixture whose scores barely vary cannot catch a wrong implementation. Tiny towers run at the real input size
(224 px, patch 16) so the PIL path resizes the photos exactly as a real checkpoint would.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "parity"
PHOTOS = REPO / "tests" / "fixtures" / "images"
VENV_ROOT = Path(os.environ.get("REWARDTUNE_REFVENVS", "/work/refvenvs"))
VENV_OF = {"clip": "oc", "pickscore": "oc", "aesthetic": "oc", "hpsv2": "oc", "imagereward": "ir"}

PROMPTS = ["a photo of a cat", "a red car parked on the street", "a bowl of soup", "a dog running on green grass"]
#: PIL-path inputs: (photo, crop box or None, prompt). Crops make non-square images (crop offsets, padding).
PIL_CASES = [("1.webp", None, PROMPTS[0]), ("2.webp", None, PROMPTS[1]), ("3.webp", None, PROMPTS[2]),
             ("4.webp", None, PROMPTS[3]), ("1.webp", (0, 61, 512, 448), PROMPTS[1]),  # 512x387 landscape
             ("2.webp", (93, 0, 416, 512), PROMPTS[2])]  # 323x512 portrait
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SIZE = 224


# ---------------------------------------------------------------------------------------------------- shared bits
def tensor_inputs(pixel_q):
    """uint8 [N,3,56,56] -> float32 [N,3,224,224] model inputs: exact on both sides (x/48 of small integers)."""
    x = (pixel_q.float() - 128.0) / 48.0
    return x.repeat_interleave(4, dim=-1).repeat_interleave(4, dim=-2)


def make_pixel_q(seed=0):
    import numpy as np
    import torch

    return torch.from_numpy(np.random.RandomState(seed).randint(0, 256, size=(4, 3, 56, 56)).astype("uint8"))


def sub7(pixel_values):
    """Every 7th pixel of the reference's preprocessed PIL-path input (float16, 32x32): checks preprocessing alone."""
    return pixel_values[..., ::7, ::7].half()


def redraw(module, seed=1234, gain=1.5):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name.lower() or name.split(".")[-2:-1] in (["ln_1"], ["ln_2"]) or ".ln_" in name:
                continue
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * gain / p[0].numel() ** 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        # fixtures store float16: make every float32 weight exactly representable, so the stored weights ARE the
        # weights the reference ran with
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())


def pil_images():
    from PIL import Image

    out = []
    for name, box, _ in PIL_CASES:
        im = Image.open(PHOTOS / name)
        im.load()
        out.append(im.crop(box) if box else im)
    return out


def tiny_clip_tokenizer_files(d: Path, max_len=77):
    """Byte-level CLIP BPE with no merges (514 ids), as vocab.json + merges.txt; loaded with CLIPTokenizer."""
    def bytes_to_unicode():
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        return [chr(c) for c in cs]

    base = bytes_to_unicode()
    vocab = {t: i for i, t in enumerate(base + [b + "</w>" for b in base] + ["<|startoftext|>", "<|endoftext|>"])}
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=max_len)


def save_reference(d: Path, meta: dict, **tensors):
    import torch
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(d / "reference.safetensors"))
    for key in ("tensor_scores", "pil_scores"):
        s = tensors[key].float()
        meta[key.replace("scores", "spread")] = float(s.max() - s.min())
        meta[key] = [float(v) for v in s]
    meta["versions"] = versions()
    meta["prompts"], meta["pil_cases"] = PROMPTS, [list(c[:2]) + [c[2]] for c in PIL_CASES]
    (d / "fixture.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"[{meta['family']}] tensor {meta['tensor_scores']} spread {meta['tensor_spread']:.4g}\n"
          f"    pil {meta['pil_scores']} spread {meta['pil_spread']:.4g}")
    assert torch.isfinite(tensors["tensor_scores"]).all() and torch.isfinite(tensors["pil_scores"]).all()


def versions():
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("torch", "torchvision", "transformers", "open_clip_torch", "image-reward", "pillow"):
        with contextlib.suppress(PackageNotFoundError):
            out[p] = version(p)
    return out


def save_state_dict(sd, path: Path):
    from safetensors.torch import save_file

    save_file({k: (v.half() if v.is_floating_point() else v).detach().clone().contiguous() for k, v in sd.items()},
              str(path))


def save_hf(model, d: Path):
    """save_pretrained in float16 (exact: see redraw), then back to float32 for the reference run."""
    import torch

    model.to(torch.float16).save_pretrained(d, safe_serialization=True)
    model.to(torch.float32)


# ------------------------------------------------------------------------------------------ clip and pickscore
def clip_family(family: str, d: Path):
    """transformers CLIPModel + CLIPProcessor (slow image processor: PIL resize) as the reference."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0 if family == "clip" else 1)
    act = "quick_gelu" if family == "clip" else "gelu"  # OpenAI CLIP vs. laion ViT-H (PickScore)
    proj = 32 if family == "clip" else 24
    cfg = CLIPConfig(
        text_config=dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                         pad_token_id=513, hidden_act=act),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=SIZE, patch_size=16, hidden_act=act),
        projection_dim=proj)
    model = CLIPModel(cfg).eval()
    redraw(model, seed=11 if family == "clip" else 12)
    mdir = d / "model"
    tok = tiny_clip_tokenizer_files(mdir)
    ip = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}, resample=3,
                            do_center_crop=True, image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))
    proc = CLIPProcessor(image_processor=ip, tokenizer=tok)
    save_hf(model, mdir)
    proc.save_pretrained(mdir)

    def score(input_ids, attention_mask, pixel_values):
        if family == "clip":  # CLIP score as transformers computes it: logits_per_image = scale * cos
            out = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
            return torch.diagonal(out.logits_per_image)
        # PickScore's README / NeMo-Aligner: normalised embeddings, logit_scale.exp() * text @ image.T
        img = model.get_image_features(pixel_values=pixel_values)
        img = img / torch.norm(img, dim=-1, keepdim=True)
        txt = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        txt = txt / torch.norm(txt, dim=-1, keepdim=True)
        return torch.diagonal(model.logit_scale.exp() * (txt @ img.T))

    pq = make_pixel_q()
    with torch.no_grad():
        text = proc(text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
        t_scores = score(text["input_ids"], text["attention_mask"], tensor_inputs(pq))
        pil = proc(text=[c[2] for c in PIL_CASES], images=pil_images(), padding=True, truncation=True, max_length=77,
                   return_tensors="pt")
        p_scores = score(pil["input_ids"], pil["attention_mask"], pil["pixel_values"])
    save_reference(d, {"family": family, "reference": "transformers CLIPModel + CLIPProcessor (slow, PIL)"},
                   pixel_q=pq, input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                   tensor_scores=t_scores, pil_scores=p_scores, pil_input_ids=pil["input_ids"],
                   pil_pixel_values_sub7=sub7(pil["pixel_values"]))


# ------------------------------------------------------------------------------------------------------ aesthetic
def aesthetic(d: Path):
    """The predictor's MLP definition + the CLIP image tower + OpenAI CLIP's torchvision preprocessing."""
    import numpy as np
    import torch
    from torch import nn
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor
    from transformers import CLIPConfig, CLIPModel

    class MLP(nn.Module):  # improved-aesthetic-predictor's layer definition
        def __init__(self, input_size):
            super().__init__()
            self.input_size = input_size
            self.layers = nn.Sequential(
                nn.Linear(self.input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

        def forward(self, x):
            return self.layers(x)

    def normalized(a, axis=-1, order=2):  # simple_inference.py's numpy L2 normalisation
        l2 = np.atleast_1d(np.linalg.norm(a, order, axis))
        l2[l2 == 0] = 1
        return a / np.expand_dims(l2, axis)

    torch.manual_seed(2)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=512, eos_token_id=513),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=SIZE, patch_size=16),
        projection_dim=32)
    clip = CLIPModel(cfg).eval()
    mlp = MLP(32).eval()
    redraw(clip, seed=21)
    redraw(mlp, seed=22)
    mdir = d / "model"
    save_hf(clip, mdir)
    save_state_dict(mlp.state_dict(), mdir / "sac+logos+ava1-l14-linearMSE.safetensors")
    preprocess = Compose([Resize(SIZE, interpolation=InterpolationMode.BICUBIC), CenterCrop(SIZE),
                          lambda im: im.convert("RGB"), ToTensor(), Normalize(OPENAI_MEAN, OPENAI_STD)])

    def score(pixel_values):
        feats = clip.get_image_features(pixel_values=pixel_values).cpu().numpy()
        return mlp(torch.from_numpy(normalized(feats)).float()).reshape(-1)

    pq = make_pixel_q()
    with torch.no_grad():
        t_scores = score(tensor_inputs(pq))
        pv = torch.stack([preprocess(im) for im in pil_images()])
        p_scores = score(pv)
    save_reference(d, {"family": "aesthetic", "reference": "LAION MLP + CLIP tower + torchvision Resize/CenterCrop"},
                   pixel_q=pq, tensor_scores=t_scores, pil_scores=p_scores, pil_pixel_values_sub7=sub7(pv))


# ---------------------------------------------------------------------------------------------------------- hpsv2
def hpsv2(d: Path):
    """open_clip's CLIP (HPSv2's architecture) + HPSv2's own eval transform (ResizeMaxSize, from its wheel)."""
    import importlib

    import torch
    from open_clip.model import CLIP

    sys.path.insert(0, str(VENV_ROOT / "hpsv2_src"))
    hps_transform = importlib.import_module("hps_transform.transform")
    oc_cfg = {"embed_dim": 32,
              "vision_cfg": {"image_size": SIZE, "layers": 2, "width": 32, "head_width": 8, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 514, "width": 32, "heads": 4, "layers": 2}}
    torch.manual_seed(3)
    model = CLIP(**oc_cfg, output_dict=True).eval()
    redraw(model, seed=31)
    mdir = d / "model"
    tok = tiny_clip_tokenizer_files(mdir)
    tok.save_pretrained(mdir)
    save_state_dict(model.state_dict(), mdir / "HPS_v2_compressed.safetensors")
    (mdir / "open_clip_config.json").write_text(json.dumps({"model_cfg": oc_cfg}, indent=2))
    preprocess_val = hps_transform.image_transform(SIZE, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD,
                                                   resize_longest_max=True)

    def tokenize(texts, n=77):  # open_clip's tokenize() layout: [SOT] ids [EOT], zero padding, EOT kept on truncation
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = tok(t)["input_ids"]
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = tok.eos_token_id
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    def score(pixel_values, ids):  # hpsv2.score: diagonal of image_features @ text_features.T
        out = model(pixel_values, ids)
        return torch.diagonal(out["image_features"] @ out["text_features"].T)

    pq = make_pixel_q()
    with torch.no_grad():
        ids = tokenize(PROMPTS)
        t_scores = score(tensor_inputs(pq), ids)
        pv = torch.stack([preprocess_val(im) for im in pil_images()])
        pil_ids = tokenize([c[2] for c in PIL_CASES])
        p_scores = score(pv, pil_ids)
    save_reference(d, {"family": "hpsv2", "reference": "open_clip CLIP + HPSv2 image_transform(resize_longest_max)"},
                   pixel_q=pq, input_ids=ids, tensor_scores=t_scores, pil_scores=p_scores, pil_input_ids=pil_ids,
                   pil_pixel_values_sub7=sub7(pv))


# ---------------------------------------------------------------------------------------------------- imagereward
def imagereward(d: Path):
    """image-reward 1.5's ImageReward, shrunk (2-layer ViT at 224/16, 2-layer BERT), scored with its own API."""
    sys.modules.setdefault("clip", types.ModuleType("clip"))  # imported by ImageReward, never used here
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    for n in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        setattr(mu, n, getattr(pu, n))
    import ImageReward.models.BLIP.blip as ir_blip
    import ImageReward.models.BLIP.blip_pretrain as ir_pre
    import torch
    from ImageReward.ImageReward import MLP, ImageReward
    from ImageReward.models.BLIP.vit import VisionTransformer
    from transformers import BertTokenizer

    mdir = d / "model"
    mdir.mkdir(parents=True, exist_ok=True)
    words = sorted({w for p in PROMPTS for w in p.split()} | set(["photo", "of", "with", "an", "in", "the", "and"]))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + sorted(set("abcdefghijklmnopqrstuvwxyz") - set(words))
    (mdir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(vocab_file=str(mdir / "vocab.txt"))
    tok.add_special_tokens({"bos_token": "[DEC]"})  # as ImageReward's init_tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.additional_special_tokens_ids[0]
    tok.save_pretrained(mdir)
    ir_pre.init_tokenizer = lambda: tok
    ir_blip.init_tokenizer = lambda: tok
    ir_pre.create_vit = lambda vit, image_size, *a, **k: (
        VisionTransformer(img_size=image_size, patch_size=16, embed_dim=32, depth=2, num_heads=4), 32)
    med = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 37,
           "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 4,
           "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(tok),
           "encoder_width": 32, "add_cross_attention": True}
    (mdir / "med_config.json").write_text(json.dumps(med, indent=2))
    torch.manual_seed(4)
    m = ImageReward(med_config=str(mdir / "med_config.json"), device="cpu")
    m.mlp = MLP(32)
    m.eval()
    redraw(m, seed=41)
    save_state_dict(m.state_dict(), mdir / "ImageReward.safetensors")

    pq = make_pixel_q()
    with torch.no_grad():
        text = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        t_scores = m.score_gard(text.input_ids, text.attention_mask, tensor_inputs(pq)).reshape(-1)
        p_scores = torch.tensor([m.score(c[2], im) for c, im in zip(PIL_CASES, pil_images(), strict=True)])
        pv = torch.stack([m.preprocess(im) for im in pil_images()])
    save_reference(d, {"family": "imagereward", "reference": "image-reward 1.5 ImageReward.score_gard / .score",
                       "vision_heads": 4},
                   pixel_q=pq, input_ids=text.input_ids, attention_mask=text.attention_mask, tensor_scores=t_scores,
                   pil_scores=p_scores, pil_pixel_values_sub7=sub7(pv))


FAMILIES = {"clip": lambda d: clip_family("clip", d), "pickscore": lambda d: clip_family("pickscore", d),
            "aesthetic": aesthetic, "hpsv2": hpsv2, "imagereward": imagereward}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("families", nargs="*", help=f"default: all of {', '.join(FAMILIES)}")
    ap.add_argument("--family", help=argparse.SUPPRESS)  # internal: run one family in this interpreter
    a = ap.parse_args()
    if a.family:
        d = OUT / a.family
        if d.exists():
            import shutil

            shutil.rmtree(d)
        d.mkdir(parents=True)
        FAMILIES[a.family](d)
        return
    for fam in a.families or list(FAMILIES):
        if fam not in FAMILIES:
            sys.exit(f"unknown family {fam}; choose from {', '.join(FAMILIES)}")
        py = VENV_ROOT / VENV_OF[fam] / "bin" / "python"
        if not py.exists():
            sys.exit(f"{py} missing: run `bash scripts/parity/setup_venvs.sh {VENV_ROOT}` first")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0")
        subprocess.run([str(py), __file__, "--family", fam], check=True, env=env)


if __name__ == "__main__":
    main()
