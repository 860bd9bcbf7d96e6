"""Small helpers shared by the reward families (kept tiny on purpose: each family file stays readable alone)."""
from __future__ import annotations

from pathlib import Path

import torch

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def pooled(out) -> torch.Tensor:
    """Projected features from `get_image_features`/`get_text_features` (a tensor in transformers 4, a
    `BaseModelOutputWithPooling` whose `.pooler_output` holds them in transformers 5)."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def load_tokenizer(directory: Path):
    """The tokenizer saved in a weights directory, loaded offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def token_max_length(tokenizer, limit: int) -> int:
    """Truncation length: the tokenizer's own limit, capped by the model's position table."""
    n = getattr(tokenizer, "model_max_length", None) or limit
    return int(min(n, limit))


def load_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Load a .pt/.pth/.bin checkpoint safely (weights_only=True) or a .safetensors file; unwrap 'state_dict'
    and a DistributedDataParallel 'module.' prefix."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def find_file(directory: Path, filename: str, what: str) -> Path:
    from rewardtune.errors import MissingWeightsError

    p = Path(directory) / filename
    if not p.is_file():
        have = sorted(q.name for q in Path(directory).iterdir()) if Path(directory).is_dir() else []
        raise MissingWeightsError(f"{what}: '{filename}' not found in {directory} (it holds: {', '.join(have) or 'nothing'}). "
                                  "Set the preset's `filename` to the checkpoint's name.")
    return p


class quiet_transformers:
    """Silence transformers' load reports and progress bars while loading (restored afterwards)."""

    def __enter__(self):
        from transformers.utils import logging as tlog

        self._verbosity = tlog.get_verbosity()
        self._bars = tlog.is_progress_bar_enabled()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging as tlog

        tlog.set_verbosity(self._verbosity)
        if self._bars:
            tlog.enable_progress_bar()
        return False
