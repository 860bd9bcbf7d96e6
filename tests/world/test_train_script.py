"""`python -m rewardtune.world.train all`, the script that made the shipped shapes-world models, runs end to end:
two steps of each part (VAE, CLIP, shapes-sd1, and the SDXL, SD3 and FLUX siblings on the new VAE), each folder
loads the way the shipped ones do, and each card records how it was made. Nothing else runs the script; without
this, a library upgrade that broke it would show only when someone retrains the world."""
from __future__ import annotations

import subprocess
import sys

import yaml

from rewardtune.world.train import SAMPLING


def test_the_training_script_runs_every_part_and_writes_loadable_models_with_cards(tmp_path):
    from rewardtune.engine.pipeline import load_diffusion

    steps = [arg for part in ("vae", "clip", "sd", "sdxl", "sd3", "flux") for arg in (f"--{part}-steps", "2")]
    p = subprocess.run([sys.executable, "-m", "rewardtune.world.train", "all", "--out", str(tmp_path), *steps],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for name, family in (("shapes-sd1", "sd"), ("shapes-sdxl", "sdxl"), ("shapes-sd3", "sd3"),
                         ("shapes-flux", "flux")):
        diff = load_diffusion(str(tmp_path / name))
        assert diff.family.name == family, (name, diff.family.name)
        meta = yaml.safe_load((tmp_path / name / "README.md").read_text().split("---\n")[1])
        assert meta["model"] == name and meta["steps"] == 2 and meta["seed"] == 0, meta
        assert set(meta["prompt_following"]) == {"colour", "shape", "both"}
        assert meta["sampling"]["steps"] == SAMPLING["steps"]
    # every sibling decodes through shapes-sd1's VAE; the flow siblings' config adds the latents' measured shift
    # and scale
    vae = (tmp_path / "shapes-sd1" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    for name in ("shapes-sdxl", "shapes-sd3", "shapes-flux"):
        assert (tmp_path / name / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == vae, name
    for name in ("shapes-sd3", "shapes-flux"):
        cfg = load_diffusion(str(tmp_path / name)).vae.config
        assert cfg.shift_factor is not None and cfg.scaling_factor > 0
    clip = yaml.safe_load((tmp_path / "shapes-clip" / "README.md").read_text().split("---\n")[1])
    assert clip["steps"] == 2 and 0 <= clip["heldout_retrieval"] <= 1
