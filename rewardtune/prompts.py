"""Prompt sets: inline lists, text/JSONL files, and small built-in sets shipped as data."""
from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).parent / "data" / "prompts"

#: name -> file under rewardtune/data/prompts
BUILTIN_SETS = {
    "everyday": "everyday.txt",
    "everyday-eval": "everyday-eval.txt",
    "animals": "animals.txt",
    "imagereward-benchmark": "imagereward-benchmark.txt",
    "shapes": "shapes.txt",
    "shapes-eval": "shapes-eval.txt",
}


def read_prompt_file(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise ValueError(f"{path}:{n}: each JSONL line needs a string 'prompt' field")
            out.append(obj["prompt"])
        return out
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def resolve_prompts(source, base_dir: Path | None = None) -> list[str]:
    """PromptSource -> list of prompts."""
    if source.inline is not None:
        prompts = list(source.inline)
    elif source.file is not None:
        p = Path(source.file)
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        prompts = read_prompt_file(p)
    else:
        prompts = read_prompt_file(DATA / BUILTIN_SETS[source.builtin])
    if source.limit:
        prompts = prompts[: source.limit]
    if not prompts:
        raise ValueError("prompt set is empty")
    return prompts
