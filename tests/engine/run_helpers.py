"""What the engine tests share about runs: the CLI in this process, a run's exported LoRA, bitwise comparison, and a
callback that interrupts a run at a given step (as Ctrl-C or a preemption would)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from rewardtune.engine import control


def cli(args: list[str]) -> int:
    """`rewardtune ARGS` in this process (where the test rewards are registered); its exit code."""
    from rewardtune.cli.main import main

    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def lora(out: str | Path) -> dict[str, torch.Tensor]:
    """The LoRA a finished run exported."""
    return load_file(str(Path(out) / "lora" / "pytorch_lora_weights.safetensors"))


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    assert not diff, f"{len(diff)} tensors differ, at most by {max(diff.values())}"


def stop_at(step: int):
    """A step callback that requests a stop once `step` optimizer steps are done."""
    def callback(event) -> None:
        if event.step == step:
            control.request_stop("test interrupt")
    return callback
