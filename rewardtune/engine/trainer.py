"""The training loop: micro-batches with gradient accumulation, all-reduced gradients, clipping, AdamW (or 8-bit
Adam), warmup + constant/cosine LR, non-finite step skipping, EMA, logging, grids, checkpoints and resume.

Randomness is a function of (seed, step, micro-batch, purpose) only, so a resumed run replays exactly what an
uninterrupted run would have done (bitwise on CPU).
"""
from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rewardtune.engine import control
from rewardtune.engine.callbacks import CallbackList, EvalEvent, StepEvent
from rewardtune.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    any_flag,
    average_gradients,
    barrier,
    gather_full,
    is_dtensor,
    like,
)
from rewardtune.engine.objective import Objective, explain_rewards
from rewardtune.engine.outputs import (
    MetricsWriter,
    RunStart,
    captioned_grid,
    open_run_dir,
    save_checkpoint,
    set_aside,
    write_run_info,
)
from rewardtune.engine.pipeline import Diffusion, full_save, lora_save
from rewardtune.engine.sampler import sample_eval, uncond_embedding
from rewardtune.engine.types import Batch, MethodOutput, RunContext, SamplingSettings, generator
from rewardtune.errors import CheckpointError, RewardtuneError, RunInterrupted, UsageError
from rewardtune.rundir import RunDir

log = logging.getLogger("rewardtune.engine")


class NonFiniteError(UsageError):
    """Too many steps had a non-finite reward, loss or gradient: the spec's settings (learning rate, clipping) or a
    reward do not suit each other (exit 2, like other bad input; the last finished step is checkpointed)."""


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 100
    batch_size: int = 4  # global, per micro-batch
    grad_accum: int = 1
    images_per_prompt: int = 1
    lr: float = 1e-3
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    seed: int = 0
    mixed_precision: str = "no"
    max_nonfinite: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 1
    images_every: int = 50
    eval_prompts: tuple[str, ...] = ()
    tensorboard: bool = False
    wandb_project: str | None = None  # log to wandb, in this project (logging.trackers)
    progress: bool = True
    progress_every_s: float = 10.0  # not a terminal: one progress line at most this often (0: every step)...
    progress_every_steps: int = 0  # ...or every this many steps (0: by time only)
    ema_decay: float | None = None
    ema_every: int = 1
    fused_adam: bool = False
    select_by: str | None = None  # export the eval that scores best on this term (or 'objective'), not the last


@dataclass
class PendingStep:
    """A finished optimizer step whose numbers may still be on the device (`Trainer.read_steps` reads them)."""

    values: torch.Tensor | list[float]  # [bad loss/reward, bad grad norm, *metrics]; a list once read
    names: list[str]  # of the metrics after the two flags
    host: dict[str, float]  # what the host already knows: lr, a method's host numbers
    out: MethodOutput | None  # the last micro-batch's output (kept only when there are callbacks)
    timer: _PhaseTimer
    t0: float  # perf_counter when the step began
    t_done: float | None = None  # when it ended, for a step whose skip decision was read at once
    bad: bool | None = None  # skipped; known once read
    skipped_total: int = 0  # skipped steps of the run up to this one; known once read


@dataclass
class TrainResult:
    output_dir: Path
    steps_done: int
    weights_path: Path | None
    stopped_early: bool = False
    stop_reason: str = ""
    skipped_steps: int = 0
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    selected_step: int | None = None  # logging.select_by exported this step's weights, not the last step's


def lr_at(step: int, s: TrainSettings) -> float:
    if s.warmup_steps and step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.lr_schedule == "cosine":
        span = max(1, s.steps - s.warmup_steps)
        return s.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - s.warmup_steps) / span)))
    return s.lr


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def make_optimizer(params: list[torch.nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            from rewardtune.errors import MissingDependencyError

            raise MissingDependencyError("bitsandbytes", "bnb", "train.optimizer=adamw8bit") from None
        return bnb.optim.AdamW8bit(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay,
                             fused=True if s.fused_adam else None)


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Trainer:
    def __init__(self, diff: Diffusion, objective: Objective, method: Any, sampling: SamplingSettings,
                 settings: TrainSettings, train_prompts: list[str], output_dir: Path, *, spec: Any = None,
                 callbacks: Any = (), info: DistInfo | None = None):
        self.diff, self.objective, self.method = diff, objective, method
        self.sampling, self.s = sampling, settings
        self.train_prompts = list(train_prompts)
        self.out = Path(output_dir)
        self.run_dir = RunDir(self.out)
        self.spec = spec
        self.callbacks = CallbackList(callbacks)
        self.info = info or DistInfo()
        s = settings
        g = s.images_per_prompt
        if s.batch_size % g:
            raise UsageError(f"train.batch_size={s.batch_size} must be a multiple of "
                             f"sampling.images_per_prompt={g}")
        if s.batch_size % (self.info.world * g):
            raise UsageError(f"train.batch_size={s.batch_size} must split into {self.info.world} ranks of whole "
                             f"prompt groups ({g} images per prompt)")
        self.local_batch = s.batch_size // self.info.world
        self.params = diff.trainable_parameters()
        if not self.params:
            raise UsageError("nothing to train: the denoiser has no trainable parameters")
        self.opt = make_optimizer(self.params, s)
        fp16 = s.mixed_precision == "fp16" and diff.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(diff.device.type, enabled=fp16)
        # a fused AdamW takes the skip decision as a device tensor (`found_inf`, as GradScaler passes it), so a step
        # need not wait for the device; the loop then reads the numbers of several steps at once (`read_steps`)
        self.defer_reads = bool(s.fused_adam and s.optimizer == "adamw" and not fp16)
        self.ema = [p.detach().clone() for p in self.params] if s.ema_decay else None
        self.ctx = RunContext(diff, objective, sampling, self.train_prompts, self.info, s.seed, self.local_batch)
        if diff.family.uses_cfg(sampling.guidance):
            uncond_embedding(diff)  # once, before the first step (the text encoders are frozen)
        self.step = 0
        self.skipped = 0
        self.resumed_from: int | None = None
        self._eval_views: dict[str, tuple] = {}  # before/after -> what the grid showed (for compare.png)
        self._saved_step: int | None = None  # step of the newest checkpoint on disk that this run wrote or loaded
        self._before_step: dict[str, Any] | None = None  # state as the unfinished step found it (when aborted)
        self._best: dict[str, Any] | None = None  # logging.select_by: the best eval so far (its step on every rank)
        self._selected_step: int | None = None  # the step whose weights were exported, when not the last

    # ------------------------------------------------------------------------------------------------ batches
    def make_batch(self, step: int, micro: int) -> Batch:
        s, info = self.s, self.info
        g = s.images_per_prompt
        gen = generator(s.seed, "batch", step, micro)
        n_prompts = s.batch_size // g
        pick = torch.randint(len(self.train_prompts), (n_prompts,), generator=gen).tolist()
        prompts = [self.train_prompts[p] for p in pick for _ in range(g)]
        groups = torch.arange(n_prompts).repeat_interleave(g)
        rows = slice(info.rank * self.local_batch, (info.rank + 1) * self.local_batch)
        return Batch(prompts[rows], groups[rows].to(self.diff.device, non_blocking=True), step, micro, gen, rows,
                     s.batch_size, self.diff.device)

    # ------------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, with whole tensors (gathered from every rank when the denoiser is sharded:
        then every rank must call it)."""
        return {"step": self.step, "trainable": {k: v.cpu() for k, v in self.diff.trainable_state_dict().items()},
                "optimizer": gather_full(self.opt.state_dict()), "scaler": self.scaler.state_dict(),
                "objective": self.objective.state_dict(), "method": self.method.state_dict(),
                "skipped": self.skipped, "ema": [gather_full(e).cpu() for e in self.ema] if self.ema else None,
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                        "torch": torch.get_rng_state()}}

    def _optimizer_state_like_params(self, sd: dict[str, Any]) -> dict[str, Any]:
        """A saved optimizer state (whole tensors) laid out as the parameters are: each rank's shard of every
        per-parameter moment when the denoiser is sharded."""
        if not self.diff.sharded:
            return sd
        params = [p for g in self.opt.param_groups for p in g["params"]]
        state = {k: {n: like(v, params[int(k)]) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                     for n, v in st.items()} for k, st in sd["state"].items()}
        return {**sd, "state": state}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self._load_weights(sd)
        self.opt.load_state_dict(self._optimizer_state_like_params(sd["optimizer"]))
        self.scaler.load_state_dict(sd["scaler"])
        self.objective.load_state_dict(sd["objective"])
        self.method.load_state_dict(sd["method"])
        self.skipped = int(sd["skipped"])
        random.setstate(sd["rng"]["python"])
        np.random.set_state(sd["rng"]["numpy"])
        torch.set_rng_state(sd["rng"]["torch"])
        self.step = int(sd["step"])

    def _load_weights(self, sd: dict[str, Any]) -> None:
        """The trainable weights (and their EMA) of a checkpoint's state."""
        self.diff.load_trainable_state_dict({k: v.to(self.diff.device) for k, v in sd["trainable"].items()})
        if self.ema is not None and sd.get("ema"):
            for e, v in zip(self.ema, sd["ema"], strict=True):
                e.copy_(like(v.to(e.device), e))

    def step_snapshot(self) -> dict[str, Any]:
        """What a step can change before its optimizer update: the objective's running statistics, the method's
        state and the RNG states. An aborted step checkpoints these as the step found them, so a resume replays
        it exactly."""
        return {"objective": copy.deepcopy(self.objective.state_dict()),
                "method": copy.deepcopy(self.method.state_dict()),
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                        "torch": torch.get_rng_state()}}

    def checkpoint(self) -> Path | None:
        """Checkpoint the last finished step (once: a step already on disk is not written again)."""
        path = None
        if self._saved_step != self.step and (self.info.main or self.diff.sharded):
            state = self.state_dict()  # sharded: every rank takes part in gathering the whole tensors
            if self._before_step is not None:
                state.update(self._before_step)
            if self.info.main:
                path = save_checkpoint(self.run_dir, self.step, state, self.s.keep_checkpoints,
                                       protect=self._best["step"] if self._best else None)
        self._saved_step = self.step
        barrier(self.info)
        return path

    # -------------------------------------------------------------------------------------------------- eval
    def _swap_ema(self) -> None:
        if self.ema is None:
            return
        with torch.no_grad():
            for p, e in zip(self.params, self.ema, strict=True):
                tmp = p.detach().clone()
                p.copy_(e)
                e.copy_(tmp)

    @torch.no_grad()
    def evaluate(self, tag: str, writer: MetricsWriter | None, step: int | None = None) -> dict[str, float]:
        """Eval prompts on fixed noise (the same every time): rewards per term, grid written by rank 0. A sharded
        denoiser needs every rank in its calls, so then every rank samples and rank 0 scores. `step`: the step
        whose weights these are (default: the current one)."""
        step = self.step if step is None else step
        prompts = list(self.s.eval_prompts)
        if not prompts or not (self.info.main or self.diff.sharded):
            return {}
        self._swap_ema()
        try:  # no larger batches than training uses
            pixels = sample_eval(self.diff, prompts, self.sampling, self.s.seed, self.local_batch)
            if not self.info.main:
                return {}
            groups = torch.arange(len(prompts), device=pixels.device)
            value = self.objective.evaluate(pixels, prompts, groups, update_stats=False, need_grad=False)
        finally:
            self._swap_ema()
        rewards = {k: [float(x) for x in v.cpu()] for k, v in value.raw.items()}
        out = {f"eval/{k}": float(np.mean(v)) for k, v in rewards.items()}
        out["eval/objective"] = float(self.objective.weighted({k: np.mean(v) for k, v in rewards.items()}))
        fields, verdicts, ok = explain_rewards({t.label: t.reward for t in self.objective.terms}, pixels, prompts)
        out.update({f"eval/{k}": float(np.mean(v)) for k, v in fields.items()})
        img_dir = self.run_dir.images_dir
        img_dir.mkdir(parents=True, exist_ok=True)
        path = img_dir / f"{tag}.png"
        captioned_grid(pixels.cpu(), prompts, rewards, title=f"{tag} (step {step}): {eval_summary(out)}",
                       verdicts=verdicts, ok=ok).save(path)
        if writer is not None:
            writer.add_image(f"eval/{'grid'}", path, step)
        if tag in ("before", "after"):  # only these two are kept (mid-run grids are written and dropped)
            self._eval_views[tag] = (pixels.cpu(), prompts, verdicts, ok)
        if tag == "after" and "before" in self._eval_views:
            self._write_comparison(img_dir)
        self.callbacks.eval(EvalEvent(step, pixels.cpu(), prompts, rewards, str(path)))
        return out

    def _write_comparison(self, img_dir: Path) -> None:
        """images/compare.png: the first eval prompts before and after training, on the same noise. Written when the
        'before' eval ran in this process (a resumed run has its after.png, and the before.png of its first part)."""
        from rewardtune.engine.outputs import comparison_grid, judge_labels

        sides = []
        for tag in ("before", "after"):
            pix, prompts, verdicts, ok = self._eval_views[tag]
            sides.append((pix, prompts, judge_labels(verdicts), ok))
        shown = (f"step {self._selected_step} of {self.step} (best {self.s.select_by})"
                 if self._selected_step is not None else f"{self.step} steps")
        comparison_grid(sides[0], sides[1], n=16, title=f"before -> after {shown} "
                        "(under each image: what the judge saw; green = the prompt's colour and shape)").save(
            img_dir / "compare.png")

    def _logged_before(self) -> dict[str, float]:
        """The 'before' eval of the run being resumed, as logged at step 0."""
        if not self.info.main:
            return {}
        for rec in self.run_dir.metrics():
            if rec.get("step") == 0:
                return {k: v for k, v in rec.items() if k.startswith("eval/") and isinstance(v, int | float)}
        return {}

    # ------------------------------------------------------------------------------------------------- train
    def train_step(self) -> tuple[dict[str, float], MethodOutput | None, bool]:
        """One optimizer step (grad_accum micro-batches) with its numbers read. Returns (metrics, last output,
        skipped)."""
        return self.read_steps([self.step_async()])[0]

    def step_async(self) -> PendingStep:
        """One optimizer step (grad_accum micro-batches), its numbers left on the device.

        The skip decision (non-finite loss, reward or gradient norm, agreed over ranks) and every metric are one
        device tensor. With a fused AdamW (`defer_reads`) the optimizer and the EMA take the decision as a tensor
        and nothing here waits for the device. Otherwise the decision is read here: one host-device
        synchronization per step, after the last backward. Nothing waits between micro-batches either way."""
        s = self.s
        dev = self.diff.device
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        lr = lr_at(self.step, s)
        for grp in self.opt.param_groups:
            grp["lr"] = lr
        losses, outs = [], []
        ok = torch.ones((), dtype=torch.bool, device=dev)  # every loss and reward finite so far
        extra: dict[str, list[Any]] = {}
        timer = _PhaseTimer(dev)
        for micro in range(s.grad_accum):
            timer.mark()
            out = self.method.loss(self.ctx, self.make_batch(self.step, micro))
            timer.mark("sample_and_score")
            loss = out.loss
            ok = ok & torch.isfinite(loss.detach()).all()
            if out.value is not None:
                ok = ok & out.value.finite_flag()
            # backward even when this loss is not finite: deciding here would wait for the device; a non-finite
            # step is dropped below before the optimizer sees it (and every rank runs the same collectives)
            self.scaler.scale(loss / s.grad_accum).backward()
            timer.mark("backward")
            losses.append(loss.detach().float().reshape(()))
            outs.append(out)
            for k, v in out.metrics.items():
                extra.setdefault(k, []).append(v)
        if not self.diff.sharded:  # FSDP's reduce-scatter has averaged the (sharded) gradients already
            average_gradients(self.params, self.info)
        self.scaler.unscale_(self.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, s.grad_clip or float("inf"))
        if is_dtensor(grad_norm):
            grad_norm = grad_norm.full_tensor()  # type: ignore[attr-defined]
        flags = torch.stack([(~ok).float(), (~torch.isfinite(grad_norm)).float()])
        flags = all_reduce_sum(flags, self.info)  # skip together: a non-finite step on any rank skips all
        device_metrics = {"loss": torch.stack(losses).mean(), "grad_norm": grad_norm.detach().float()}
        scored = [o for o in outs if o.value is not None]
        if scored:
            for t in self.objective.terms:
                device_metrics[f"reward/{t.label}"] = torch.cat([o.value.raw[t.label] for o in scored]).float().mean()
                device_metrics[f"reward_norm/{t.label}"] = torch.cat(
                    [o.value.normalized[t.label] for o in scored]).float().mean()
            device_metrics["objective"] = torch.cat([o.value.per_sample.detach() for o in scored]).float().mean()
        host: dict[str, float] = {"lr": lr}
        for k, v in extra.items():  # a method's metrics: host numbers, or device tensors read with the rest
            if any(isinstance(x, torch.Tensor) for x in v):
                device_metrics[k] = torch.stack([torch.as_tensor(x, device=dev).float().reshape(()) for x in v]).mean()
            else:
                host[k] = float(np.mean(v))
        names = list(device_metrics)
        packed = torch.cat([flags.float(), torch.stack([device_metrics[k].to(dev) for k in names])])
        # the last micro-batch's output (images, rewards) only for callbacks: steps whose numbers wait to be read
        # (`logging.every` > 1) would otherwise hold their pixels on the device until then
        keep = outs[-1] if outs and self.callbacks.callbacks else None
        pending = PendingStep(packed, names, host, keep, timer, t0)
        update_ema = self.ema is not None and (self.step + 1) % s.ema_every == 0
        if self.defer_reads:
            bad_t = flags.sum() > 0  # no fp16 scaler here: a non-finite gradient norm skips too
            self.opt.found_inf = bad_t.float()  # type: ignore[attr-defined]  # fused AdamW: no update, step kept
            try:
                self.opt.step()
            finally:
                del self.opt.found_inf  # type: ignore[attr-defined]
            if update_ema:
                assert self.ema is not None and s.ema_decay is not None
                with torch.no_grad():
                    for e, p in zip(self.ema, self.params, strict=True):
                        e.copy_(torch.where(bad_t, e, e.mul(s.ema_decay).add(p.detach(), alpha=1 - s.ema_decay)))
            return pending
        values = packed.tolist()  # the step's one host-device synchronization
        pending.values = values
        bad_loss, bad_norm = values[0] > 0, values[1] > 0
        bad = bad_loss or (bad_norm and not self.scaler.is_enabled())  # fp16: the scaler skips overflow itself
        if bad:
            self.opt.zero_grad(set_to_none=True)
            self.skipped += 1
            if self.scaler.is_enabled():
                self.scaler.update()  # closes the step unscale_ opened (and backs the scale off, as for overflow)
        else:
            self.scaler.step(self.opt)
            self.scaler.update()
            if update_ema:
                assert self.ema is not None and s.ema_decay is not None
                with torch.no_grad():
                    for e, p in zip(self.ema, self.params, strict=True):
                        e.mul_(s.ema_decay).add_(p.detach(), alpha=1 - s.ema_decay)
        pending.bad, pending.skipped_total = bad, self.skipped
        pending.t_done = time.perf_counter()
        return pending

    def read_steps(self, pending: list[PendingStep]) -> list[tuple[dict[str, float], MethodOutput | None, bool]]:
        """The metrics of finished steps, in order, with one host-device transfer for all the steps whose numbers
        are still on the device. Skipped steps are counted here when their decision was taken on the device."""
        on_device = [p for p in pending if isinstance(p.values, torch.Tensor)]
        if on_device:
            flat = torch.cat([p.values for p in on_device]).tolist()  # type: ignore[misc]
            off = 0
            for p in on_device:
                n = 2 + len(p.names)
                p.values, off = flat[off:off + n], off + n
        t_read = time.perf_counter()
        window_s = (t_read - pending[0].t0) / len(pending) if pending else 0.0
        dev = self.diff.device
        results = []
        for p in pending:
            values = p.values
            assert isinstance(values, list)
            bad_loss, bad_norm = values[0] > 0, values[1] > 0
            if p.bad is None:  # decided on the device: the same rule as above, without an fp16 scaler
                p.bad = bad_loss or bad_norm
                self.skipped += int(p.bad)
                p.skipped_total = self.skipped
            metrics: dict[str, float] = dict(zip(p.names, values[2:], strict=True))
            if bad_loss:
                metrics["loss"] = float("nan")
                metrics["grad_norm"] = float("nan")
            metrics.update(lr=p.host["lr"], skipped=float(p.bad), skipped_total=float(p.skipped_total))
            metrics.update({k: v for k, v in p.host.items() if k != "lr"})
            # a step read at once: its own wall time; steps read together: their mean (the host ran ahead)
            metrics["time/step_s"] = p.t_done - p.t0 if p.t_done is not None else window_s
            metrics["time/sample_and_score_s"] = p.timer.total("sample_and_score")
            metrics["time/backward_s"] = p.timer.total("backward")
            metrics["memory/peak_mb"] = memory_mb(dev)
            results.append((metrics, p.out, p.bad))
        return results

    def run(self, resume: bool = False, overwrite: bool = False, start: RunStart | None = None) -> TrainResult:
        """Train to `steps`. `start`: the output directory as `open_run_dir` prepared it (checked, locked, the
        checkpoint to resume from); without it the directory is opened (and released) here."""
        own = start is None
        if start is None:
            err: RewardtuneError | None = None
            try:
                start = open_run_dir(self.out, resume=resume, overwrite=overwrite, spec=self.spec,
                                     main=self.info.main)
            except RewardtuneError as e:
                err = e
            if any_flag(err is not None, self.info, self.diff.device):  # every rank raises: none waits for the others
                raise err or RewardtuneError(f"another rank could not open {self.out}; see rank 0's error")
        assert start is not None
        try:
            return self._run(start)
        finally:
            if own:
                start.release()

    def _run(self, start: RunStart) -> TrainResult:
        s, info = self.s, self.info
        run = start.run
        if start.resume_from is not None:
            self.load_state_dict(start.resume_from.state)
            self.resumed_from = self._saved_step = self.step
            self._resume_best()
            if self.step > s.steps:
                raise CheckpointError(f"{run.path} holds a checkpoint of step {self.step}, past train.steps="
                                      f"{s.steps}: it belongs to a longer run. Resume it with its own spec.")
            if info.main and start.resume_from.skipped:
                set_aside(run, [ref for ref, _ in start.resume_from.skipped])
        elif info.main and start.clear:
            run.clear_outputs()  # overwrite: no output of the earlier run stays
        barrier(info)
        writer = None
        if info.main:
            write_run_info(run, self.spec, write_spec=self.resumed_from is None)
            wandb = None if s.wandb_project is None else {
                "project": s.wandb_project, "name": f"{getattr(self.spec, 'name', 'run')}-{run.path.name}",
                "config": self.spec.model_dump(mode="json") if self.spec is not None else {}}
            writer = MetricsWriter(run, s.tensorboard, resume_from_step=self.resumed_from, wandb=wandb)
        self.callbacks.train_start({"output_dir": str(self.out), "start_step": self.step, "steps": s.steps,
                                    "rank": info.rank, "world": info.world})
        before = self._logged_before() if self.resumed_from is not None else {}
        if self.resumed_from is None or (self.resumed_from == 0 and not before):
            before = self._abortable_eval("before", writer) or {}  # interrupted: the loop stops at its first check
            if before and writer is not None:
                writer.write(0, before)
        progress = _Progress(s.progress and info.main, s.steps, self.step, every_s=s.progress_every_s,
                             every_steps=s.progress_every_steps)
        progress.last_eval = {k.removeprefix("eval/"): v for k, v in before.items() if k != "eval/objective"}
        progress.last_eval_step = self.step
        stopped, reason = False, ""
        abort_steps = info.world == 1  # several ranks must finish a step together (its collectives)
        self._pending: list[tuple[int, PendingStep]] = []  # finished steps whose numbers are not read yet
        self._last_metrics: dict[str, float] = {}
        try:
            with progress:
                while self.step < s.steps:
                    if any_flag(control.stop_requested(), info, self.diff.device):
                        stopped, reason = True, control.stop_reason() or "stop requested on another rank"
                        control.clear_stop()
                        break
                    snapshot = self.step_snapshot() if abort_steps else None
                    try:
                        with control.abortable(abort_steps):
                            pending = self.step_async()
                    except RunInterrupted:
                        self._before_step = snapshot  # the unfinished step is dropped
                        stopped, reason = True, control.stop_reason() or "stop requested"
                        control.clear_stop()
                        break
                    self.step += 1
                    self._pending.append((self.step, pending))
                    eval_now = bool(s.images_every and self.step % s.images_every == 0 and self.step < s.steps)
                    ckpt_now = self.step % s.checkpoint_every == 0 and self.step < s.steps
                    if (not self.defer_reads or eval_now or ckpt_now or self.step % s.log_every == 0
                            or self.step == s.steps):
                        self._flush(writer, progress, eval_now)
                    if ckpt_now:
                        self.checkpoint()
                self._flush(writer, progress, False)  # a stop: the finished steps are logged, then checkpointed
            self.checkpoint()
            last_metrics = self._last_metrics
            after: dict[str, float] = {}
            weights = None
            if not stopped:
                evaluated = self._abortable_eval("after", writer)
                if any_flag(evaluated is None, info, self.diff.device):
                    stopped, reason = True, control.stop_reason() or "stop requested on another rank"
                else:
                    after = evaluated or {}
                    if after and writer is not None:
                        writer.write(self.step, after)
                    chosen = self._export_best(after)
                    if self._selected_step is not None and any_flag(chosen is None, info, self.diff.device):
                        stopped, reason = True, control.stop_reason() or "stop requested"  # during its eval
                    after = chosen or after
                if not stopped:
                    self._record_last_as_best(after)
                    weights = self.export()
                    if weights is not None and self.spec is not None:
                        from rewardtune.share import write_model_card

                        # README.md (hub metadata, metrics) and the before/after grid beside the weights
                        write_model_card(weights, self.spec, steps=self.step,
                                         before={k.removeprefix("eval/"): v for k, v in before.items()},
                                         after={k.removeprefix("eval/"): v for k, v in after.items()},
                                         images_dir=run.images_dir, selected_step=self._selected_step)
        finally:
            control.clear_stop()  # a request that came as the last step ended must not stop the next run
            if writer is not None:
                writer.close()
        result = TrainResult(self.out, self.step, weights, stopped, reason, self.skipped,
                             {k.removeprefix("eval/"): v for k, v in before.items()},
                             {k.removeprefix("eval/"): v for k, v in after.items()}, last_metrics, self.resumed_from,
                             self._selected_step if weights is not None else None)
        self.callbacks.train_end(result)
        return result

    def _flush(self, writer: MetricsWriter | None, progress: _Progress, eval_now: bool) -> None:
        """Read the finished steps' numbers (one transfer), then for each: warn of a skipped step, stop past
        train.max_nonfinite, log, tell the callbacks and the progress bar. `eval_now`: the last step is an eval
        step (its grid runs, and its eval numbers join that step's metrics)."""
        s, info = self.s, self.info
        todo, self._pending = self._pending, []
        if not todo:
            return
        read = self.read_steps([p for _, p in todo])
        evaluated: dict[str, float] | None = None
        for i, ((step, _), (metrics, out, bad)) in enumerate(zip(todo, read, strict=True)):
            self._last_metrics = metrics
            if bad and info.main:
                log.warning("step %d skipped: non-finite reward, loss or gradient (%d of at most %d)",
                            step, int(metrics["skipped_total"]), s.max_nonfinite)
            if bad and metrics["skipped_total"] > s.max_nonfinite:
                for later_step, later in zip(todo[i + 1:], read[i + 1:], strict=True):  # logged, so none is lost
                    if writer is not None:
                        writer.write(later_step[0], later[0])
                self.checkpoint()
                raise NonFiniteError(
                    f"{self.skipped} steps had a non-finite reward, loss or gradient (limit "
                    f"train.max_nonfinite={s.max_nonfinite}); the weights were not updated on those steps. "
                    "Lower train.lr, enable train.grad_clip, or check the rewards.")
            if eval_now and i == len(todo) - 1:
                # interrupted: this step's metrics and checkpoint are still written, then the loop stops
                evaluated = self._abortable_eval(f"step_{step:06d}", writer)
                metrics.update(evaluated or {})
            if writer is not None and (step % s.log_every == 0 or bad or step == s.steps):
                writer.write(step, metrics)
            if eval_now and i == len(todo) - 1:  # on every rank, interrupted or not: it all-reduces
                self._keep_if_best(evaluated or {})  # after the step's metrics are written, as a checkpoint always is
            if info.main:
                ev = StepEvent(step, dict(metrics))
                if self.callbacks.callbacks and out is not None and out.pixels is not None and out.value is not None:
                    ev.images = out.pixels.cpu()
                    ev.prompts = list(out.prompts)
                    ev.rewards = {k: [float(x) for x in v.cpu()] for k, v in out.value.raw.items()}
                self.callbacks.step(ev)
            progress.update(step, metrics, self.objective.labels)

    # ---------------------------------------------------------------------------------------------- best eval
    def _select_value(self, ev: dict[str, float]) -> float | None:
        """An eval's `select_by` value, signed so that higher is better (None on ranks other than 0, which do not
        score, and for a value that is not finite)."""
        label = self.s.select_by
        v = ev.get(f"eval/{label}")
        if v is None or not math.isfinite(v):
            return None
        return v * next((t.sign for t in self.objective.terms if t.label == label), 1.0)

    def _keep_if_best(self, ev: dict[str, float]) -> None:
        """After a mid-run eval: when `select_by` ranks it above every earlier one, checkpoint this step and record
        it in best.json (every rank takes part: the checkpoint may be gathered from shards)."""
        if not self.s.select_by:
            return
        v = self._select_value(ev)
        better = v is not None and (self._best is None or v > self._best["signed"])
        if not any_flag(better, self.info, self.diff.device):
            return
        self.checkpoint()  # first: best.json never names a step that is not on disk
        self._set_best(ev, v)
        barrier(self.info)

    def _resume_best(self) -> None:
        """The best eval of the run being resumed, when its checkpoint is still on disk; a record that does not
        fit (another metric, a step past the checkpoint resumed from, a checkpoint gone) is removed, so it never
        names a step of this run's future."""
        best = self.run_dir.read_best() if self.s.select_by else None
        if best is None:
            return
        best["signed"] = self._select_value({f"eval/{self.s.select_by}": best["value"]})
        gone = not self.run_dir.checkpoint_dir(best["step"]).is_dir()
        if best["metric"] == self.s.select_by and best["step"] <= self.step and best["signed"] is not None and not gone:
            self._best = best
            return
        if gone and best["step"] <= self.step:
            log.warning("logging.select_by: the checkpoint of the best eval so far (step %d) is gone; the next "
                        "evals start the choice afresh", best["step"])
        barrier(self.info)  # every rank has read it before rank 0 removes it
        if self.info.main:
            self.run_dir.best_file.unlink(missing_ok=True)

    def _record_last_as_best(self, after: dict[str, float]) -> None:
        """When `select_by` keeps the last step's weights, best.json says so too: it names the exported step."""
        v = self._select_value(after) if self.s.select_by and self._selected_step is None else None
        if v is not None and self.info.main:
            self._set_best(after, v)

    def _set_best(self, ev: dict[str, float], signed: float | None) -> None:
        """The current step's eval becomes the best (`signed`: its `_select_value`; None on ranks other than 0,
        which keep only the step); rank 0 records it in best.json."""
        self._best = {"metric": self.s.select_by, "step": self.step, "value": ev.get(f"eval/{self.s.select_by}"),
                      "signed": signed, "eval": {k: x for k, x in ev.items() if math.isfinite(x)}}
        if self.info.main:
            self.run_dir.write_best(self._best)

    def _export_best(self, after: dict[str, float]) -> dict[str, float] | None:
        """At the end: unless the last step's eval ranks above the best so far on `select_by` (a tie keeps the
        earlier, as between mid-run evals), load the best step's weights and evaluate them again (the grids and
        numbers of what is exported). Returns that eval, or None to export the last step (also when the stop was
        requested during that eval: the loaded weights are then not exported)."""
        best = self._best
        if not self.s.select_by or best is None or best["step"] >= self.step:
            return None
        v = self._select_value(after)
        use = self.info.main and (v is None or v <= best["signed"])  # as mid-run: only a better eval replaces it
        if not any_flag(use, self.info, self.diff.device):
            return None
        from rewardtune.engine.outputs import CorruptCheckpoint, load_checkpoint

        err, state = None, None
        if self.info.main or self.diff.sharded:  # the ranks that evaluate or export
            try:
                state = load_checkpoint(self.run_dir.checkpoint_dir(best["step"]))
            except CorruptCheckpoint as e:
                err = str(e)
        if any_flag(err is not None, self.info, self.diff.device):
            log.warning("logging.select_by: the checkpoint of the best eval (step %d) could not be read (%s); "
                        "exporting the last step's weights", best["step"], err or "on another rank")
            return None
        if state is not None:
            self._load_weights(state)
        self._selected_step = best["step"]
        if self.info.main:
            log.info("logging.select_by: exporting the weights of step %d (%s %.4g; the last step's: %s)",
                     best["step"], self.s.select_by, best["value"],
                     "not finite" if v is None else f"{after[f'eval/{self.s.select_by}']:.4g}")
        return self._abortable_eval("after", None, best["step"])

    def _abortable_eval(self, tag: str, writer: MetricsWriter | None, step: int | None = None
                        ) -> dict[str, float] | None:
        """`evaluate`, stopping within one UNet call when a stop is requested; None when it was (the stop request
        stays set, for the loop to act on)."""
        try:
            with control.abortable():
                return self.evaluate(tag, writer, step)
        except RunInterrupted:
            return None

    def export(self) -> Path | None:
        """Final weights: LoRA safetensors loadable by the pipeline's `load_lora_weights(dir)`, or the full denoiser
        (unet/ or transformer/)."""
        path = None
        if self.info.main or self.diff.sharded:  # sharded: every rank gathers, rank 0 writes
            main = self.info.main
            self._swap_ema()
            try:
                if self.diff.lora is not None:
                    path = Path(lora_save(self.diff, str(self.run_dir.lora_dir), write=main))
                else:  # RunDir.unet_dir or transformer_dir
                    path = Path(full_save(self.diff, str(self.run_dir.path), write=main))
            finally:
                self._swap_ema()
            path = path if main else None
        barrier(self.info)
        return path


def eval_summary(m: dict[str, float]) -> str:
    """`clip 0.91, shapes-eval 0.84 (colour_ok 0.97, shape_ok 0.86)`: each term's mean, then its explained
    fields (ones that repeat the term's own value, such as both_ok for the shapes judge, left out)."""
    parts = []
    for k, v in m.items():
        name = k.removeprefix("eval/")
        if "/" in name or name == "objective":
            continue
        subs = [f"{s.split('/', 1)[1]} {x:.3g}" for s, x in m.items() if s.startswith(f"eval/{name}/") and x != v]
        parts.append(f"{name} {v:.3g}" + (f" ({', '.join(subs)})" if subs else ""))
    return ", ".join(parts)


class _PhaseTimer:
    """Wall time per phase of a step without waiting on the device: CUDA events on a GPU (read after the step's
    one synchronization), perf_counter on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str | None, Any]] = []

    def mark(self, phase: str | None = None) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append((phase, ev))
        else:
            self.marks.append((phase, time.perf_counter()))

    def total(self, phase: str) -> float:
        out = 0.0
        for (_, a), (name, b) in zip(self.marks, self.marks[1:], strict=False):
            if name == phase:
                out += a.elapsed_time(b) / 1000 if self.cuda else b - a
        return out


class _Progress:
    """Live progress: reward, the latest eval, loss, step time and memory (no-op when disabled).

    On a terminal, a rich progress bar. Anywhere else (a pipe, a file, a SLURM log) a bar is drawn only when the run
    ends, so progress becomes plain lines on stdout, each flushed at once: the first step, then one line every
    `every_s` seconds or `every_steps` steps (whichever comes first), every step that brings an eval, and the last
    step."""

    def __init__(self, enabled: bool, total: int, start: int, *, every_s: float = 10.0, every_steps: int = 0,
                 stream: Any = None):
        self.enabled, self.total, self.start = enabled, total, start
        self.every_s, self.every_steps = every_s, every_steps
        self.stream = stream
        self.p = None
        self.lines = False
        self.last_eval: dict[str, float] = {}  # shown until the next eval: a monitor next to the optimized reward
        self.last_eval_step = start  # the step it was taken at, shown with it (`eval@0` is the model before training)

    def __enter__(self):
        if not self.enabled:
            return self
        import sys

        from rich.console import Console

        stream = self.stream or sys.stdout
        if not Console(file=stream).is_terminal:
            self.lines = True
            self.stream = stream
            self.t0 = self.t_line = time.monotonic()
            self.line_step = self.start
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          TextColumn("{task.fields[info]}"), transient=False)
        self.p.__enter__()
        self.task = self.p.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def update(self, step: int, m: dict[str, float], labels: list[str]) -> None:
        if self.p is None and not self.lines:
            return
        evals = {k.removeprefix("eval/"): v for k, v in m.items() if k.startswith("eval/") and k != "eval/objective"}
        if evals:
            self.last_eval, self.last_eval_step = evals, step
        parts = []
        if "objective" in m:
            parts.append(f"reward {m['objective']:.4g}")
        if self.last_eval:
            shown = " ".join(f"{k} {v:.3g}" for k, v in self.last_eval.items() if k.count("/") == 0)
            shown = shown and f"eval@{self.last_eval_step} {shown}"
            parts.append(shown and (shown if self.lines else f"[cyan]{shown}[/]"))
        parts.append(f"loss {m['loss']:.4g}")
        parts.append(f"{m['time/step_s']:.2f}s/step")
        parts.append(f"{m['memory/peak_mb']:.0f}MB")
        if m.get("skipped_total"):
            n = int(m["skipped_total"])
            parts.append(f"skipped {n}" if self.lines else f"[yellow]skipped {n}[/]")
        if self.p is not None:
            self.p.update(self.task, completed=step, info="  ".join(parts))
            return
        now = time.monotonic()
        due = (step == self.start + 1 or step >= self.total or bool(evals) or now - self.t_line >= self.every_s
               or (self.every_steps and step - self.line_step >= self.every_steps))
        if not due:
            return
        done = step - self.start
        elapsed = now - self.t0
        eta = elapsed / done * (self.total - step) if done else 0.0
        head = f"train {step}/{self.total} ({100 * step // max(1, self.total)}%)"
        tail = f"elapsed {_clock(elapsed)}, eta {_clock(eta)}"
        print("  ".join([head, *parts, tail]), file=self.stream, flush=True)
        self.t_line, self.line_step = now, step

    def __exit__(self, *exc):
        if self.p is not None:
            self.p.__exit__(*exc)
        return False


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
