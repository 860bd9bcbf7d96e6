"""sam-llm: vocabulary, LLM answer log-probability scoring, neutral cases, bad input, and the reward contract on
the tiny preset (tiny SAM + tiny CLIP + tiny Llama, all built offline)."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from rewardtune.errors import MissingDependencyError, UsageError
from rewardtune.registry import get_card, load_reward
from rewardtune.rewards.sam_llm import NEUTRAL, LlmJudge, SamLlmReward, load_vocabulary

PROMPTS = ["a photo of a cat", "a red car parked on the street", "a bowl of soup", "a dog running on green grass"]


def _pixels(b=4, h=40, w=52, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# -- vocabulary ---------------------------------------------------------------------------------------------------
def test_builtin_vocabulary_has_coco_and_more():
    v = load_vocabulary("coco-lvis-common")
    assert len(v) >= 400 and len(set(x.lower() for x in v)) == len(v)
    for name in ("person", "car", "traffic light", "teddy bear", "toothbrush", "cup", "mountain", "guitar"):
        assert name in v
    assert not any(x.startswith("#") or not x.strip() for x in v)


def test_vocabulary_from_file_and_list(tmp_path):
    f = tmp_path / "vocab.txt"
    f.write_text("# my classes\nfire_hydrant\n\nCat  # a pet\ncat\n  red   car \n")
    assert load_vocabulary(str(f)) == ["fire hydrant", "Cat", "red car"]
    assert load_vocabulary(["dog", "dog", "hot_dog"]) == ["dog", "hot dog"]


def test_empty_or_missing_vocabulary_is_an_error_at_construction(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("# nothing here\n\n")
    for bad in ([], [" ", ""], str(f)):
        with pytest.raises(UsageError, match="empty"):
            SamLlmReward("zoo:sam", clip_weights="zoo:clip", llm_weights="zoo:lm", vocabulary=bad)
    with pytest.raises(UsageError, match="neither a built-in"):
        SamLlmReward(vocabulary=str(tmp_path / "nope.txt"))


def test_other_bad_arguments_fail_at_construction():
    with pytest.raises(UsageError, match="answer_mode"):
        SamLlmReward(answer_mode="maybe")
    with pytest.raises(UsageError, match="label_threshold"):
        SamLlmReward(label_threshold=1.5)
    with pytest.raises(UsageError, match="label_template"):
        SamLlmReward(label_template="a photo")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_quantization_without_bitsandbytes_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"rewardtune\[bnb\]"):
        SamLlmReward(llm_quantization="8bit")
    SamLlmReward(llm_quantization="auto")  # falls back to full precision


# -- the LLM judge ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardtune.zoo import materialize

    d = materialize("zoo:lm")
    return AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


def _with_answer_bias(model, tok, bias: dict[str, float]):
    """A copy of the tiny LM whose output layer adds a bias to the first token of some answer words."""
    import copy

    m = copy.deepcopy(model)
    old = m.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        for word, b in bias.items():
            head.bias[tok(" " + word, add_special_tokens=False).input_ids[0]] = b
    m.lm_head = head
    return m.eval()


def test_answer_tokens_are_the_answer_words(tiny_lm):
    model, tok = tiny_lm
    j = LlmJudge(model, tok)
    assert [tok.decode([i]).strip() for i in j.answer_ids] == ["certain", "may", "unlikely"]
    assert j.use_chat_template and j.render("p", "l").endswith("ASSISTANT:")
    jy = LlmJudge(model, tok, answer_mode="yes-no", use_chat_template=False)
    assert [tok.decode([i]).strip() for i in jy.answer_ids] == ["yes", "no"]
    assert jy.render("p", "l").startswith("A chat between") and jy.render("p", "l").endswith("ASSISTANT:")


@pytest.mark.parametrize("mode,word,expect", [("three-way", "certain", 1.0), ("three-way", "may", 0.5),
                                              ("three-way", "unlikely", 0.0), ("yes-no", "yes", 1.0),
                                              ("yes-no", "no", 0.0)])
def test_answer_bias_moves_expected_likelihood(tiny_lm, mode, word, expect):
    model, tok = tiny_lm
    j = LlmJudge(_with_answer_bias(model, tok, {word: 30.0}), tok, answer_mode=mode)
    seqs = [j.fit(p, lab)[1] for p, lab in [("a cat on a sofa", "cat"), ("a bowl of soup", "car")]]
    like, probs, mass = j.judge(seqs)
    torch.testing.assert_close(like, torch.full((2,), expect), atol=1e-3, rtol=0)
    assert (mass > 0.99).all()  # the bias put all the mass on that answer token


def test_likelihood_is_monotone_in_the_answer_bias(tiny_lm):
    model, tok = tiny_lm
    seq = [LlmJudge(model, tok).fit("a red car on a street", "car")[1]]
    likes = [LlmJudge(_with_answer_bias(model, tok, {"certain": b, "unlikely": -b}), tok).judge(seq)[0].item()
             for b in (-4.0, -1.0, 0.0, 1.0, 4.0)]
    assert all(a < b for a, b in zip(likes, likes[1:], strict=False)), likes
    assert likes[0] < 0.1 and likes[-1] > 0.9


def test_calibration_cancels_a_constant_answer_bias(tiny_lm):
    model, tok = tiny_lm
    seqs = [LlmJudge(model, tok).fit(p, lab)[1] for p, lab in [("a cat", "cat"), ("soup", "sofa"), ("x", "dog")]]
    plain = LlmJudge(model, tok, calibrate=True).judge(seqs)[0]
    biased = LlmJudge(_with_answer_bias(model, tok, {"certain": 3.0}), tok, calibrate=True).judge(seqs)[0]
    torch.testing.assert_close(plain, biased, atol=1e-4, rtol=0)
    uncal = LlmJudge(_with_answer_bias(model, tok, {"certain": 3.0}), tok).judge(seqs)[0]
    assert (uncal - plain).abs().max() > 0.05


def test_one_batched_forward_pass_equals_single_passes(tiny_lm):
    model, tok = tiny_lm
    j = LlmJudge(model, tok)
    pairs = [("a cat", "cat"), ("a very long prompt about a red car parked on a street at night", "car"),
             ("soup", "bowl of soup")]
    seqs = [j.fit(*p)[1] for p in pairs]
    assert len({len(s) for s in seqs}) == 3  # different lengths: padding is exercised
    calls = []
    h = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        together = j.answer_logprobs(seqs)[0]
    finally:
        h.remove()
    assert len(calls) == 1
    alone = torch.cat([j.answer_logprobs([s])[0] for s in seqs])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_prompt_longer_than_context_is_truncated(tiny_lm):
    model, tok = tiny_lm
    j = LlmJudge(model, tok)
    long_prompt = "a red car parked on the street next to a dog " * 100
    used, ids, truncated = j.fit(long_prompt, "car")
    assert truncated and used.endswith(" ...") and long_prompt.startswith(used[:-4].strip()[:40])
    assert len(ids) <= j.context == 512
    short_used, _, short_trunc = j.fit("a red car", "car")
    assert short_used == "a red car" and not short_trunc
    like, _, _ = j.judge([ids])
    assert torch.isfinite(like).all()


# -- the reward on the tiny preset ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reward():
    r = load_reward("sam-llm", "tiny", max_batch_size=8)
    assert not r.loaded and r.load_count == 0
    return r


def test_card_names_the_real_checkpoints():
    card = get_card("sam-llm")  # its keys against the class: the shared card suite (tests/rewards/test_contract.py)
    assert not card.differentiable and card.typical_range == (-0.5, 0.5)
    assert card.presets["default"]["weights"] == "facebook/sam-vit-huge"
    assert card.presets["default"]["llm_weights"] == "lmsys/vicuna-7b-v1.5"
    assert all(str(v).startswith("zoo:") for k, v in card.presets["tiny"].items() if k.endswith("weights"))


def test_scores_are_bounded_and_three_frozen_modules(reward):
    """What sam-llm adds to the shared contract (tests/rewards/test_contract.py): scores in [-0.5, 0.5], and its
    three models (SAM, the captioner, the LLM)."""
    out = reward(_pixels(), PROMPTS)
    assert ((out >= -0.5) & (out <= 0.5)).all()
    assert len(reward.modules()) == 3


def test_neutral_for_blank_image_and_for_no_labelled_region(reward):
    x = _pixels(4)
    x[1] = 0.0
    x[2] = 0.7
    x[3, 0, 5, 5] = float("nan")
    out = reward(x, PROMPTS)
    assert out[1].item() == NEUTRAL and out[2].item() == NEUTRAL and out[3].item() == NEUTRAL
    ex = reward.explain(x, PROMPTS)
    assert ex[1]["reason"] == "blank image" and ex[1]["neutral"] and ex[1]["regions"] == []
    assert ex[3]["reason"] == "non-finite pixels"
    assert not ex[0]["neutral"] and ex[0]["labels"]
    old = reward.label_threshold
    try:
        reward.label_threshold = 1.0  # no CLIP label is that confident
        ex2 = reward.explain(x[:1], PROMPTS[:1])
    finally:
        reward.label_threshold = old
    assert ex2[0]["score"] == NEUTRAL and ex2[0]["reason"] == "no labelled region" and ex2[0]["regions"]
    assert not any(r["labelled"] for r in ex2[0]["regions"])


def test_explain_is_json_and_consistent_with_the_score(reward):
    x = _pixels(2, seed=5)
    prompts = ["a dog on a sofa", "a red car parked on the street next to a dog " * 80]
    ex = reward.explain(x, prompts)
    json.dumps(ex)
    scores = reward(x, prompts)
    for e, s in zip(ex, scores.tolist(), strict=True):
        assert set(e) >= {"score", "neutral", "reason", "regions", "labels", "prompt_used", "prompt_truncated"}
        assert e["score"] == pytest.approx(s, abs=1e-6)
        for r in e["regions"]:
            assert set(r) == {"bbox", "area", "area_frac", "pred_iou", "stability", "label", "label_confidence",
                              "labelled"}
            x1, y1, x2, y2 = r["bbox"]
            assert 0 <= x1 < x2 <= 52 and 0 <= y1 < y2 <= 40 and r["area"] > 0
        if e["labels"]:
            mean = sum(lab["likelihood"] for lab in e["labels"]) / len(e["labels"])
            assert e["score"] == pytest.approx(mean - 0.5, abs=1e-6)
            for lab in e["labels"]:
                assert set(lab["answers"]) == {"certain", "may", "unlikely"}
                assert sum(lab["answers"].values()) == pytest.approx(1.0, abs=1e-5)
    assert ex[1]["prompt_truncated"] and ex[1]["prompt_used"].endswith(" ...")


def _fresh_reward():
    """A reward of its own (its judgement cache empty), loaded."""
    return load_reward("sam-llm", "tiny", max_batch_size=8).load()


def test_reward_follows_the_llm_answer(reward):
    """End to end: the same images score near +0.5 when the LLM says 'certain', near -0.5 when 'unlikely'."""
    x = _pixels(seed=7)
    results = {}
    for word in ("certain", "unlikely"):
        r = _fresh_reward()  # an LLM that always answers `word`: its output layer biased towards that answer
        r.judge.model.lm_head = _with_answer_bias(r.judge.model, r.judge.tok, {word: 30.0}).lm_head
        results[word] = r(x, PROMPTS)
    labelled = torch.tensor([bool(e["labels"]) for e in reward.explain(x, PROMPTS)])
    assert labelled.any()
    torch.testing.assert_close(results["certain"][labelled], torch.full((int(labelled.sum()),), 0.5), atol=1e-3,
                               rtol=0)
    torch.testing.assert_close(results["unlikely"][labelled], torch.full((int(labelled.sum()),), -0.5), atol=1e-3,
                               rtol=0)


def test_judgements_are_cached_per_prompt_and_label():
    x = _pixels(2, seed=9)
    r = _fresh_reward()
    calls = []
    h = r.judge.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        r(x, PROMPTS[:2])
        first = len(calls)
        r(x, PROMPTS[:2])
    finally:
        h.remove()
    assert first == 1 and len(calls) == 1  # one batched pass, then everything from the cache
