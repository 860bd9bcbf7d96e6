"""The experiment spec: strict, frozen pydantic models. Every field is documented in docs/spec.md (a test keeps
the two in sync). Structural checks live here; checks that need the reward registry live in `validate.py`.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1


class Strict(BaseModel):
    # allow_inf_nan=False: NaN and infinity are refused in every float field (`lr: .inf` would train NaN weights)
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------------------- model
class LoRA(Strict):
    """Train LoRA adapters on the denoiser (UNet or transformer; PEFT). The base weights stay frozen."""

    type: Literal["lora"] = "lora"
    rank: int = Field(4, ge=1, description="LoRA rank r.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; null means alpha = rank (scale 1).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: tuple[str, ...] | None = Field(
        None, min_length=1, description="Denoiser module names that get adapters; null: the family's default "
                                        "(sd1/sd2/sdxl: to_q, to_k, to_v, to_out.0 of every attention; sd3/flux: "
                                        "those and the text stream's add_q/k/v_proj, to_add_out).")
    init: Literal["gaussian", "default"] = Field(
        "gaussian", description="PEFT init: 'gaussian' (A random, B zero) or PEFT's default (kaiming A, B zero).")


class FullUNet(Strict):
    """Train every weight of the denoiser (UNet or transformer)."""

    type: Literal["full"] = "full"


class EMA(Strict):
    decay: float = Field(0.999, gt=0, lt=1, description="EMA decay of the trainable weights.")
    update_every: int = Field(1, ge=1, description="Update the EMA every N optimizer steps.")


class ModelSpec(Strict):
    pretrained: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5",
                            description="Hub id, local directory, or `zoo:sd1` (tiny twin) of a diffusers pipeline.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    variant: str | None = Field(None, description="Weights variant to load, e.g. 'fp16'.")
    family: Literal["sd1", "sd2", "sdxl", "sd3", "flux"] = Field(
        "sd1", description="Model family: sd1/sd2 (StableDiffusionPipeline), sdxl (StableDiffusionXLPipeline), sd3 "
                           "(StableDiffusion3Pipeline: SD3, SD3.5), flux (FluxPipeline: FLUX.1). Checked against the "
                           "pipeline's own class when it loads; --tiny picks the family's tiny twin.")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="Dtype of the frozen weights (VAE, text encoders, base denoiser).")
    trainable: Annotated[LoRA | FullUNet, Field(discriminator="type")] = Field(
        default_factory=LoRA, description="What is trained: `{type: lora, ...}` or `{type: full}`.")
    ema: EMA | None = Field(None, description="Keep an EMA of the trainable weights (used for eval and export).")
    cache_prompts: bool = Field(
        False, description="Encode every prompt the run uses (train, eval, the empty prompt) once, before training, "
                           "into a cache under REWARDTUNE_CACHE; the text encoders then leave the device, and are not "
                           "loaded at all when the cache already exists (T5-XXL alone is 9 GB in bf16).")
    vae_slicing: bool = Field(False, description="Decode one image at a time (less activation memory in the decode "
                                                 "under gradient; same result).")
    vae_tiling: bool = Field(False, description="Decode in overlapping tiles (far less memory at high resolution; "
                                                "tile seams are blended, so results differ slightly).")


# -------------------------------------------------------------------------------------------------------- prompts
class PromptSource(Strict):
    """Exactly one of `inline`, `file` or `builtin`."""

    inline: tuple[str, ...] | None = Field(None, description="Prompts written in the spec.")
    file: str | None = Field(None, description="A .txt file (one prompt per line) or .jsonl (key `prompt`), "
                                               "relative to the spec file.")
    builtin: str | None = Field(None, description="A named prompt set shipped with rewardtune "
                                                  "(see `rewardtune.prompts.BUILTIN_SETS`).")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.")

    @model_validator(mode="after")
    def _exactly_one(self) -> PromptSource:
        given = [k for k in ("inline", "file", "builtin") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `inline`, `file` or `builtin`" +
                             (f" (got {', '.join(given)})" if given else ""))
        if self.inline is not None and (not self.inline or any(not p.strip() for p in self.inline)):
            raise ValueError("`inline` must be a non-empty list of non-empty prompts")
        return self


def _coerce_source(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return {"inline": list(v)}
    return v


class PromptsSpec(Strict):
    train: PromptSource = Field(default_factory=lambda: PromptSource(builtin="everyday"),
                                description="Training prompts: a list, or {inline|file|builtin: ...}.")
    eval: PromptSource = Field(default_factory=lambda: PromptSource(builtin="everyday-eval"),
                               description="Held-out prompts for image grids and eval rewards.")

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _list_is_inline(cls, v: Any) -> Any:
        return _coerce_source(v)


# ------------------------------------------------------------------------------------------------------ objective
class Term(Strict):
    """One reward in the objective."""

    reward: str = Field(description="Registry name (see `rewardtune rewards`) or `module:Class`.")
    name: str | None = Field(None, description="Name of the term in logs; defaults to the reward name. Unique.")
    preset: str | None = Field(None, description="Preset of the reward card; null means the card's default.")
    weights: str | None = Field(None, description="Override the preset's weights: a hub id or a local directory "
                                                  "(e.g. a downloaded copy). Ignored by --tiny.")
    weight: float = Field(1.0, description="Weight of the term in the objective.")
    role: Literal["optimize", "monitor"] = Field(
        "optimize", description="`optimize` enters the loss; `monitor` is only logged.")
    normalize: Literal["none", "running_zscore"] = Field(
        "none", description="`running_zscore`: (r - running mean) / running std per term, saved in checkpoints.")
    combine: Literal["weighted_sum", "assemble_ranked"] = Field(
        "weighted_sum", description="`weighted_sum` adds weight * reward; `assemble_ranked` enters through "
                                    "within-prompt ranks (FineRewards), so it needs no gradient.")
    kwargs: dict[str, Any] = Field(default_factory=dict,
                                   description="Reward arguments, checked against the card's `params`.")
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="Compute dtype of the reward model; null follows train.mixed_precision.")
    max_batch_size: int | None = Field(None, ge=1, description="Split reward batches larger than this.")

    @property
    def label(self) -> str:
        return self.name or self.reward


# --------------------------------------------------------------------------------------------------------- method
class _GradMethod(Strict):
    kl_coeff: float = Field(0.0, ge=0, description="DRaFT+ regularizer: kl_coeff * mean ||eps_theta - eps_base||^2 "
                                                   "over the differentiable steps (0 = off).")

    @property
    def needs_base_output(self) -> bool:
        """Whether training calls the frozen base model (under full fine-tuning a copy of it is kept in memory)."""
        return self.kl_coeff > 0


class AlignProp(_GradMethod):
    """Backprop through the last K DDIM steps (K fixed, all, or drawn at random)."""

    name: Literal["alignprop"] = "alignprop"
    k: int | Literal["all"] = Field("all", description="Fixed truncation: backprop through the last K steps, or all.")
    k_range: tuple[int, int] | None = Field(None, description="Random truncation: draw K uniformly in [lo, hi]; "
                                                              "overrides `k`.")
    draw: Literal["per_step", "per_batch"] = Field(
        "per_step", description="With k_range: a fresh K at every denoising step, step i keeping its eps gradient "
                                "iff i >= T - K_i (TRL, AlignProp 2023), or one K per sampled batch (AlignProp "
                                "2024).")

    @model_validator(mode="after")
    def _range(self) -> AlignProp:
        if isinstance(self.k, int) and self.k < 1:
            raise ValueError("k must be >= 1 or 'all'")
        if self.k_range is not None and not (1 <= self.k_range[0] <= self.k_range[1]):
            raise ValueError("k_range must be [lo, hi] with 1 <= lo <= hi")
        return self


class DraftK(_GradMethod):
    """DRaFT-K: the first T-K steps under no_grad, the last K with grad."""

    name: Literal["draft_k"] = "draft_k"
    k: int = Field(1, ge=1, description="Number of final steps with gradient.")


class DraftLV(_GradMethod):
    """DRaFT-LV: K=1 with n re-noised differentiable last steps per sample."""

    name: Literal["draft_lv"] = "draft_lv"
    n: int = Field(2, ge=1, description="Re-noise draws of the final step per sample.")


class PretrainLoss(Strict):
    data: str = Field(description="A JSONL of {image, caption} pairs (paths relative to the file).")
    weight: float = Field(1.0, gt=0, description="Weight of the denoising loss.")
    every: int = Field(2, ge=2, description="Every N-th step is a pretraining step (alternating when 2).")
    batch_size: int = Field(2, ge=1, description="Images per pretraining step (global: split across ranks).")


class ReFL(_GradMethod):
    """ReFL: stop at a random step, one differentiable x0 prediction, loss on its reward."""

    name: Literal["refl"] = "refl"
    stop_range: tuple[int, int] = Field((30, 39), description="Stop step index range [lo, hi] of the schedule "
                                                              "(0-based; default 30-39 of 40).")
    loss: Literal["relu", "neg"] = Field("relu", description="`relu`: scale * relu(margin - r) as in ReFL; "
                                                             "`neg`: -r.")
    margin: float = Field(2.0, description="c in relu(c - r).")
    scale: float = Field(1e-3, gt=0, description="ReFL's grad scale lambda on the relu loss.")
    pretrain: PretrainLoss | None = Field(None, description="Optional denoising loss mixed in alternately.")

    @model_validator(mode="after")
    def _range(self) -> ReFL:
        if not (0 <= self.stop_range[0] <= self.stop_range[1]):
            raise ValueError("stop_range must be [lo, hi] with 0 <= lo <= hi")
        return self


class Ranked(Strict):
    """Assemble reward-ranked learning (FineRewards): sample, rank within prompt, fine-tune on the top-m."""

    name: Literal["ranked"] = "ranked"
    samples_per_prompt: int = Field(4, ge=2, description="N images sampled per prompt.")
    top_m: int = Field(1, ge=1, description="Images kept per prompt after ranking.")
    prompts_per_round: int = Field(8, ge=1, description="Prompts sampled per round.")
    steps_per_round: int = Field(50, ge=1, description="Denoising-loss optimizer steps per round.")
    baseline: float = Field(1.0, ge=0.0, le=1.0, description=(
        "Share of the prompt's average denoising loss subtracted from the kept images' loss. 1: every prompt's "
        "weights sum to zero, so only what sets the kept images apart from their siblings is learned; 0: plain "
        "fine-tuning on the kept images (FineRewards), which also learns the model's own errors that all its "
        "samples share and compounds them round after round. For loss: weighted only."))
    kl_coeff: float = Field(0.0, ge=0, description=(
        "kl_coeff * mean ||eps_theta - eps_base||^2 on each step's noisy images (0 = off), added to either loss: "
        "holds the model near its base, which the zero-sum loss of baseline 1 does not do by itself over long runs."))
    loss: Literal["weighted", "dpo"] = Field("weighted", description=(
        "`weighted`: the denoising loss weighted per image (see baseline). `dpo`: Diffusion-DPO (arXiv 2311.12908) "
        "on every (kept, not kept) pair of a prompt, softplus(beta/2 * (d_kept - d_other)) with d an image's "
        "denoising loss less the frozen base's on the same input: bounded, and anchored to the base."))
    beta: float = Field(5000.0, gt=0, description=(
        "Diffusion-DPO's beta for loss: dpo (its SD 1.5 setting; the denoising loss is a mean over latent "
        "elements). Larger: the pairs' margin saturates sooner, so the model stays nearer its base."))

    @property
    def needs_base_output(self) -> bool:
        """Whether training calls the frozen base model: the KL term, and DPO's reference."""
        return self.kl_coeff > 0 or self.loss == "dpo"

    @model_validator(mode="after")
    def _m(self) -> Ranked:
        problems = []
        if self.top_m > self.samples_per_prompt:
            problems.append(f"top_m ({self.top_m}) cannot exceed samples_per_prompt ({self.samples_per_prompt})")
        elif self.loss == "dpo" and self.top_m == self.samples_per_prompt:
            problems.append(f"loss: dpo compares kept with not-kept images, and top_m ({self.top_m}) keeps all "
                            f"{self.samples_per_prompt}: use top_m < samples_per_prompt")
        # a value other than the default where it does nothing (not "was it set": a validated spec's dump, as
        # spec.yaml and `validate --print` write it, holds every field and must validate again)
        defaults = type(self).model_fields
        if self.loss == "dpo" and self.baseline != defaults["baseline"].default:
            problems.append(f"baseline ({self.baseline}) applies only to loss: weighted (loss: dpo compares each kept "
                            "image with each not-kept one of its prompt): remove it")
        if self.loss == "weighted" and self.beta != defaults["beta"].default:
            problems.append(f"beta ({self.beta}) is Diffusion-DPO's and applies only with loss: dpo: set loss: dpo "
                            "or remove beta")
        if problems:
            raise ValueError("; ".join(problems))
        return self


Method = Annotated[AlignProp | DraftK | DraftLV | ReFL | Ranked, Field(discriminator="name")]
GRADIENT_METHODS = ("alignprop", "draft_k", "draft_lv", "refl")


# ------------------------------------------------------------------------------------------------------- sampling
#: families sampled with flow matching (FlowMatchEulerDiscreteScheduler); the others with DDIM
FLOW_FAMILIES = ("sd3", "flux")


class SamplingSpec(Strict):
    scheduler: Literal["auto", "ddim", "flow_euler"] = Field(
        "auto", description="Sampler: `auto` is the family's (DDIM for sd1/sd2/sdxl, eta controls stochasticity; "
                            "the flow-matching Euler step with the scheduler's shift for sd3/flux). Naming one "
                            "checks that it is the family's.")
    steps: int = Field(50, ge=1, le=1000, description="Denoising steps T.")
    guidance_scale: float = Field(7.5, ge=0, description="Classifier-free guidance; <= 1 disables CFG. For flux, the "
                                                         "distilled guidance the transformer takes (FLUX.1-dev: 3.5; "
                                                         "no second batch).")
    eta: float = Field(0.0, ge=0, le=1, description="DDIM eta (0 = deterministic, 1 = DDPM-like); flow-matching "
                                                    "families (sd3, flux) sample deterministically: 0.")
    resolution: int = Field(512, ge=8, description="Image height and width in pixels (multiple of 8).")
    images_per_prompt: int = Field(1, ge=1, description="Images sampled per prompt in a training batch (they form "
                                                        "the groups that assemble_ranked terms rank within).")

    @field_validator("resolution")
    @classmethod
    def _mult8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"resolution must be a multiple of 8 (got {v}); try {v - v % 8 or 8}")
        return v


# ---------------------------------------------------------------------------------------------------------- train
class TrainSpec(Strict):
    steps: int = Field(500, ge=1, description="Optimizer steps.")
    batch_size: int = Field(4, ge=1, description="Global samples per micro-batch (split across ranks).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="After warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    optimizer: Literal["adamw", "adamw8bit"] = Field("adamw", description="adamw8bit needs bitsandbytes "
                                                                          "(extra `bnb`).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the global grad norm; null disables.")
    seed: int = Field(0, description="Seed of Python, numpy, torch and the per-step noise.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="Compute dtype of the UNet and VAE: modules whose frozen weights are already in it (model."
                          "dtype) run plainly in it, others under autocast. LoRA master weights stay float32.")
    gradient_checkpointing: bool = Field(
        True, description="Checkpoint the differentiable denoiser steps (the last block by block) and the VAE "
                          "decode (block by block).")
    fsdp: bool = Field(
        False, description="Shard the denoiser over the ranks with FSDP2 (fully_shard per block): its weights, "
                           "gradients and optimizer state are split N ways, for a model that does not fit one "
                           "device. Needs several ranks (launcher.type: slurm, or torchrun).")
    deterministic: bool = Field(False, description="Deterministic GPU kernels (torch.use_deterministic_algorithms): "
                                                   "a resumed GPU run then equals an uninterrupted one bitwise, at "
                                                   "some speed cost. CPU runs are deterministic regardless.")
    fused_adam: bool = Field(
        False, description="AdamW as one fused kernel (optimizer: adamw). It also takes the step's skip decision "
                           "on the device, so the host reads the device only every logging.every steps (not "
                           "under fp16 loss scaling). Same update up to float rounding.")
    channels_last: bool = Field(
        False, description="UNet and VAE in channels_last memory format (faster convolutions on GPUs); same "
                           "results up to float rounding.")
    compile_prefix: Literal["no", "default", "reduce-overhead"] = Field(
        "no", description="torch.compile the denoiser for the sampling steps that run without gradient (the "
                          "no-grad prefix, eval grids): 'default', or 'reduce-overhead' (CUDA graphs on a GPU). "
                          "Compiling takes a while once per shape; the LoRA is then not folded into the weights. "
                          "Same results up to float rounding.")
    max_nonfinite: int = Field(10, ge=0, description="Stop after this many skipped non-finite steps (with fused_adam"
                                                     ", counted at the next logging step).")
    checkpoint_every: int = Field(100, ge=1, description="Write a checkpoint every N optimizer steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk.")

    @model_validator(mode="after")
    def _fused_needs_adamw(self) -> TrainSpec:
        if self.fused_adam and self.optimizer != "adamw":
            raise ValueError(f"fused_adam needs optimizer: adamw (got {self.optimizer}, whose 8-bit state has no "
                             "fused kernel); set fused_adam: false, or optimizer: adamw")
        return self


class LoggingSpec(Strict):
    every: int = Field(1, ge=1, description="Log metrics every N steps.")
    images_every: int = Field(50, ge=0, description="Image grid of eval prompts on fixed noise every N steps "
                                                    "(0 = only before and after).")
    tensorboard: bool = Field(False, description="Write tensorboard events (needs tensorboard); the same as "
                                                 "listing tensorboard in `trackers`.")
    trackers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="Experiment trackers that get the metrics of every logged step and the "
                                          "eval grids: tensorboard (events under RUN_DIR/tensorboard; needs "
                                          "tensorboard) and wandb (a run in project `wandb_project`, files under "
                                          "RUN_DIR/wandb; needs wandb, `pip install 'rewardtune[wandb]'`; "
                                          "WANDB_MODE=offline keeps it on disk).")
    wandb_project: str = Field("rewardtune", min_length=1, description="The wandb project runs are logged to.")
    push_to_hub: bool = Field(False, description="When the run finishes, upload its export (weights, model card, "
                                                 "before/after grid) to a hub model repository (needs a hub token: "
                                                 "`hf auth login` or HF_TOKEN).")
    hub_repo_id: str | None = Field(None, description="The repository push_to_hub uploads to, `user/name` "
                                                      "(default: the spec's name under your account).")
    hub_private: bool = Field(True, description="Create the push_to_hub repository as private.")
    eval_prompts: int = Field(4, ge=1, description="Evaluation prompts in each image grid (the first N).")
    select_by: str | None = Field(
        None, description="Export the weights of the eval that scores best on this term (its label, e.g. a "
                          "`monitor` judge such as shapes-eval) or on `objective`, among the evals every "
                          "`images_every` steps and the last step's (the first of equal ones), instead of the last "
                          "step's: the weights from before a reward starts being hacked. Each new best is "
                          "checkpointed and kept. The after numbers are then the chosen eval's, picked on the eval prompts, so they flatter it a "
                          "little; null exports the last step.")
    eval_images_per_prompt: int = Field(
        1, ge=1, description="Images per eval prompt, each on its own fixed noise: the eval set is the prompts "
                             "repeated this many times (more images, steadier numbers).")
    progress: bool = Field(True, description="Show progress (rank 0 only): a live bar on a terminal; elsewhere (a "
                                             "pipe, a file, a SLURM log) plain lines on stdout, each flushed.")
    progress_every_s: float = Field(10.0, ge=0, description="Not on a terminal: one progress line at most every this "
                                                            "many seconds (0: every step); the first and last steps "
                                                            "and each eval always get one.")
    progress_every_steps: int | None = Field(None, ge=1, description="Not on a terminal: also a progress line every "
                                                                     "this many steps.")


# ------------------------------------------------------------------------------------------------------- launcher
class LocalLauncher(Strict):
    type: Literal["local"] = "local"
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1'...")


class SlurmLauncher(Strict):
    type: Literal["slurm"] = "slurm"
    partition: str | None = Field(None, description="SLURM partition.")
    account: str | None = Field(None, description="SLURM account.")
    qos: str | None = Field(None, description="SLURM QOS.")
    time_min: int = Field(60, ge=1, description="Time limit in minutes.")
    nodes: int = Field(1, ge=1, description="Nodes.")
    gpus_per_node: int = Field(1, ge=0, description="GPUs per node; one process (task) per GPU, or 1 task on CPU.")
    tasks_per_node: int | None = Field(None, ge=1, description="Processes per node; default gpus_per_node (or 1).")
    cpus_per_task: int = Field(8, ge=1, description="CPUs per task.")
    mem_gb: int | None = Field(None, ge=1, description="Memory per node in GB.")
    constraint: str | None = Field(None, description="SLURM --constraint.")
    exclusive: bool = Field(False, description="SLURM --exclusive.")
    array: int | None = Field(None, ge=1, description="Submit an array of N runs (seeds seed..seed+N-1).")
    additional: dict[str, Any] = Field(default_factory=dict, description="Extra sbatch parameters.")
    max_requeues: int = Field(3, ge=0, description="Requeues allowed after preemption or timeout.")
    job_name: str | None = Field(None, description="Job name; defaults to the spec name.")

    @field_validator("partition", "account", "qos", "constraint", "job_name", "additional")
    @classmethod
    def _fit_for_an_sbatch_line(cls, v: Any) -> Any:
        """These strings become `#SBATCH --key=value` lines: a newline (any control character) would end the line
        and run the rest as shell commands in the job script, and a key must be an sbatch option name."""
        import re
        import unicodedata

        items = list(v.items()) if isinstance(v, dict) else [(None, v)]
        for key, value in items:
            if key is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", str(key)):
                raise ValueError(f"{key!r} is not an sbatch option name: use letters, digits, '-' and '_' "
                                 "(e.g. mail-type)")
            for text in (str(key or ""), "" if value is None else str(value)):
                bad = next((c for c in text if unicodedata.category(c) == "Cc"), None)
                if bad is not None:
                    raise ValueError(f"{text!r} contains the control character {bad!r}: in the sbatch script it "
                                     "would end the '#SBATCH' line and run the rest as shell commands. Remove it.")
        return v


# ----------------------------------------------------------------------------------------------------------- spec
class Spec(Strict):
    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Spec format version.")
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name.")
    imports: tuple[str, ...] = Field((), description="Python files or modules imported first; they may register "
                                                     "rewards.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="The diffusion model and what is trained.")
    prompts: PromptsSpec = Field(default_factory=PromptsSpec, description="Training and evaluation prompts.")
    objective: tuple[Term, ...] = Field(min_length=1, description="The rewards, combined into one objective.")
    method: Method = Field(default_factory=DraftK, description="The optimization method (a `name:` picks it).")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="How images are sampled.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Optimization.")
    logging: LoggingSpec = Field(default_factory=LoggingSpec, description="Metrics, grids, tensorboard.")
    output_dir: str = Field("runs/{name}", description="Where outputs go; `{name}` expands to the run name.")
    launcher: Annotated[LocalLauncher | SlurmLauncher, Field(discriminator="type")] = Field(
        default_factory=LocalLauncher, description="`{type: local}` or `{type: slurm, ...}`.")

    @property
    def resolved_output_dir(self) -> str:
        return self.output_dir.replace("{name}", self.name)

    def term_labels(self) -> list[str]:
        return [t.label for t in self.objective]
