"""Parity with the reference implementations, on fixtures made by scripts/parity/make_fixtures.py.

The reference packages are not installed here: each fixture holds a tiny model in the reference's own checkpoint
format, inputs, and the reference's scores. The project's loaders and key mappings read the checkpoint; the scores
must match to 1e-5 on identical input tensors and to `PIL_TOL` on the reference's whole PIL path (image file ->
score), where the only difference left is PIL's 8-bit fixed-point resampling versus our float resampling.
See docs/parity.md.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.parity

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
PHOTOS = Path(__file__).resolve().parents[1] / "fixtures" / "images"
FAMILIES = ["clip", "pickscore", "aesthetic", "hpsv2", "imagereward"]

TENSOR_TOL = 1e-5
#: PIL path, as max |ours - reference| / (spread of the reference's PIL scores). Measured (docs/parity.md): 0.3-0.6%
#: for the PIL-resampling references; HPSv2 resizes float tensors with torch itself, so it must match to ~1e-7.
PIL_TOL = {"clip": 0.015, "pickscore": 0.015, "aesthetic": 0.015, "imagereward": 0.015, "hpsv2": 1e-4}
#: preprocessing alone: max |ours - reference| over normalised pixels (measured 0.015, i.e. ~1/255 of uint8
#: rounding divided by std ~0.27; the reference values are stored as float16, hence 2e-3 for HPSv2)
PIXEL_TOL = {"clip": 0.03, "pickscore": 0.03, "aesthetic": 0.03, "imagereward": 0.03, "hpsv2": 2e-3}


def tensor_inputs(pixel_q: torch.Tensor) -> torch.Tensor:
    """Same recipe as make_fixtures.tensor_inputs: exact small-integer fractions, 4x nearest upsampling."""
    x = (pixel_q.float() - 128.0) / 48.0
    return x.repeat_interleave(4, dim=-1).repeat_interleave(4, dim=-2)


def load_fixture(family):
    d = ROOT / family
    if not (d / "reference.safetensors").is_file():
        pytest.fail(f"missing parity fixture {d}: run scripts/parity/make_fixtures.py (docs/parity.md)")
    return d, load_file(str(d / "reference.safetensors")), json.loads((d / "fixture.json").read_text())


def build(family: str, model_dir: Path, **over):
    from rewardtune.rewards.aesthetic import LaionAesthetic
    from rewardtune.rewards.clip import CLIPScore
    from rewardtune.rewards.hpsv2 import HPSv2
    from rewardtune.rewards.imagereward import ImageReward
    from rewardtune.rewards.pickscore import PickScore

    w = str(model_dir)
    if family == "clip":
        kw = dict(weights=w, image_size=224, crop_rounding="floor")
        cls = CLIPScore
    elif family == "pickscore":
        kw = dict(weights=w, processor=None, image_size=224, crop_rounding="floor")
        cls = PickScore
    elif family == "aesthetic":
        kw = dict(weights=w, clip_weights=None, filename="sac+logos+ava1-l14-linearMSE.safetensors", image_size=224)
        cls = LaionAesthetic
    elif family == "hpsv2":
        kw = dict(weights=w, tokenizer=None, filename="HPS_v2_compressed.safetensors", image_size=224)
        cls = HPSv2
    else:
        kw = dict(weights=w, tokenizer=None, filename="ImageReward.safetensors", vision_heads=4, image_size=224)
        cls = ImageReward
    kw.update(over)
    return cls(**kw).load()


def tensor_scores(family, r, ref):
    x = tensor_inputs(ref["pixel_q"])
    with torch.no_grad():
        if family == "aesthetic":
            return r.score_inputs(x)
        if family == "hpsv2":
            return r.score_inputs(x, ref["input_ids"])
        return r.score_inputs(x, ref["input_ids"], ref["attention_mask"])


def pil_pixels(meta):
    from rewardtune.images import load_pixels

    out = []
    for name, box, _ in meta["pil_cases"]:
        p = load_pixels(PHOTOS / name)
        if box:
            left, top, right, bottom = box
            p = p[:, top:bottom, left:right]
        out.append(p)
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request):
    family = request.param
    d, ref, meta = load_fixture(family)
    return family, d, ref, meta, build(family, d / "model")


def test_reference_scores_spread_far_beyond_tolerance(fam):
    family, _, ref, _, _ = fam
    t, p = ref["tensor_scores"], ref["pil_scores"]
    assert (t.max() - t.min()).item() > 1000 * TENSOR_TOL, f"{family}: near-constant reference tensor scores {t}"
    # every pair of inputs differs by more than the tolerance, so a swapped or ignored input is caught
    assert torch.pdist(t[:, None]).min().item() > 100 * TENSOR_TOL, f"{family}: {t}"
    spread = (p.max() - p.min()).item()
    assert spread > 0.05, f"{family}: near-constant reference PIL scores {p}"


def test_identical_tensors_match_to_1e5(fam):
    family, _, ref, _, r = fam
    ours = tensor_scores(family, r, ref)
    diff = (ours - ref["tensor_scores"]).abs().max().item()
    assert diff <= TENSOR_TOL, f"{family}: max |ours - reference| = {diff:.3g} (ours {ours}, ref {ref['tensor_scores']})"


def test_tokenizer_matches_reference_ids(fam):
    family, _, ref, meta, r = fam
    if family == "aesthetic":
        pytest.skip("the aesthetic predictor reads no text")
    prompts = meta["prompts"]
    if family == "hpsv2":
        ids = r.tokenize(prompts)
    elif family == "imagereward":
        ids = r.tokenizer(prompts, padding="max_length", truncation=True, max_length=r.max_length,
                          return_tensors="pt")["input_ids"]
    else:
        ids = r.tokenizer(prompts, padding=True, truncation=True, max_length=r.max_length, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, ref["input_ids"]), f"{family}: {ids} != {ref['input_ids']}"


def test_preprocessing_matches_reference_pil_path(fam):
    family, _, ref, meta, r = fam
    worst = 0.0
    for i, px in enumerate(pil_pixels(meta)):
        ours = r.pixel_values(px[None])[..., ::7, ::7].float()
        theirs = ref["pil_pixel_values_sub7"][i:i + 1].float()
        assert ours.shape == theirs.shape, (family, i, ours.shape, theirs.shape)
        worst = max(worst, (ours - theirs).abs().max().item())
    assert worst <= PIXEL_TOL[family], f"{family}: preprocessing differs from the reference PIL path by {worst:.4f}"


def test_pil_path_matches_reference(fam):
    family, _, ref, meta, r = fam
    prompts = [c[2] for c in meta["pil_cases"]]
    with torch.no_grad():
        ours = torch.stack([r(px[None], [p])[0] for px, p in zip(pil_pixels(meta), prompts, strict=True)])
    theirs = ref["pil_scores"]
    spread = (theirs.max() - theirs.min()).item()
    rel = ((ours - theirs).abs().max() / spread).item()
    assert rel <= PIL_TOL[family], f"{family}: PIL path off by {rel:.4f} of the spread (ours {ours}, ref {theirs})"
    # and the ranking of the six images is the reference's
    assert torch.equal(torch.argsort(ours), torch.argsort(theirs)), f"{family}: ranking differs"


def test_whole_batch_matches_reference(fam):
    """The batched __call__ (preprocessing + tokenizer + model) on the tensor inputs' prompts, one chunk and split."""
    family, _, ref, meta, r = fam
    px = pil_pixels(meta)[:4]  # the four 512x512 photos: one batch
    prompts = [c[2] for c in meta["pil_cases"][:4]]
    with torch.no_grad():
        whole = r(torch.stack(px), prompts)
    torch.testing.assert_close(whole, torch.stack([r(p[None], [q])[0] for p, q in zip(px, prompts, strict=True)]),
                               rtol=1e-5, atol=1e-5)


ORIGINAL = {  # family -> (safetensors in the fixture, original checkpoint name, wrapped in {'state_dict': ...})
    "aesthetic": ("sac+logos+ava1-l14-linearMSE.safetensors", "sac+logos+ava1-l14-linearMSE.pth", False),
    "hpsv2": ("HPS_v2_compressed.safetensors", "HPS_v2_compressed.pt", True),
    "imagereward": ("ImageReward.safetensors", "ImageReward.pt", False),
}


@pytest.mark.parametrize("family", sorted(ORIGINAL))
def test_original_pickle_checkpoint_loads_weights_only(family, tmp_path):
    """The published .pt/.pth layout (a torch.save'd state dict) loads through the same mapping, weights_only."""
    d, ref, _ = load_fixture(family)
    src, name, wrapped = ORIGINAL[family]
    model_dir = tmp_path / "model"
    shutil.copytree(d / "model", model_dir)
    sd = load_file(str(model_dir / src))
    (model_dir / src).unlink()
    torch.save({"state_dict": sd, "epoch": 3} if wrapped else sd, model_dir / name)
    r = build(family, model_dir, filename=name)
    ours = tensor_scores(family, r, ref)
    assert (ours - ref["tensor_scores"]).abs().max().item() <= TENSOR_TOL


def test_pickle_with_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint that would run code on load is rejected, not executed."""
    import os
    import pickle

    d, _, _ = load_fixture("imagereward")
    model_dir = tmp_path / "model"
    shutil.copytree(d / "model", model_dir)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"x": Evil()}, model_dir / "ImageReward.pt")
    with pytest.raises(pickle.UnpicklingError):
        build("imagereward", model_dir, filename="ImageReward.pt")
    assert not (tmp_path / "pwned").exists()


def test_a_wrong_mapping_is_caught():
    """The fixtures can fail: swapping q and k in the open_clip -> HF mapping changes the scores beyond 1e-5."""
    import rewardtune.rewards.hpsv2 as hps

    d, ref, _ = load_fixture("hpsv2")
    orig = hps.open_clip_to_hf

    def swapped(sd):
        out = orig(sd)
        for k in list(out):
            if ".self_attn.q_proj." in k:
                kk = k.replace("q_proj", "k_proj")
                out[k], out[kk] = out[kk], out[k]
        return out

    hps.open_clip_to_hf = swapped
    try:
        r = build("hpsv2", d / "model")
    finally:
        hps.open_clip_to_hf = orig
    assert (tensor_scores("hpsv2", r, ref) - ref["tensor_scores"]).abs().max().item() > 100 * TENSOR_TOL


@pytest.mark.parametrize("family,wrong", [("clip", "round"), ("imagereward", "floor")])
def test_a_wrong_crop_convention_is_caught(family, wrong):
    """The portrait crop has an odd margin, so transformers' floor and torchvision's round-half-even crops differ
    by a pixel; the preprocessing check must see that."""
    d, ref, meta = load_fixture(family)
    r = build(family, d / "model", crop_rounding=wrong)
    px = pil_pixels(meta)[-1]
    ours = r.pixel_values(px[None])[..., ::7, ::7].float()
    assert (ours - ref["pil_pixel_values_sub7"][-1:].float()).abs().max().item() > 10 * PIXEL_TOL[family]
