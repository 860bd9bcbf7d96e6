"""Rewards for the launcher tests: plain callables registered from a spec's `imports:`."""
import time

import rewardtune


@rewardtune.register_reward("launch-brightness", description="Mean pixel value (tests only).")
def brightness(pixels, prompts):
    # A tiny step takes ~0.1 s on an idle CPU: the sleep leaves the preemption test time to signal mid-run.
    time.sleep(0.25)
    return pixels.mean(dim=(1, 2, 3))


@rewardtune.register_reward("launch-explode", description="Fails on purpose (tests only).")
def explode(pixels, prompts):
    raise ValueError("the launch-explode reward failed on purpose")
