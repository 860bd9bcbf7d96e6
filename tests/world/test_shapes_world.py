"""The shapes world: rendering, captions and the rule-based judge (no learned model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rewardtune.world import shapes as W


def test_prompts_cover_every_colour_and_shape_once():
    ps = W.prompts()
    assert len(ps) == len(set(ps)) == 32
    assert "a red circle" in ps and "an orange diamond" in ps
    assert {W.parse_prompt(p) for p in ps} == {(c, s) for c in W.COLOURS for s in W.SHAPES}


def test_rendering_is_deterministic_from_the_seed():
    a, sa = W.sample(16, seed=3)
    b, sb = W.sample(16, seed=3)
    c, _ = W.sample(16, seed=4)
    assert a.dtype == np.float32 and a.shape == (16, 32, 32, 3) and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, b) and sa == sb
    assert not np.array_equal(a, c)


def test_objects_stay_inside_the_image_with_anti_aliased_edges():
    imgs, scenes = W.sample(200, seed=5)
    for img, sc in zip(imgs, scenes, strict=True):
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert np.allclose(border, sc.background), "the object must not touch the border"
    # edge pixels take values between background and object colour (supersampling)
    d = np.linalg.norm(imgs - imgs[:, :1, :1], axis=-1)
    frac = ((d > 0.05) & (d < 0.5)).mean()
    assert 0.005 < frac < 0.1


def test_judge_reads_the_world_s_own_images():
    imgs, scenes = W.sample(1000, seed=11)
    acc = W.accuracy(W.judge(imgs, [s.caption for s in scenes]))
    assert acc["colour"] >= 0.99 and acc["shape"] >= 0.99 and acc["both"] >= 0.99, acc


def test_judge_survives_mild_blur_and_noise():
    """Generated images are softer and noisier than rendered ones; a mild degradation must not fool the judge."""
    imgs, scenes = W.sample(400, seed=12)
    rng = np.random.default_rng(0)
    p = np.pad(imgs, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    y = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    blurred = 0.25 * y[:, :, :-2] + 0.5 * y[:, :, 1:-1] + 0.25 * y[:, :, 2:]
    noisy = np.clip(blurred + rng.normal(0, 0.03, blurred.shape), 0, 1).astype(np.float32)
    acc = W.accuracy(W.judge(noisy, [s.caption for s in scenes]))
    assert acc["both"] >= 0.97, acc


def test_judge_on_noise_is_not_better_than_chance():
    rng = np.random.default_rng(1)
    noise = rng.uniform(0, 1, (400, 32, 32, 3)).astype(np.float32)
    caps = [W.prompts()[i % 32] for i in range(400)]
    acc = W.accuracy(W.judge(noise, caps))
    assert acc["colour"] <= 1 / 8 + 0.05 and acc["shape"] <= 1 / 4 + 0.05, acc


def test_judge_with_wrong_captions_scores_chance():
    """Right images, shuffled captions: the judge reads the image, not the caption (chance is 1/8 and 1/4)."""
    imgs, scenes = W.sample(2000, seed=13)
    caps = [scenes[(i * 7 + 3) % 2000].caption for i in range(2000)]
    acc = W.accuracy(W.judge(imgs, caps))
    assert abs(acc["colour"] - 1 / 8) < 0.04 and abs(acc["shape"] - 1 / 4) < 0.04, acc


def test_judge_refuses_a_wrong_colour_and_a_distorted_shape():
    rng = np.random.default_rng(2)
    sc = W.random_scene(rng, "orange", "square")
    img = W.render(sc)
    assert W.judge(img[None], ["an orange square"])[0].both_ok
    dark = img.copy()
    obj = np.linalg.norm(img - sc.background, axis=-1) > 0.3
    dark[obj] *= 0.6  # the probe's hacked "orange" turned dark red
    v = W.judge(dark[None], ["an orange square"])[0]
    assert not v.colour_ok and v.reading.colour != "orange"
    stretched = np.full_like(img, sc.background)
    stretched[10:14, 3:29] = W.COLOURS["orange"]  # a bar is no square
    v = W.judge(stretched[None], ["an orange square"])[0]
    assert v.colour_ok and not v.shape_ok


def test_blank_image_has_no_reading():
    v = W.judge(np.full((1, 32, 32, 3), 0.95, np.float32), ["a red circle"])[0]
    assert v.reading.colour is None and v.reading.shape is None and not v.colour_ok and not v.shape_ok
    assert v.text == "saw ? ?: wrong colour, shape"


@pytest.mark.parametrize("bad", ["a red car", "a photo of a cat", "a red blue circle", ""])
def test_prompts_outside_the_world_are_refused(bad):
    with pytest.raises(ValueError, match="one colour"):
        W.parse_prompt(bad)


# ------------------------------------------------------------------------------------------ as a reward
def test_registered_as_a_non_differentiable_reward():
    from rewardtune.registry import get_card, load_reward

    card = get_card("shapes-eval")
    assert card.differentiable is False
    r = load_reward("shapes-eval")
    imgs, scenes = W.sample(6, seed=21)
    px = torch.from_numpy(imgs).permute(0, 3, 1, 2).requires_grad_(True)
    caps = [s.caption for s in scenes]
    wrong = [W.caption("red" if s.objects[0].colour != "red" else "blue", s.objects[0].shape) for s in scenes]
    assert r(px, caps).tolist() == [1.0] * 6
    assert r(px, wrong).tolist() == [0.0] * 6
    assert not r(px, caps).requires_grad
    assert load_reward("shapes-eval", metric="shape")(px, wrong).tolist() == [1.0] * 6
    assert load_reward("shapes-eval", metric="mean")(px, wrong).tolist() == [0.5] * 6
    details = r.explain(px, wrong)
    assert details[0]["colour"] == scenes[0].objects[0].colour and details[0]["shape_ok"] is True
    assert details[0]["verdict"].endswith("wrong colour")


def test_larger_images_are_judged_at_the_world_s_size():
    from rewardtune.registry import load_reward

    imgs, scenes = W.sample(4, seed=22)
    px = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    big = torch.nn.functional.interpolate(px, scale_factor=8, mode="nearest")  # 256 px, as a user might save them
    r = load_reward("shapes-eval")
    assert r(big, [s.caption for s in scenes]).tolist() == [1.0] * 4


def test_unknown_metric_is_refused():
    from rewardtune.registry import load_reward

    with pytest.raises(ValueError, match="unknown metric"):
        load_reward("shapes-eval", metric="colours")
