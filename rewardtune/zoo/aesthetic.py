"""Tiny twin of the LAION aesthetic predictor: a tiny CLIP and an MLP checkpoint in the original format."""
from __future__ import annotations

from pathlib import Path

#: the file name of the published checkpoint (the real preset points at a mirror that renames it)
MLP_FILENAME = "sac+logos+ava1-l14-linearMSE.pth"


def build(path: Path, seed: int) -> None:
    """Tiny CLIP (zoo:clip layout) + `sac+logos+ava1-l14-linearMSE.pth` for its 32-d embeddings.

    The MLP is drawn at std 1.5/sqrt(fan_in) so its output varies across images (default init is near-constant).
    """
    import torch

    from rewardtune.rewards.aesthetic import AestheticMLP
    from rewardtune.zoo.clip import make_clip, save_clip_dir

    clip = make_clip()
    save_clip_dir(clip, path)
    mlp = AestheticMLP(clip.config.projection_dim)
    for m in mlp.layers:
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=1.5 / m.in_features ** 0.5)
            torch.nn.init.normal_(m.bias, std=0.1)
    torch.save(mlp.state_dict(), Path(path) / MLP_FILENAME)
