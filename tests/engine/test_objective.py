"""Ranks, top-m selection, the assemble_ranked formula and running z-score normalization."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from rewards_for_tests import register_card

from rewardtune.engine.distributed import DistInfo
from rewardtune.engine.objective import (
    Objective,
    ObjectiveTerm,
    RunningZScore,
    rank_scores,
    top_m_per_group,
    within_group_ranks,
)
from rewardtune.registry import load_reward


def test_ranks_best_is_one_and_ties_are_averaged():
    v = torch.tensor([0.3, 0.9, 0.3, 0.1, 0.9, 0.5])
    g = torch.zeros(6, dtype=torch.long)
    # sorted high to low: 0.9, 0.9 (ranks 1,2 -> 1.5), 0.5 (3), 0.3, 0.3 (4,5 -> 4.5), 0.1 (6)
    assert within_group_ranks(v, g).tolist() == [4.5, 1.5, 4.5, 6.0, 1.5, 3.0]


def test_ranks_are_within_each_prompt():
    v = torch.tensor([1.0, 2.0, 3.0, 30.0, 20.0, 10.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    assert within_group_ranks(v, g).tolist() == [3.0, 2.0, 1.0, 1.0, 2.0, 3.0]


def test_rank_is_not_argsort():
    """The FineRewards notebook used argsort where a rank was meant; the two differ on this input."""
    v = torch.tensor([0.2, 0.9, 0.5, 0.7])
    ranks = within_group_ranks(v, torch.zeros(4, dtype=torch.long))
    assert ranks.tolist() == [4.0, 1.0, 3.0, 2.0]
    argsort = (torch.argsort(-v) + 1).double()  # [2, 4, 3, 1]: positions, not ranks
    assert not torch.equal(ranks, argsort)
    assert torch.equal(ranks, (torch.argsort(torch.argsort(-v)) + 1).double())  # the double argsort is the rank


def test_rank_scores_unit_range_and_singletons():
    v = torch.tensor([1.0, 2.0, 3.0, 5.0])
    g = torch.tensor([0, 0, 0, 1])
    assert rank_scores(v, g).tolist() == [0.0, 0.5, 1.0, 0.5]


def test_top_m_per_group_with_ties():
    score = torch.tensor([0.1, 0.7, 0.7, 0.2, 0.9, 0.3, 0.9, 0.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert top_m_per_group(score, g, 1).tolist() == [1, 4]  # ties: the earlier sample wins
    assert top_m_per_group(score, g, 2).tolist() == [1, 2, 4, 6]
    assert top_m_per_group(score, g, 3).tolist() == [1, 2, 3, 4, 6, 5]


def test_running_zscore_matches_numpy_over_all_batches():
    rz = RunningZScore(["a"])
    rng = np.random.default_rng(0)
    seen = []
    for n in (3, 5, 1, 7):
        b = rng.normal(2.0, 3.0, size=n)
        seen.extend(b)
        rz.update("a", torch.tensor(b), DistInfo())
    assert rz.mean["a"] == pytest.approx(np.mean(seen), rel=1e-12)
    assert rz.std("a") == pytest.approx(np.std(seen, ddof=1), rel=1e-12)
    x = torch.tensor([0.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(rz.normalize("a", x), (x - np.mean(seen)) / (np.std(seen, ddof=1) + 1e-6))
    rz2 = RunningZScore(["a"])
    rz2.load_state_dict(rz.state_dict())
    assert rz2.state_dict() == rz.state_dict()


def _objective():
    bright = load_reward("test-brightness")
    red = load_reward("test-redness")
    return Objective([ObjectiveTerm("bright", bright, weight=2.0),
                      ObjectiveTerm("red", red, weight=1.0, combine="assemble_ranked"),
                      ObjectiveTerm("red2", load_reward("test-redness"), weight=3.0, combine="assemble_ranked")])


def test_assemble_ranked_formula():
    g = torch.Generator().manual_seed(0)
    px = torch.rand(6, 3, 4, 4, generator=g).requires_grad_(True)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    obj = _objective()
    val = obj.evaluate(px, ["p"] * 6, groups)
    # by hand: both ranked terms are the same reward, so s_ij is the same for both and a = (1/4, 3/4)
    red = val.raw["red"]
    s = rank_scores(red, groups).float()
    m = 2 * (0.25 * s + 0.75 * s)
    torch.testing.assert_close(val.multiplier, m)
    for grp in (0, 1):
        assert float(val.multiplier[groups == grp].mean()) == pytest.approx(1.0)
    bright = px.mean(dim=(1, 2, 3))
    torch.testing.assert_close(val.per_sample, m * 2.0 * bright)
    # gradient comes only from the differentiable term, weighted per sample by m
    val.per_sample.mean().backward()
    want = (m * 2.0 / 6)[:, None, None, None].expand_as(px) / (3 * 4 * 4)
    torch.testing.assert_close(px.grad, want)


def test_weighted_sum_only_has_unit_multiplier():
    obj = Objective([ObjectiveTerm("bright", load_reward("test-brightness"), weight=0.5)])
    px = torch.rand(4, 3, 4, 4)
    val = obj.evaluate(px, ["p"] * 4, torch.arange(4))
    assert val.multiplier is None
    torch.testing.assert_close(val.per_sample, 0.5 * px.mean(dim=(1, 2, 3)))


def test_zscore_normalized_terms_and_monitor_terms():
    obj = Objective([ObjectiveTerm("bright", load_reward("test-brightness"), normalize="running_zscore"),
                     ObjectiveTerm("mon", load_reward("test-convnet"), role="monitor")])
    px = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    val = obj.evaluate(px, ["p"] * 4, torch.arange(4))
    b = px.detach().mean(dim=(1, 2, 3)).double()
    want = ((b - b.mean()) / (b.std() + 1e-6)).float()
    torch.testing.assert_close(val.normalized["bright"], want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(val.per_sample.detach(), want, rtol=1e-4, atol=1e-5)  # monitor adds nothing
    assert "mon" in val.raw and not val.raw["mon"].requires_grad
    assert obj.state_dict()["stats"]["count"]["bright"] == 4


def test_learning_rate_schedules():
    import math

    from rewardtune.engine.trainer import TrainSettings, lr_at

    const = TrainSettings(steps=10, lr=1.0, warmup_steps=4)
    assert [lr_at(i, const) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = TrainSettings(steps=10, lr=2.0, warmup_steps=2, lr_schedule="cosine")
    assert lr_at(0, cos) == 1.0 and lr_at(2, cos) == 2.0
    assert lr_at(6, cos) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(9, cos) < lr_at(8, cos) < lr_at(7, cos)


def test_direction_lower_flips_the_objective_and_training_lowers_the_reward(tmp_path, spec_factory):
    """`direction: lower` on a card: the objective is minus the reward, so training lowers it (the same reward
    under `higher`, test-brightness, is raised by the same run: test_methods)."""
    import rewardtune.api as api

    # mean pixel value under a card that says lower is better
    register_card("test-darkness", lambda pixels, prompts: pixels.mean(dim=(1, 2, 3)), direction="lower",
                  differentiable=True)
    seen = []
    r = api.run(spec_factory({"name": "draft_k", "k": 1}, objective=[{"reward": "test-darkness"}]),
                output_dir=tmp_path, progress=False, callbacks=[seen.append])
    for ev in seen:
        assert ev.metrics["objective"] == pytest.approx(-ev.metrics["reward/test-darkness"], rel=1e-6)
        assert ev.metrics["reward_norm/test-darkness"] == pytest.approx(-ev.metrics["reward/test-darkness"])
    assert r.eval_after["objective"] == pytest.approx(-r.eval_after["test-darkness"], rel=1e-6)
    assert r.eval_after["test-darkness"] < r.eval_before["test-darkness"], (r.eval_before, r.eval_after)
