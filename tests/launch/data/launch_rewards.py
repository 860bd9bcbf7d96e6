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


_calls = {"n": 0}


@rewardtune.register_reward("launch-hold", description="Mean pixel value; its 4th call waits for a file (tests only).")
def hold(pixels, prompts):
    """Holds the run (from the 4th call: the eval before training and 2 steps are done) until the file named by
    REWARDTUNE_TEST_HOLD exists, so a test can look at the job's log while the job is surely running."""
    import os
    from pathlib import Path

    _calls["n"] += 1
    go = os.environ.get("REWARDTUNE_TEST_HOLD")
    if go and _calls["n"] == 4:
        t = time.monotonic()
        while not Path(go).exists() and time.monotonic() - t < 300:
            time.sleep(0.1)
    return pixels.mean(dim=(1, 2, 3))
