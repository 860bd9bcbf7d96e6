"""Rewards loaded together share a frozen tower they both need: one copy of CLIP's image tower for the aesthetic
predictor and sam-llm's labeller (FineRewards), with the same scores as separate copies."""
from __future__ import annotations

import torch

from rewardtune.registry import load_reward
from rewardtune.rewards._shared import sharing


def _pixels(b=2, seed=0):
    return torch.rand(b, 3, 40, 52, generator=torch.Generator().manual_seed(seed))


def _pair():
    aes = load_reward("aesthetic", "tiny", clip_weights="zoo:clip").load()  # the same tower sam-llm's tiny uses
    sam = load_reward("sam-llm", "tiny").load()
    return aes, sam


def test_one_image_tower_for_both_and_the_same_scores():
    with sharing():
        aes, sam = _pair()
    alone_aes, alone_sam = _pair()  # outside sharing(): each loads its own
    assert aes.clip is sam.labeller.model
    assert alone_aes.clip is not alone_sam.labeller.model
    def numel(*rewards):
        return sum(p.numel() for p in {id(p): p for r in rewards for m in r.modules() for p in m.parameters()}.values())

    tower = sum(p.numel() for p in aes.clip.parameters())
    assert numel(aes, sam) == numel(alone_aes, alone_sam) - tower  # one tower fewer in memory
    px, prompts = _pixels(), ["a cat on a sofa", "a red car"]
    torch.testing.assert_close(aes(px, prompts), alone_aes(px, prompts), rtol=0, atol=0)
    torch.testing.assert_close(sam(px, prompts), alone_sam(px, prompts), rtol=0, atol=0)
    crops = torch.rand(3, 3, sam.labeller.image_size, sam.labeller.image_size,
                       generator=torch.Generator().manual_seed(1))
    labels, conf = sam.labeller(crops)
    labels_alone, conf_alone = alone_sam.labeller(crops)  # the full CLIP model's image features
    assert labels == labels_alone
    torch.testing.assert_close(conf, conf_alone)


def test_not_shared_across_dtypes():
    with sharing():
        a32 = load_reward("aesthetic", "tiny", clip_weights="zoo:clip").load()
        a16 = load_reward("aesthetic", "tiny", clip_weights="zoo:clip", dtype="bfloat16").load()
    assert a32.clip is not a16.clip and next(a16.clip.parameters()).dtype == torch.bfloat16
