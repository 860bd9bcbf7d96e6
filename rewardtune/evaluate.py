"""Evaluate a trained result: sample a prompt set with and without the trained weights on the same noise, score
both with any rewards, and report per-prompt and mean scores with the paired difference and its spread.

    from rewardtune.evaluate import evaluate
    report = evaluate("runs/demo")                      # a run directory: its base model, sampling, eval prompts,
    print(report.summary["shapes-eval"].diff_mean)     # rewards and seed, unless told otherwise
    report.write("runs/demo/eval")                      # scores.json, scores.md, before/after grids, compare.png

`plan(path, ...)` settles the settings without loading a model (what `rewardtune eval` checks the weights against);
`evaluate(plan)` then runs it.

What is evaluated (`find_target`):
- a run directory (spec.yaml plus lora/ or unet/): everything comes from its spec;
- a LoRA folder (`pytorch_lora_weights.safetensors`, as `lora_save` and diffusers write it): the base model and
  sampling come from its model card (README.md front matter, as rewardtune's exports write it) or the arguments;
- a full UNet export (a diffusers `UNet2DConditionModel` folder: config.json + weights).

Sampling goes through rewardtune's own engine (`rewardtune.engine.sampler`), with the noise of the training run's
own eval (`generator(seed, "eval-noise")`), so `evaluate` of a run directory with its own settings reproduces the
run's `after` eval, and before/after differ only by the weights. That holds for a run trained in one process in
float32 with eta 0 (the tested case): `evaluate` samples in float32 in one process, so a bf16/fp16 run, or an eta > 0
run split over ranks (whose eval noise is drawn per rank), gets numbers close to its own but not equal.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardtune.errors import UsageError
from rewardtune.rewards._weights import read_card

LORA_FILE = "pytorch_lora_weights.safetensors"
DENOISER_CLASSES = ("UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel")
BOOTSTRAP_RESAMPLES = 10_000


# --------------------------------------------------------------------------------------------------- targets
@dataclass
class Target:
    """What to evaluate: `kind` run, lora or denoiser; `weights` the folder holding the trained weights; `spec` the
    run's spec (runs only); `card` the model card's front matter (exports rewardtune wrote)."""

    kind: str
    path: Path
    weights: Path
    spec: Any = None
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str | None:
        if self.spec is not None:
            return self.spec.model.pretrained
        b = self.card.get("base_model")
        return b[0] if isinstance(b, list) and b else b


def _is_denoiser_dir(p: Path) -> bool:
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and cfg.get("_class_name") in DENOISER_CLASSES


def find_target(path: str | Path) -> Target:
    """A run directory, a LoRA folder or a full denoiser export -> Target (UsageError naming what was looked for)."""
    from rewardtune.rundir import RunDir

    p = Path(path)
    if not p.is_dir():
        raise UsageError(f"{p} is not a directory: give a run directory (spec.yaml + lora/ or unet/), a LoRA folder "
                         f"({LORA_FILE}) or a UNet export (config.json + weights).")
    rd = RunDir(p)
    if rd.spec_file.is_file():
        weights = next((d for d in (rd.lora_dir, rd.unet_dir, p / "transformer") if d.is_dir()), None)
        if weights is None:
            state = (rd.read_result() or {}).get("outcome")
            raise UsageError(f"{p} holds a run without exported weights (no lora/ or unet/)"
                             + (f"; it ended '{state}'" if state else "") + ". A run exports them when it finishes: "
                             "resume it (`rewardtune run SPEC --resume -o DIR`), or evaluate another run.")
        return Target("run", p, weights, spec=_run_spec(rd), card=read_card(weights))
    if (p / LORA_FILE).is_file():
        return Target("lora", p, p, card=read_card(p))
    if _is_denoiser_dir(p):
        return Target("denoiser", p, p, card=read_card(p))
    for sub in ("lora", "unet", "transformer"):
        if (p / sub).is_dir():
            return find_target(p / sub)
    have = ", ".join(sorted(x.name for x in p.iterdir())[:12]) or "nothing"
    raise UsageError(f"{p} is neither a run directory (spec.yaml), a LoRA folder ({LORA_FILE}) nor a UNet export "
                     f"(config.json of a UNet2DConditionModel); it holds: {have}.")


def _run_spec(rd) -> Any:
    """The spec a run saved, validated without running its `imports:` (rewards they register must then be named
    with `rewards=`)."""
    from rewardtune.errors import RewardtuneError
    from rewardtune.spec.load import load_spec

    try:
        data = rd.read_spec()
    except RewardtuneError as e:
        raise UsageError(f"cannot read the run's spec {rd.spec_file}: {e}") from None
    try:
        return load_spec(data, imports=False)
    except RewardtuneError as e:
        raise UsageError(f"the run's spec {rd.spec_file} is not valid here: {e}") from None


# --------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class EvalSettings:
    base: str
    family: str | None = None  # sd1, sd2, sdxl, sd3, flux; None: the pipeline's own class decides
    revision: str | None = None
    variant: str | None = None
    dtype: str = "float32"
    steps: int = 50
    guidance: float = 7.5
    eta: float = 0.0
    resolution: int = 512
    seed: int = 0
    batch_size: int = 4


def settings_for(target: Target, *, base: str | None = None, steps: int | None = None,
                 guidance: float | None = None, eta: float | None = None, resolution: int | None = None,
                 seed: int | None = None, batch_size: int | None = None) -> EvalSettings:
    """The run's (or the model card's) settings, each replaced by the argument given."""
    s, card = target.spec, target.card
    sampling = card.get("sampling") if isinstance(card.get("sampling"), dict) else {}
    b = base or target.base
    if not b:
        raise UsageError(f"{target.path} does not say which base model it was trained on (no run spec, no base_model "
                         "in a model card): give it (--base ID_OR_DIR).")
    if s is not None:
        d = dict(family=s.model.family, revision=s.model.revision, variant=s.model.variant, dtype=s.model.dtype,
                 steps=s.sampling.steps,
                 guidance=s.sampling.guidance_scale, eta=s.sampling.eta, resolution=s.sampling.resolution,
                 seed=s.train.seed, batch_size=max(1, s.train.batch_size))
    else:
        d = dict(family=card.get("model_family"), revision=card.get("base_model_revision"),
                 steps=sampling.get("steps", 50),
                 guidance=sampling.get("guidance_scale", 7.5), eta=sampling.get("eta", 0.0),
                 resolution=sampling.get("resolution", 512), seed=card.get("seed", 0))
    if base is not None and base != target.base:
        d.update(family=None, revision=None, variant=None)
    given = dict(steps=steps, guidance=guidance, eta=eta, resolution=resolution, seed=seed, batch_size=batch_size)
    d.update({k: v for k, v in given.items() if v is not None})
    if int(d["resolution"]) % 8:
        raise UsageError(f"resolution must be a multiple of 8 (got {d['resolution']})")
    return EvalSettings(base=b, **d)


def prompts_for(target: Target, source: str | None, images_per_prompt: int | None,
                limit: int | None = None) -> tuple[list[str], int, str]:
    """(prompts, images per prompt, where they came from). `source`: a built-in set's name, a .txt/.jsonl file,
    or None for the run's own eval prompts (as many as its eval used)."""
    from rewardtune.prompts import BUILTIN_SETS, DATA, read_prompt_file, resolve_prompts

    n = images_per_prompt
    s = target.spec
    if source is None:
        if s is None:
            raise UsageError("which prompts? give a built-in set (--prompts shapes-eval; one of "
                             f"{', '.join(BUILTIN_SETS)}) or a file (--prompts prompts.txt)")
        try:
            prompts = resolve_prompts(s.prompts.eval)  # a relative prompt file: from where the command runs
        except (OSError, ValueError) as e:
            raise UsageError(f"the run's eval prompts cannot be read here ({e}); give --prompts") from None
        prompts = prompts[:s.logging.eval_prompts]
        where = f"the run's eval prompts, {_describe(s.prompts.eval)}"
    elif source in BUILTIN_SETS:
        prompts, where = read_prompt_file(DATA / BUILTIN_SETS[source]), f"built-in set '{source}'"
    else:
        p = Path(source)
        if not p.is_file():
            from rewardtune.registry import did_you_mean

            guess = did_you_mean(source, list(BUILTIN_SETS))
            raise UsageError(f"--prompts {source}: no such file and no built-in set of that name"
                             + (f". Did you mean '{guess}'?" if guess else "")
                             + f" Built-in sets: {', '.join(BUILTIN_SETS)}.")
        try:
            prompts = read_prompt_file(p)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UsageError(f"--prompts {source}: cannot read it ({e})") from None
        where = f"file {p}"
    if n is None and s is not None:
        n = s.logging.eval_images_per_prompt  # as many images per prompt as the run's own eval
    if limit:
        prompts = prompts[:limit]
    if not prompts:
        raise UsageError(f"no prompts in {where}")
    return prompts, max(1, n or 1), where


def _describe(source: Any) -> str:
    if source.builtin:
        return f"built-in set '{source.builtin}'"
    if source.file:
        return f"file {source.file}"
    return f"{len(source.inline)} inline prompts"


# ---------------------------------------------------------------------------------------------------- rewards
def rewards_for(target: Target, names: Sequence[str] | None, *, device: str,
                weights: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """({label: loaded reward}, {label: term info}, the run's Objective or None). Without `names`, the run's
    objective terms (monitors too), built as the trainer builds them; `names` (NAME or NAME:PRESET) replace them,
    and then there is no objective to report."""
    from rewardtune.registry import get_card

    if names:
        from rewardtune.scoring import load_rewards

        rs = load_rewards(list(names), device=device, weights=weights)
        info = {label: {"reward": c.name, "preset": c.preset, "direction": get_card(c.name).direction}
                for label, c in rs.choices.items()}
        return dict(rs), info, None
    if target.spec is None:
        raise UsageError("which rewards? give them (-r NAME, e.g. -r shapes-eval -r clip:shapes); only a run "
                         "directory brings its own")
    objective = run_objective(target.spec, device)
    info = {t.label: {"reward": t.reward, "preset": t.preset, "role": t.role, "weight": t.weight,
                      "direction": get_card(t.reward).direction} for t in target.spec.objective}
    return {t.label: t.reward for t in objective.terms}, info, objective


def run_objective(spec: Any, device: str):
    """The run's objective, its terms (monitors too) built as the trainer builds them: in float32, except a term
    whose spec sets its own `dtype` (as the run used it)."""
    import torch

    from rewardtune.engine.build import build_objective
    from rewardtune.engine.distributed import DistInfo

    return build_objective(spec, torch.device(device), DistInfo(), dtype="float32")


def needed_weights(target: Target, settings: EvalSettings, names: Sequence[str] | None = None,
                   weights: dict[str, Any] | None = None) -> list[Any]:
    """Every checkpoint `evaluate` would load (the base pipeline, each reward's weights, processors, tokenizers and
    auxiliary models), as `rewardtune.rewards._weights.WeightRef`s, so that all missing ones are known before any
    model loads."""
    from rewardtune.registry import get_card
    from rewardtune.rewards._weights import merge_refs, pipeline_weights, reward_weights, spec_weights
    from rewardtune.scoring import parse_reward_arg

    refs = [pipeline_weights(settings.base, settings.revision, settings.variant)]
    if names:
        for a in names:
            c = parse_reward_arg(a)
            card = get_card(c.name)
            if card.factory is None and (c.preset is None or c.preset in card.presets):
                given = (weights or {}).get(c.label)
                over = dict(given) if isinstance(given, dict) else ({"weights": given} if given else None)
                refs += reward_weights(card, c.preset, over, label=c.label)
    elif target.spec is not None:
        refs += spec_weights(target.spec)[1:]
    return merge_refs(refs)


# ---------------------------------------------------------------------------------------------------- sampling
def load_base(settings: EvalSettings, device: str):
    from rewardtune.engine.pipeline import load_diffusion

    return load_diffusion(settings.base, family=settings.family, revision=settings.revision,
                          variant=settings.variant, dtype=settings.dtype, device=device)


def apply_weights(diff: Any, target: Target) -> None:
    """Put the trained weights into the base model: the LoRA as an adapter (scaled as exported), or the full
    denoiser's weights."""
    import torch

    denoiser = diff.unet
    if (target.weights / LORA_FILE).is_file():
        from safetensors import safe_open

        with safe_open(str(target.weights / LORA_FILE), "pt") as f:
            first = next(iter(f.keys()), "unet.")
        prefix = first.split(".", 1)[0] if first.split(".", 1)[0] in ("unet", "transformer") else None
        denoiser.load_lora_adapter(str(target.weights), prefix=prefix, adapter_name="rewardtune-eval",
                                   weight_name=LORA_FILE, use_safetensors=True)
        return
    from diffusers import AutoModel

    trained = AutoModel.from_pretrained(str(target.weights))
    missing, unexpected = denoiser.load_state_dict(trained.state_dict(), strict=False)
    if missing or unexpected:
        raise UsageError(f"{target.weights} does not fit the base model's denoiser ({len(missing)} missing and "
                         f"{len(unexpected)} unexpected tensors, e.g. {(missing or unexpected)[0]}): is --base the "
                         "model it was trained from?")
    del trained
    with torch.no_grad():
        denoiser.to(diff.device)


def sample_images(diff: Any, prompts: list[str], settings: EvalSettings,
                  progress: Callable[[int, int], None] | None = None):
    """Images of `prompts` on the fixed eval noise of `settings.seed`, in batches of `settings.batch_size`: the
    sampling of a run's own eval (`rewardtune.engine.sampler.sample_eval`), kept on the CPU."""
    from rewardtune.engine.sampler import sample_eval
    from rewardtune.engine.types import SamplingSettings

    sp = SamplingSettings(steps=settings.steps, guidance=settings.guidance, eta=settings.eta,
                          resolution=settings.resolution)
    return sample_eval(diff, prompts, sp, settings.seed, settings.batch_size, out_device="cpu", progress=progress)


# ------------------------------------------------------------------------------------------------- statistics
@dataclass
class Summary:
    """One reward's mean before and after, and the paired difference (after - before, per image): its mean,
    standard deviation, standard error, a bootstrap 95% interval of the mean, and how many images rose or fell."""

    before: float
    after: float
    diff_mean: float
    diff_std: float
    diff_se: float
    ci95: tuple[float, float]
    n: int
    up: int
    down: int
    same: int
    direction: str = "higher"

    @property
    def better(self) -> bool | None:
        """True when the whole 95% interval is on the better side of 0, False when on the worse side, None when it
        spans 0."""
        lo, hi = self.ci95
        if self.direction == "lower":
            lo, hi = -hi, -lo
        return True if lo > 0 else False if hi < 0 else None


def paired_summary(before: Sequence[float], after: Sequence[float], direction: str = "higher",
                   seed: int = 0) -> Summary:
    import numpy as np

    b, a = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    d = a - b
    n = len(d)
    std = float(d.std(ddof=1)) if n > 1 else 0.0
    rng = np.random.default_rng(seed)
    if n > 1:
        means = d[rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))].mean(axis=1)
        ci = (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)))
    else:
        ci = (float(d.mean()), float(d.mean())) if n else (math.nan, math.nan)
    eps = 1e-12
    return Summary(float(b.mean()), float(a.mean()), float(d.mean()), std, std / math.sqrt(n) if n else math.nan,
                   ci, n, int((d > eps).sum()), int((d < -eps).sum()), int((abs(d) <= eps).sum()), direction)


# ---------------------------------------------------------------------------------------------------- report
@dataclass
class Report:
    target: Target
    settings: EvalSettings
    prompts: list[str]  # one per image (the prompt set repeated images_per_prompt times)
    prompt_source: str
    scores: dict[str, dict[str, list[float]]]  # label -> {"before": [...], "after": [...]} per image
    info: dict[str, dict[str, Any]]  # label -> reward, preset, role, weight, direction
    summary: dict[str, Summary]
    verdicts: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # side -> {label: verdict per image}
    ok: dict[str, list[bool] | None] = field(default_factory=dict)  # side -> judge's both_ok per image
    pixels: dict[str, Any] = field(default_factory=dict, repr=False)  # side -> [n,3,H,W] on the CPU

    def per_prompt(self) -> list[dict[str, Any]]:
        """Mean over each prompt's images: [{prompt, images, LABEL: {before, after, diff}}], in prompt order."""
        order = list(dict.fromkeys(self.prompts))
        rows = []
        for p in order:
            idx = [i for i, q in enumerate(self.prompts) if q == p]
            row: dict[str, Any] = {"prompt": p, "images": len(idx)}
            for label, s in self.scores.items():
                b = sum(s["before"][i] for i in idx) / len(idx)
                a = sum(s["after"][i] for i in idx) / len(idx)
                row[label] = {"before": b, "after": a, "diff": a - b}
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        st = self.settings
        return {
            "target": str(self.target.path), "kind": self.target.kind, "weights": str(self.target.weights),
            "base_model": st.base, "sampling": {"steps": st.steps, "guidance_scale": st.guidance, "eta": st.eta,
                                                 "resolution": st.resolution, "batch_size": st.batch_size},
            "seed": st.seed, "noise": "rewardtune.engine.types.generator(seed, 'eval-noise'), as the run's own eval",
            "prompts": self.prompt_source, "images": len(self.prompts),
            "rewards": self.info,
            "summary": {k: {"before": v.before, "after": v.after, "diff_mean": v.diff_mean, "diff_std": v.diff_std,
                            "diff_se": v.diff_se, "diff_ci95": list(v.ci95), "n": v.n, "up": v.up, "down": v.down,
                            "same": v.same, "direction": v.direction} for k, v in self.summary.items()},
            "per_prompt": self.per_prompt(),
            "per_image": [{"prompt": p, "index": i,
                           **{k: {"before": s["before"][i], "after": s["after"][i]} for k, s in self.scores.items()},
                           **({"verdict": {side: {k: v[i] for k, v in vs.items()} for side, vs in self.verdicts.items()}}
                              if self.verdicts else {})}
                          for i, p in enumerate(self.prompts)],
        }

    def to_markdown(self) -> str:
        st = self.settings
        lines = [f"# Evaluation of {self.target.path}", "",
                 f"Base model `{st.base}`, trained weights `{self.target.weights}`; {len(self.prompts)} images "
                 f"({self.prompt_source}), {st.steps} sampling steps, guidance {st.guidance:g}, {st.resolution} px, seed "
                 f"{st.seed}: the same noise before and after.", "",
                 "| reward | before | after | change | 95% CI of the change | images up / down / same |",
                 "|---|---:|---:|---:|---|---|"]
        for k, v in self.summary.items():
            arrow = {True: " (better)", False: " (worse)"}.get(v.better, "")
            lines.append(f"| {k} | {v.before:.4g} | {v.after:.4g} | {v.diff_mean:+.4g}{arrow} | "
                         f"[{v.ci95[0]:+.4g}, {v.ci95[1]:+.4g}] | {v.up} / {v.down} / {v.same} |")
        lines += ["", "Change: mean over images of (after - before) on the same prompt and noise; the interval is a "
                      f"bootstrap over images ({BOOTSTRAP_RESAMPLES} resamples).", "", "## Per prompt", ""]
        labels = list(self.scores)
        lines.append("| prompt | images | " + " | ".join(f"{k} before -> after" for k in labels) + " |")
        lines.append("|---|---:|" + "---|" * len(labels))
        for row in self.per_prompt():
            cells = [f"{row[k]['before']:.4g} -> {row[k]['after']:.4g} ({row[k]['diff']:+.3g})" for k in labels]
            lines.append(f"| {row['prompt'].replace('|', '/')} | {row['images']} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """scores.json, scores.md, before.png / after.png (every image with its scores and verdicts) and
        compare.png (the first 16 pairs). Returns their paths."""
        from rewardtune.engine.outputs import captioned_grid, comparison_grid, judge_labels

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "scores.json", "markdown": out / "scores.md", "before": out / "before.png",
                 "after": out / "after.png", "compare": out / "compare.png"}
        paths["json"].write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        paths["markdown"].write_text(self.to_markdown(), encoding="utf-8")
        sides = []
        for side in ("before", "after"):
            scores = {k: s[side] for k, s in self.scores.items()}
            verdicts = self.verdicts.get(side, {})
            ok = self.ok.get(side)
            means = ", ".join(f"{k} {sum(v) / len(v):.3g}" for k, v in scores.items())
            captioned_grid(self.pixels[side], self.prompts, scores, verdicts=verdicts, ok=ok,
                           title=f"{side}: {means}").save(paths[side])
            sides.append((self.pixels[side], self.prompts, judge_labels(verdicts), ok))
        comparison_grid(sides[0], sides[1], n=16, title=f"before -> after: {self.target.path.name} (same prompts "
                        "and noise)").save(paths["compare"])
        return paths


@dataclass(frozen=True)
class EvalPlan:
    """What an evaluation will do, settled before any model loads: the target, its settings, and the prompt set
    (`prompts`, each sampled `per_prompt` times, from `source`). `plan` makes one; `evaluate` runs it."""

    target: Target
    settings: EvalSettings
    prompts: list[str]
    per_prompt: int
    source: str

    def needed_weights(self, rewards: Sequence[str] | None = None,
                       weights: dict[str, Any] | None = None) -> list[Any]:
        return needed_weights(self.target, self.settings, rewards, weights)


def plan(path: str | Path, *, prompts: str | None = None, images_per_prompt: int | None = None,
         limit: int | None = None, base: str | None = None, steps: int | None = None, guidance: float | None = None,
         eta: float | None = None, resolution: int | None = None, seed: int | None = None,
         batch_size: int | None = None) -> EvalPlan:
    """Read the target at `path` (its spec or model card) once and settle every setting (UsageError naming what
    is wrong): see the module docstring for what `path` may be and where the defaults come from."""
    target = find_target(path)
    st = settings_for(target, base=base, steps=steps, guidance=guidance, eta=eta, resolution=resolution, seed=seed,
                      batch_size=batch_size)
    plist, n, where = prompts_for(target, prompts, images_per_prompt, limit)
    return EvalPlan(target, st, plist, n, where)


def evaluate(path: str | Path | EvalPlan, *, rewards: Sequence[str] | None = None, prompts: str | None = None,
             images_per_prompt: int | None = None, limit: int | None = None, base: str | None = None,
             steps: int | None = None, guidance: float | None = None, eta: float | None = None,
             resolution: int | None = None, seed: int | None = None, batch_size: int | None = None,
             device: str = "auto", weights: dict[str, Any] | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> Report:
    """Sample the prompts with and without the trained weights at `path` on the same noise, score both, and
    summarise the paired differences. `path` is a target, planned with the settings given here (see `plan`), or a
    plan `plan` made (then the settings are its own). `rewards` (NAME or NAME:PRESET) replace the run's objective
    terms; `weights` maps a reward label to weights as `rewardtune.scoring.load_rewards` takes them."""
    import numpy as np
    import torch

    from rewardtune.engine.objective import explain_rewards
    from rewardtune.scoring import resolve_device

    settings = dict(prompts=prompts, images_per_prompt=images_per_prompt, limit=limit, base=base, steps=steps,
                    guidance=guidance, eta=eta, resolution=resolution, seed=seed, batch_size=batch_size)
    if isinstance(path, EvalPlan):
        given = [k for k, v in settings.items() if v is not None]
        if given:
            raise TypeError(f"evaluate() of a plan takes no settings (got {', '.join(given)}): give them to plan()")
        the_plan = path
    else:
        the_plan = plan(path, **settings)
    target, st, n = the_plan.target, the_plan.settings, the_plan.per_prompt
    where = the_plan.source
    all_prompts = the_plan.prompts * n  # as the run's eval: the set repeated, each copy on its own noise
    dev = resolve_device(device)
    threads = torch.get_num_threads()
    if st.base.startswith("zoo:") and dev == "cpu":
        torch.set_num_threads(1)  # the tiny models run fastest on one thread (as `rewardtune.run` does)
    try:
        loaded, info, objective = rewards_for(target, rewards, device=dev, weights=weights)
        diff = load_base(st, dev)
        pixels = {}
        for side in ("before", "after"):
            if side == "after":
                apply_weights(diff, target)
            pixels[side] = sample_images(diff, all_prompts, st,
                                         None if progress is None else (lambda d, t, s=side: progress(s, d, t)))
        del diff
        scores: dict[str, dict[str, list[float]]] = {}
        verdicts: dict[str, dict[str, list[str]]] = {}
        ok: dict[str, list[bool] | None] = {}
        with torch.no_grad():
            for side in ("before", "after"):
                for label, r in loaded.items():
                    scores.setdefault(label, {})[side] = [float(x) for x in r(pixels[side], all_prompts).cpu()]
                extra, verdicts[side], ok[side] = explain_rewards(loaded, pixels[side], all_prompts)
                for k, v in extra.items():
                    scores.setdefault(k, {})[side] = v
    finally:
        torch.set_num_threads(threads)
    # explained fields that repeat their reward's own numbers (the judge's both_ok) add nothing
    for k in [k for k in scores if "/" in k and scores[k] == scores.get(k.split("/", 1)[0])]:
        del scores[k]
    if objective is not None and any(t.role == "optimize" for t in objective.terms):  # as the run's eval weighs it
        scores["objective"] = {side: [float(x) for x in objective.weighted(
            {k: np.asarray(scores[k][side]) for k in objective.labels})] for side in ("before", "after")}
    direction = {k: info.get(k.split("/", 1)[0], {}).get("direction", "higher") for k in scores}
    summary = {k: paired_summary(s["before"], s["after"], direction[k], seed=st.seed) for k, s in scores.items()}
    if not any(verdicts.values()):
        verdicts = {}
    return Report(target, st, all_prompts, where + (f", {n} images per prompt" if n > 1 else ""), scores, info,
                  summary, verdicts, ok, pixels)
