"""Prompt-embedding cache (`model.cache_prompts`): every prompt a run uses is encoded once and kept on the CPU, so
the text encoders leave the device before training, and are not loaded at all when the cache already holds every
prompt. T5-XXL alone is 4.7B parameters (9 GB in bf16) beside FLUX's or SD3's transformer.

The cache lives in `$REWARDTUNE_CACHE/prompts/<key>.safetensors` (default `~/.cache/rewardtune/prompts`), one file
per text-encoder identity: the pipeline directory, its family and dtype, and each text encoder's and tokenizer's
files (names, sizes, modification times), so retrained encoders get a new file. Each prompt is encoded alone (batch
of one), so its embedding does not depend on which prompts it was encoded with. Files are written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rewardtune.engine.families import Conditioning

if TYPE_CHECKING:
    from rewardtune.engine.pipeline import Diffusion


def cache_root() -> Path:
    root = os.environ.get("REWARDTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rewardtune")
    return Path(root) / "prompts"


def cache_file(pipeline_dir: str | Path, family: Any, dtype: str) -> Path:
    """Where the embeddings of this pipeline's text encoders (in this dtype) are cached."""
    base = Path(pipeline_dir).resolve()
    h = hashlib.sha256(f"{base}\0{family.name}\0{dtype}\0".encode())
    for name in (*family.text_encoders, *family.tokenizers):
        d = base / name
        if not d.is_dir():
            h.update(f"{name}:-\0".encode())
            continue
        for p in sorted(d.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(base).as_posix()}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    return cache_root() / f"{family.name}-{h.hexdigest()[:16]}.safetensors"


def read(path: Path) -> dict[str, Conditioning]:
    """The cached prompts (empty when there is no cache or it cannot be read: it is then rebuilt)."""
    from safetensors import safe_open

    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            prompts = json.loads((f.metadata() or {}).get("prompts", "[]"))
            keys = set(f.keys())
            out = {}
            for i, p in enumerate(prompts):
                pooled = f.get_tensor(f"pooled.{i}") if f"pooled.{i}" in keys else None
                out[str(p)] = Conditioning(f.get_tensor(f"emb.{i}"), pooled)
            return out
    except (OSError, ValueError, KeyError, RuntimeError):  # a truncated or foreign file: rebuild it
        return {}


def write(path: Path, cache: dict[str, Conditioning]) -> None:
    from safetensors.torch import save_file

    prompts = sorted(cache)
    tensors: dict[str, torch.Tensor] = {}
    for i, p in enumerate(prompts):
        c = cache[p]
        tensors[f"emb.{i}"] = c.emb.contiguous()
        if c.pooled is not None:
            tensors[f"pooled.{i}"] = c.pooled.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"prompts": json.dumps(prompts)})
    os.replace(tmp, path)


@torch.no_grad()
def encode_all(diff: Diffusion, prompts: list[str]) -> dict[str, Conditioning]:
    """Each prompt's conditioning (one row, on the CPU), encoded alone."""
    return {p: diff.family.encode_text(diff, [p]).to("cpu") for p in prompts}


def release_text_encoders(diff: Diffusion) -> None:
    """The text encoders leave the device (and the Diffusion): prompts come from the cache from now on."""
    for name in diff.family.text_encoders:
        diff.components[name] = None
    if diff.device.type == "cuda":
        torch.cuda.empty_cache()


def attach(diff: Diffusion, path: Path, prompts: list[str], *, cached: dict[str, Conditioning] | None = None,
           main: bool = True) -> None:
    """Fill the cache with `prompts` (encoding the ones it lacks; rank 0 writes the file), give `diff` exactly those
    prompts' embeddings, and release its text encoders. `cached`: the file's content, when already read."""
    cached = read(path) if cached is None else dict(cached)
    missing = [p for p in dict.fromkeys(prompts) if p not in cached]
    if missing:
        if not diff.text_encoder_modules():
            raise RuntimeError(f"{len(missing)} prompts are not in {path} and the text encoders were not loaded")
        cached.update(encode_all(diff, missing))
        if main:
            write(path, cached)
    diff.prompt_cache = {p: cached[p] for p in prompts}
    diff.uncond = None  # recomputed from the cache (the empty prompt is cached too)
    release_text_encoders(diff)
