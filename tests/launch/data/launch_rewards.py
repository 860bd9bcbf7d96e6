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


_training_calls = {"n": 0}


@rewardtune.register_reward("launch-hold", description="Mean pixel value; holds training step 3 until a file "
                                                       "exists (tests only).")
def hold(pixels, prompts):
    """Holds the run at training step 3 (steps 1 and 2 are done and logged) until the file named by
    REWARDTUNE_TEST_HOLD exists, so a test can look at the job's log while the job is surely running. A training
    step is a call with gradient enabled (DRaFT-1, one micro-batch: one call per step); evals are not counted."""
    import os
    from pathlib import Path

    import torch

    if torch.is_grad_enabled():
        _training_calls["n"] += 1
    go = os.environ.get("REWARDTUNE_TEST_HOLD")
    if go and torch.is_grad_enabled() and _training_calls["n"] == 3:
        t = time.monotonic()
        while not Path(go).exists() and time.monotonic() - t < 300:
            time.sleep(0.1)
    return pixels.mean(dim=(1, 2, 3))
