"""Family-specific behaviour of the five differentiable rewards, on their tiny twins."""
from __future__ import annotations

import pytest
import torch

from rewardtune.errors import MissingWeightsError
from rewardtune.registry import load_reward


def _pixels(b=3, seed=0):
    return torch.rand(b, 3, 36, 44, generator=torch.Generator().manual_seed(seed))


def test_clip_raw_cosine_is_the_unscaled_score():
    scaled = load_reward("clip", "tiny")
    raw = load_reward("clip", "tiny", raw_cosine=True)
    x, p = _pixels(), ["a cat", "a red car", "soup"]
    s, c = scaled(x, p), raw(x, p)
    assert (c.abs() <= 1 + 1e-6).all()
    torch.testing.assert_close(s, scaled.model.logit_scale.exp() * c, rtol=1e-5, atol=1e-5)


def test_aesthetic_ignores_the_prompt():
    r = load_reward("aesthetic", "tiny")
    x = _pixels()
    assert torch.equal(r(x, ["a", "b", "c"]), r(x, ["x", "y", "z"]))
    assert r.inputs == ("pixels",)


@pytest.mark.parametrize("name", ["clip", "pickscore", "imagereward", "hpsv2"])
def test_text_rewards_read_the_prompt(name):
    r = load_reward(name, "tiny")
    x = _pixels(1).expand(2, -1, -1, -1)
    s = r(x, ["a photo of a cat", "a bowl of soup"])
    assert (s[0] - s[1]).abs().item() > 1e-4


def test_imagereward_truncates_text_at_35_tokens():
    r = load_reward("imagereward", "tiny")
    x = _pixels(1)
    long = " ".join(["a photo of a cat"] * 12)  # far beyond 35 tokens
    r.load()
    assert len(r.tokenizer(long)["input_ids"]) > 35
    a, b = r(x, [long]), r(x, [long + " on green grass with a dog"])
    assert torch.equal(a, b)
    shorter = r(x, ["a photo of a cat"])
    assert (a - shorter).abs().item() > 1e-4


def test_hpsv2_tokens_keep_open_clip_layout():
    r = load_reward("hpsv2", "tiny").load()
    ids = r.tokenize(["a cat", "a photo of a cat " * 10])
    n = r.context_length
    eos = r.tokenizer.eos_token_id
    assert ids.shape == (2, n)
    assert ids[0, 0].item() == r.tokenizer.bos_token_id and (ids[0] == eos).sum() == 1 and ids[0, -1] == 0
    assert ids[1, -1].item() == eos  # truncated: end-of-text stays last, as open_clip.tokenize does
    assert ids[0].argmax().item() == (ids[0] == eos).nonzero()[0].item()  # EOS is the largest id: argmax pooling


def _with_weights(name, weights):
    from rewardtune.registry import get_card, resolve_class

    card = get_card(name)
    return resolve_class(card.implementation)(**{**card.presets["tiny"], "weights": weights})


def test_missing_local_weights_say_what_was_looked_for(tmp_path):
    r = _with_weights("hpsv2", str(tmp_path / "nowhere"))
    with pytest.raises(MissingWeightsError, match="nowhere"):
        r(_pixels(1), ["a cat"])
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _with_weights("imagereward", str(empty))
    with pytest.raises(MissingWeightsError, match="ImageReward.pt"):
        r(_pixels(1), ["a cat"])


def test_preset_dtype_fp16_weights_and_float32_scores():
    r = load_reward("hpsv2", "tiny", dtype="float16")
    out = r(_pixels(2), ["a cat", "soup"])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert next(r.model.parameters()).dtype == torch.float16


def test_missing_hub_weights_name_the_spec_key_to_set():
    """The fix names the key that holds those weights: the pipeline's, a term's own, or a term's kwarg (the suite
    runs with HF_HUB_OFFLINE=1, and no cache holds these ids)."""
    from rewardtune.engine.pipeline import load_pipeline_dir

    with pytest.raises(MissingWeightsError) as e:
        load_pipeline_dir("no-such-org/no-such-pipeline")
    assert "model.pretrained=/models/no-such-pipeline" in str(e.value) and "objective" not in str(e.value)
    r = _with_weights("aesthetic", "no-such-org/no-such-mlp")
    with pytest.raises(MissingWeightsError, match=r"objective\[N\]\.weights=/models/no-such-mlp"):
        r(_pixels(1), ["a cat"])
