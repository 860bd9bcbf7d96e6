"""Host-device synchronizations of the training step, and the levers that need no GPU to check: `train.fused_adam`
(the skip decision taken on the device, numbers read once per logging step) and `train.channels_last`.

A CPU has no synchronization to count, so `HostReads` counts what would be one on a GPU: a tensor read by the host
(`.item()`, `.tolist()`, `float()`, `bool()`, `.cpu()`, `.numpy()`...) whose value came from the models, i.e.
was computed, at any distance, from a parameter or from a tensor that requires grad. Random draws made on the host
(batch prompts, truncation K, noise) do not count: on a GPU they never leave the host either.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from run_helpers import assert_bitwise_equal, lora, stop_at
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import rewardtune.api as api
from rewardtune.engine.build import build_trainer
from rewardtune.engine.trainer import NonFiniteError
from rewardtune.spec.load import load_spec

_READS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu", "__array__",
          "__format__", "__repr__"}
_TAG = "_rt_from_model"


def _from_model(x) -> bool:
    return isinstance(x, torch.Tensor) and (isinstance(x, torch.nn.Parameter) or x.requires_grad
                                            or getattr(x, _TAG, False))


class HostReads(TorchFunctionMode):
    """Counts host reads of model-derived tensors (see the module docstring), with where they happened."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs, _ = tree_flatten((args, kwargs))
        if any(_from_model(x) for x in inputs):
            name = getattr(func, "__name__", "")
            if name in _READS:
                import traceback

                frame = next((f for f in reversed(traceback.extract_stack()[:-1]) if "rewardtune" in f.filename
                              and "tests" not in f.filename), None)
                self.reads.append(f"{name} at {frame.filename.split('rewardtune/')[-1]}:{frame.lineno}"
                                  if frame else name)
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor):
                    setattr(o, _TAG, True)
        return out


def _spec(spec_factory, **train):
    return load_spec(spec_factory({"name": "alignprop", "k_range": [1, 3], "draw": "per_step"},
                                  objective=[{"reward": "test-convnet"}, {"reward": "test-brightness",
                                                                          "role": "monitor"}],
                                  sampling={"steps": 3, "eta": 1.0, "guidance_scale": 2.0},
                                  train={"steps": 6, "grad_accum": 2, **train},
                                  logging={"eval_prompts": 1}))


def test_fused_adam_steps_never_read_the_device_until_their_numbers_are_read(tmp_path, spec_factory):
    tr = build_trainer(_spec(spec_factory, fused_adam=True), output_dir=tmp_path, progress=False)
    assert tr.defer_reads
    pending = []
    with HostReads() as reads:
        for _ in range(3):
            pending.append(tr.step_async())
            tr.step += 1
    assert reads.reads == []  # three optimizer steps, two micro-batches each, not one read
    with HostReads() as reads:
        read = tr.read_steps(pending)
    assert len(reads.reads) == 1 and reads.reads[0].startswith("tolist"), reads.reads  # all three steps at once
    assert [m["skipped"] for m, _, _ in read] == [0.0, 0.0, 0.0]
    assert all(isinstance(m["loss"], float) and isinstance(m["grad_norm"], float) for m, _, _ in read)


def test_the_counter_sees_the_per_step_read_of_the_plain_optimizer(tmp_path, spec_factory):
    """The counter can fail: with the default (unfused) AdamW the skip decision is read on the host each step."""
    tr = build_trainer(_spec(spec_factory), output_dir=tmp_path, progress=False)
    assert not tr.defer_reads
    with HostReads() as reads:
        for _ in range(2):
            tr.step_async()
            tr.step += 1
    assert len(reads.reads) == 2 and all(r.startswith("tolist at engine/trainer.py") for r in reads.reads)


def _rows(out: Path) -> dict[int, dict]:
    rows = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["step"] > 0:
            rows.setdefault(rec["step"], {}).update(
                {k: v for k, v in rec.items() if not k.startswith(("time/", "memory/"))})
    return rows


def test_reading_every_third_step_logs_and_trains_as_reading_every_step(tmp_path, spec_factory, nan_on_steps):
    """logging.every=3 with fused AdamW: the same weights bitwise and the same logged numbers as logging.every=1,
    a non-finite step still skipped (and logged, though off the logging grid)."""
    def spec(every):
        return spec_factory(objective=[{"reward": "test-nan-on-steps"}],
                            train={"steps": 6, "fused_adam": True}, model={"ema": {"decay": 0.5}},
                            logging={"every": every, "eval_prompts": 1})

    runs = {}
    for every in (1, 3):
        nan_on_steps.arm({2})
        res = api.run(spec(every), output_dir=tmp_path / str(every), progress=False)
        assert res.steps_done == 6 and res.skipped_steps == 1
        runs[every] = _rows(tmp_path / str(every))
    assert runs[3].keys() == {2, 3, 6}  # the logging steps and the skipped one
    for step, row in runs[3].items():
        assert row == pytest.approx(runs[1][step], nan_ok=True)
    assert runs[3][2]["skipped"] == 1.0 and runs[3][6]["skipped_total"] == 1.0
    assert_bitwise_equal(lora(tmp_path / "1"), lora(tmp_path / "3"))
    assert all(torch.isfinite(v).all() for v in lora(tmp_path / "3").values())


def test_fused_adam_skips_a_non_finite_step_exactly(tmp_path, spec_factory, nan_on_steps):
    """The skip taken on the device leaves weights and optimizer state as they were, as the host-side skip does."""
    spec = load_spec(spec_factory(objective=[{"reward": "test-nan-on-steps"}], train={"fused_adam": True},
                                  logging={"eval_prompts": 1}))
    tr = build_trainer(spec, output_dir=tmp_path, progress=False)
    nan_on_steps.arm({2})
    tr.train_step()
    tr.step += 1
    before = {k: v.clone() for k, v in tr.diff.trainable_state_dict().items()}
    moments = [{k: v.clone() for k, v in st.items()} for st in tr.opt.state.values()]
    m2, _, bad = tr.train_step()
    assert bad and m2["skipped"] == 1.0 and tr.skipped == 1 and m2["loss"] != m2["loss"]
    after = tr.diff.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for old, new in zip(moments, tr.opt.state.values(), strict=True):
        assert all(torch.equal(old[k], new[k]) for k in old)  # step count included
    nan_on_steps.arm({2, 3, 4})
    tr2 = build_trainer(load_spec(spec_factory(objective=[{"reward": "test-nan-on-steps"}],
                                               train={"fused_adam": True, "max_nonfinite": 1},
                                               logging={"eval_prompts": 1, "every": 4})),
                        output_dir=tmp_path / "b", progress=False)
    with pytest.raises(NonFiniteError, match="max_nonfinite=1"):
        tr2.run()
    assert all(torch.isfinite(v).all() for v in tr2.diff.trainable_state_dict().values())


def test_fused_adam_matches_the_plain_optimizer(tmp_path, spec_factory):
    outs = {}
    for fused in (False, True):
        spec = spec_factory(train={"steps": 3, "fused_adam": fused}, logging={"eval_prompts": 1})
        api.run(spec, output_dir=tmp_path / str(fused), progress=False)
        outs[fused] = lora(tmp_path / str(fused))
    ref = outs[False]
    assert any(ref[k].abs().max() > 0 for k in ref if "lora.up" in k)  # trained: LoRA up starts at zero
    for k in ref:
        torch.testing.assert_close(outs[True][k], ref[k], rtol=1e-4, atol=1e-6)


def test_resume_with_deferred_reads_is_bitwise_equal(tmp_path, spec_factory):
    spec = spec_factory({"name": "alignprop", "k_range": [1, 3], "draw": "per_batch"},
                        objective=[{"reward": "test-convnet"}],
                        sampling={"steps": 3, "eta": 1.0, "guidance_scale": 2.0},
                        train={"steps": 6, "grad_accum": 2, "lr_schedule": "cosine", "warmup_steps": 2,
                               "checkpoint_every": 2, "fused_adam": True}, model={"ema": {"decay": 0.9}},
                        logging={"every": 3, "eval_prompts": 1})
    full = api.run(spec, output_dir=tmp_path / "full", progress=False)
    assert full.steps_done == 6

    part = api.run(spec, output_dir=tmp_path / "part", progress=False, callbacks=[stop_at(3)])
    assert part.stopped_early and part.steps_done == 3
    resumed = api.run(spec, output_dir=tmp_path / "part", progress=False, resume=True)
    assert resumed.resumed_from == 3 and resumed.steps_done == 6
    assert_bitwise_equal(lora(tmp_path / "full"), lora(tmp_path / "part"))


def test_channels_last_gives_the_same_step(tmp_path, spec_factory):
    metrics = {}
    for cl in (False, True):
        tr = build_trainer(load_spec(spec_factory(train={"channels_last": cl}, logging={"eval_prompts": 1})),
                           output_dir=tmp_path / str(cl), progress=False)
        conv = next(m for m in tr.diff.unet.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == cl
        metrics[cl] = tr.train_step()[0]
    for k in ("loss", "grad_norm", "reward/test-brightness"):
        assert metrics[True][k] == pytest.approx(metrics[False][k], rel=1e-4)


@pytest.mark.slow  # compiling the tiny UNet takes 1-3 minutes on a CPU
def test_compiled_prefix_gives_the_same_step(tmp_path, spec_factory):
    """train.compile_prefix: the no-grad steps, and only they, run the compiled denoiser (a hook on it counts its
    calls; a hook inside it sees torch.compiler.is_compiling() while the compiler traces it), with the same loss
    and gradient norm up to float rounding."""
    metrics, calls, traced = {}, [], []
    for mode in ("no", "default"):
        spec = spec_factory({"name": "draft_k", "k": 1}, sampling={"steps": 3, "guidance_scale": 2.0},
                            train={"compile_prefix": mode}, logging={"eval_prompts": 1})
        tr = build_trainer(load_spec(spec), output_dir=tmp_path / mode, progress=False)
        if mode == "default":
            assert tr.diff.prefix_denoiser is not tr.diff.denoiser
            tr.diff.prefix_denoiser.register_forward_pre_hook(lambda module, args: calls.append(1))
            tr.diff.denoiser.register_forward_pre_hook(
                lambda module, args: traced.append(True) if torch.compiler.is_compiling() else None)
        metrics[mode] = []
        for _ in range(2):
            metrics[mode].append(tr.train_step()[0])
            tr.step += 1
    assert len(calls) == 4  # 3 steps, DRaFT-1: the first two of each sample (guidance in one batched call)
    assert traced  # the compiler traced the denoiser: the calls ran its graph, not the eager module
    for a, b in zip(metrics["no"], metrics["default"], strict=True):
        for k in ("loss", "grad_norm"):
            assert b[k] == pytest.approx(a[k], rel=1e-3)
