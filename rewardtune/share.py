"""Sharing a result: the model card an export carries, and pushing the export to the hub.

The card is what diffusers' training scripts write (`diffusers.utils.hub_utils.load_or_create_model_card` with
`from_training=True`, then `populate_model_card` for tags): a README.md whose YAML front matter the hub reads
(`base_model`, `library_name: diffusers`, `tags`, `widget` pointing at an image in the folder), built from
huggingface_hub's `ModelCard` and diffusers' training template. rewardtune adds what a reader of a reward
fine-tune wants to know, as further front-matter keys: the method, the rewards (with role and weight), the steps,
the sampling settings and seed of the eval, and the eval metrics before and after. `rewardtune eval` reads the
card back (`rewardtune.rewards._weights.read_card`) to evaluate a bare LoRA folder with the settings it was trained
with.

The card is built locally (never `ModelCard.load`, which would ask the hub for an existing card).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CARD_IMAGE = "compare.png"  # the before/after grid, copied next to the weights so the card can show it


def card_data(spec: Any, *, steps: int, before: dict[str, float], after: dict[str, float],
              lora: bool, image: str | None, selected_step: int | None = None) -> dict[str, Any]:
    """The card's front matter: hub keys first, then rewardtune's own."""
    m = spec.model
    family = m.family
    tags = ["text-to-image", "diffusers", "diffusers-training", "rewardtune", "reward-fine-tuning",
            f"rewardtune-{spec.method.name}", {"sd1": "stable-diffusion", "sd2": "stable-diffusion",
                                                "sdxl": "stable-diffusion-xl", "sd3": "sd3", "flux": "flux"}[family]]
    if lora:
        tags.insert(3, "lora")
    rewards = [{"reward": t.reward, **({"preset": t.preset} if t.preset else {}), "role": t.role,
                "weight": t.weight} for t in spec.objective]
    data: dict[str, Any] = {
        "base_model": m.pretrained,
        "library_name": "diffusers",
        "tags": tags,
        "inference": True,
        "widget": [{"text": "before (top) and after (bottom) training, same prompts and noise",
                    "output": {"url": image}}] if image else None,
        "base_model_revision": m.revision,
        "model_family": family,
        "trainable": "lora" if lora else "full",
        "method": spec.method.name,
        "rewards": rewards,
        "steps": steps,
        "selected_step": selected_step,
        "selected_by": spec.logging.select_by if selected_step is not None else None,
        "seed": spec.train.seed,
        "sampling": {"scheduler": "DDIM" if family in ("sd1", "sd2", "sdxl") else "flow-matching Euler",
                     "steps": spec.sampling.steps, "guidance_scale": spec.sampling.guidance_scale,
                     "eta": spec.sampling.eta, "resolution": spec.sampling.resolution},
        "metrics": {"eval_before": dict(before), "eval_after": dict(after),
                    "eval_images": spec.logging.eval_prompts * spec.logging.eval_images_per_prompt},
    }
    return {k: v for k, v in data.items() if v is not None}


def _description(spec: Any, data: dict[str, Any], folder: Path, lora: bool) -> str:
    """The card's body (diffusers' template puts it under '# Model description')."""
    terms = ", ".join(f"`{r['reward']}{':' + r['preset'] if 'preset' in r else ''}`"
                      + (f" ({r['role']})" if r["role"] != "optimize" else f" (weight {r['weight']:g})")
                      for r in data["rewards"])
    what = "LoRA" if lora else "full fine-tune of the denoiser"
    lines = [f"## {spec.name}: {what} of `{data['base_model']}` trained with rewardtune", "",
             f"Method `{data['method']}` for {data['steps']} steps against {terms}."
             + (f" These are the weights of step {data['selected_step']}: of the evals every "
                f"{spec.logging.images_every} steps and the last, its `{data['selected_by']}` was the best. It was "
                "chosen on the eval images below, so its after numbers flatter it a little."
                if data.get("selected_step") is not None else ""), ""]
    before, after = data["metrics"]["eval_before"], data["metrics"]["eval_after"]
    if after:
        lines += [f"Held-out eval ({data['metrics']['eval_images']} images on fixed noise, the same before and after):",
                  "", "| metric | before | after | change |", "|---|---:|---:|---:|"]
        for k, v in after.items():
            b = before.get(k)
            lines.append(f"| {k} | {'' if b is None else f'{b:.4g}'} | {v:.4g} | "
                         f"{'' if b is None else f'{v - b:+.4g}'} |")
        lines.append("")
    if "widget" in data:
        lines += [f"![before and after]({CARD_IMAGE})", ""]
    s = data["sampling"]
    load = (f'pipe.load_lora_weights("{folder.name}")' if lora
            else f'pipe.{"unet" if data["model_family"] in ("sd1", "sd2", "sdxl") else "transformer"} = '
                 f'AutoModel.from_pretrained("{folder.name}")')
    lines += ["## Use", "", "```python", "import torch",
              "from diffusers import AutoModel, DiffusionPipeline" if not lora else "from diffusers import DiffusionPipeline",
              "", f'pipe = DiffusionPipeline.from_pretrained("{data["base_model"]}")', load,
              f'image = pipe("a prompt", num_inference_steps={s["steps"]}, guidance_scale={s["guidance_scale"]:g}, '
              f'height={s["resolution"]}, width={s["resolution"]}).images[0]', "```", "",
              "Evaluate it again (before/after grid and tables with 95% intervals):", "",
              f"    rewardtune eval {folder.name}", ""]
    return "\n".join(lines)


def write_model_card(folder: str | Path, spec: Any, *, steps: int, before: dict[str, float],
                     after: dict[str, float], images_dir: str | Path | None = None,
                     selected_step: int | None = None) -> Path:
    """Write `folder/README.md` (and copy the run's before/after grid beside it). Returns the card's path.
    `selected_step`: the weights are this step's, chosen by `logging.select_by` (`after` is its eval)."""
    from diffusers.utils.hub_utils import MODEL_CARD_TEMPLATE_PATH, populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    lora = (folder / "pytorch_lora_weights.safetensors").is_file()
    image = None
    grid = Path(images_dir) / CARD_IMAGE if images_dir is not None else None
    if grid is not None and grid.is_file():
        shutil.copyfile(grid, folder / CARD_IMAGE)
        image = CARD_IMAGE
    data = card_data(spec, steps=steps, before=before, after=after, lora=lora, image=image,
                     selected_step=selected_step)
    tags = data.pop("tags")
    card = ModelCard.from_template(card_data=ModelCardData(**data), template_path=MODEL_CARD_TEMPLATE_PATH,
                                   model_description=_description(spec, {**data, "tags": tags}, folder, lora))
    card = populate_model_card(card, tags=tags)
    path = folder / "README.md"
    card.save(str(path))
    return path


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = True) -> str:  # pragma: no cover - network
    """Upload an export folder (weights, README.md, grid) to a hub model repository, creating it if needed.
    Returns the repository's URL. Untested here: no hub is reachable from this project's machines."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    # a bare name is created under the token's namespace: upload to the id the hub returned, not the bare name
    api.upload_folder(repo_id=url.repo_id, folder_path=str(folder), repo_type="model",
                      commit_message="Upload rewardtune export")
    return str(url)
