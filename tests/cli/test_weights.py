"""`rewardtune weights`: every checkpoint a spec or a set of rewards needs, found in a hub cache laid out as
`hf download` writes it, or at local paths; `run` and `score` report every missing one at once; `rewards` shows
the real status; every secondary weight has a spec key and a `score` key that validation accepts.

No hub is reachable from here; the fetch itself (`rewardtune.rewards._weights.fetch`) runs against a hub on
localhost (tests/hub_server.py): here for an interrupted download, in test_weights_download.py for the command."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cli_process
import pytest
from hub_server import HubServer

from rewardtune.rewards import _weights as W

FINEREWARDS = ["stable-diffusion-v1-5/stable-diffusion-v1-5", "yuvalkirstain/PickScore_v1",
               "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "THUDM/ImageReward", "google-bert/bert-base-uncased",
               "trl-lib/ddpo-aesthetic-predictor", "openai/clip-vit-large-patch14", "Salesforce/blip2-opt-2.7b",
               "facebook/sam-vit-huge", "lmsys/vicuna-7b-v1.5"]


def hf_download(cache: Path, repo: str, files: dict[str, bytes], revision: str = "main",
                commit: str | None = None) -> Path:
    """Lay out `files` as `hf download REPO` leaves them in HF_HUB_CACHE: content-addressed blobs, a snapshot
    folder of relative symbolic links named by the commit, and refs/REVISION holding the commit hash."""
    root = cache / ("models--" + repo.replace("/", "--"))
    commit = commit or hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    snap = root / "snapshots" / commit
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return snap


def rt(*args: str, cache: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`rewardtune ARGS` with `cache` as the hub cache."""
    return cli_process.rt(*args, cwd=cwd, columns=250, HF_HUB_CACHE=str(cache))


def states(p: subprocess.CompletedProcess) -> dict[str, dict]:
    return {w["checkpoint"]: w for w in json.loads(p.stdout)["weights"]}


def test_every_checkpoint_of_a_spec_is_listed_with_its_setting_and_licence(tmp_path):
    p = rt("weights", "finerewards", "--json", cache=tmp_path / "hub")
    assert p.returncode == 4, p.stderr
    w = states(p)
    assert list(w) == FINEREWARDS  # the pipeline first, then each reward's weights and auxiliary models, once each
    assert all(x["state"] == "missing" for x in w.values())
    assert w["laion/CLIP-ViT-H-14-laion2B-s32B-b79K"]["setting"] == "objective[0].kwargs.processor"
    assert w["google-bert/bert-base-uncased"]["setting"] == "objective[1].kwargs.tokenizer"
    assert w["lmsys/vicuna-7b-v1.5"]["setting"] == "objective[4].kwargs.llm_weights"
    # one CLIP ViT-L/14 serves three rewards: fetched once, every user named
    assert w["openai/clip-vit-large-patch14"]["setting"] == ("objective[2].kwargs.clip_weights, objective[3].kwargs."
                                                            "text_weights, objective[4].kwargs.clip_weights")
    assert w["THUDM/ImageReward"]["license"] == "Apache-2.0" and "Llama 2" in w["lmsys/vicuna-7b-v1.5"]["license"]


def test_the_message_names_every_missing_checkpoint_and_the_command_that_fetches_them(tmp_path):
    p = rt("weights", "finerewards", cache=tmp_path / "hub")
    assert p.returncode == 4
    assert all(ref in p.stdout for ref in FINEREWARDS)
    assert "10 of the 10 checkpoints" in p.stderr
    assert "`rewardtune weights finerewards --download`" in p.stderr
    assert "hf download THUDM/ImageReward" in p.stderr and "huggingface-cli" not in p.stderr + p.stdout


def test_checkpoints_in_a_hub_cache_laid_out_by_hf_download_are_found(tmp_path):
    cache = tmp_path / "hub"
    hf_download(cache, "THUDM/ImageReward", {"ImageReward.pt": b"x" * 1000, "med_config.json": b"{}"})
    hf_download(cache, "google-bert/bert-base-uncased", {"tokenizer.json": b"{}", "config.json": b"{}"})
    hf_download(cache, "yuvalkirstain/PickScore_v1", {"config.json": b"{}", "model.safetensors": b"0" * 4000})
    hf_download(cache, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", {"README.md": b"---\nlicense: mit\n---\n"})
    p = rt("weights", "pickscore", "imagereward", "--json", cache=cache)
    assert p.returncode == 4
    w = states(p)
    assert w["THUDM/ImageReward"]["state"] == "present" and w["THUDM/ImageReward"]["size_bytes"] == 1002
    assert w["THUDM/ImageReward"]["path"].startswith(str(cache / "models--THUDM--ImageReward" / "snapshots"))
    assert w["google-bert/bert-base-uncased"]["state"] == "present"
    assert w["yuvalkirstain/PickScore_v1"]["state"] == "present"
    assert w["yuvalkirstain/PickScore_v1"]["setting"] == "--weights pickscore=DIR"
    # a snapshot that lacks what the loader reads is not 'present'
    laion = w["laion/CLIP-ViT-H-14-laion2B-s32B-b79K"]
    assert laion["state"] == "missing" and "tokenizer.json" in laion["lacks"][0]
    assert laion["setting"] == "--weights pickscore.processor=DIR"
    p = rt("weights", "pickscore", cache=cache)
    assert p.returncode == 4 and "lacks tokenizer.json" in p.stderr
    assert "to fetch" not in p.stderr  # offline, the partial copy's bytes are what is here, not what is left
    hf_download(cache, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", {"tokenizer.json": b"{}"})
    p = rt("weights", "pickscore", "imagereward", cache=cache)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "all 4 checkpoints are here" in p.stderr


def test_a_revision_is_looked_up_through_its_ref_or_as_a_commit(tmp_path):
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    hf_download(cache, "org/reward", {"ImageReward.pt": b"x", "med_config.json": b"{}"}, revision="v2",
                commit=commit)
    hf_download(cache, "org/tok", {"vocab.txt": b"x"})
    for rev in ("v2", commit):
        spec = tmp_path / f"s-{rev[:4]}.yaml"
        spec.write_text("model: {pretrained: zoo:sd1}\nobjective:\n  - reward: imagereward\n    weights: org/reward\n"
                        f"    kwargs: {{revision: '{rev}', tokenizer: org/tok}}\n")
        p = rt("weights", str(spec), "--json", cache=cache)
        assert p.returncode == 0, p.stdout + p.stderr
        assert states(p)["org/reward"]["revision"] == rev
    spec.write_text("model: {pretrained: zoo:sd1}\nobjective:\n  - reward: imagereward\n    weights: org/reward\n"
                    "    kwargs: {tokenizer: org/tok}\n")  # main was never downloaded
    p = rt("weights", str(spec), "--json", cache=cache)
    assert p.returncode == 4 and states(p)["org/reward"]["state"] == "missing"


def test_local_directories_are_checked_for_what_the_loader_reads(tmp_path):
    pipe = tmp_path / "sd"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                        "unet": ["diffusers", "UNet2DConditionModel"],
                                                        "safety_checker": [None, None]}))
    (pipe / "unet" / "config.json").write_text("{}")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"model: {{pretrained: {pipe}}}\nobjective: [{{reward: clip, preset: tiny}}]\n")
    p = rt("weights", str(spec), "--json", cache=tmp_path / "hub")
    assert p.returncode == 4
    w = states(p)[str(pipe)]
    assert w["kind"] == "local" and w["state"] == "missing" and w["lacks"] == ["unet/ weights (*.safetensors)"]
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"0" * 10)
    p = rt("weights", str(spec), "--json", cache=tmp_path / "hub")
    assert p.returncode == 0 and states(p)[str(pipe)]["state"] == "present", p.stdout


def test_run_reports_every_missing_checkpoint_at_once_before_loading_any(tmp_path):
    """Before: each attempt named only the next missing checkpoint (SD-1.5, then PickScore, then its processor)."""
    p = rt("run", "finerewards", "-o", str(tmp_path / "out"), cache=tmp_path / "hub", cwd=tmp_path)
    assert p.returncode == 4, p.stderr
    assert all(ref in p.stderr for ref in FINEREWARDS), p.stderr
    assert p.stderr.count("error:") == 1
    assert "`rewardtune weights finerewards --download`" in p.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


def test_score_reports_every_missing_checkpoint_with_its_weights_key(tmp_path):
    """Before: `score -r imagereward --weights imagereward=DIR` still asked for bert-base-uncased, with a fix the
    validator refused."""
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(img)
    local = tmp_path / "ImageReward"
    local.mkdir()
    p = rt("score", "-p", "x", "-r", "imagereward", "-r", "pickscore", "--weights", f"imagereward={local}", str(img),
           cache=tmp_path / "hub")
    assert p.returncode == 4
    for ref in ("google-bert/bert-base-uncased", "yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"):
        assert ref in p.stderr
    assert "--weights imagereward.tokenizer=DIR" in p.stderr and "--weights pickscore.processor=DIR" in p.stderr
    assert str(local) not in p.stderr.split("fix:")[0]  # the local copy given is not reported missing


def test_a_secondary_weights_key_reaches_the_reward_in_score(tmp_path):
    from rewardtune.zoo import materialize

    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(img)
    twin = tmp_path / "pick"
    shutil.copytree(materialize("zoo:pickscore"), twin)
    base = rt("score", "--json", "-p", "a red square", "-r", "pickscore:tiny", str(img), cache=tmp_path / "hub")
    via = rt("score", "--json", "-p", "a red square", "-r", "pickscore:tiny", "-w", f"pickscore:tiny.processor={twin}",
             str(img), cache=tmp_path / "hub")
    assert base.returncode == via.returncode == 0, via.stderr
    assert json.loads(via.stdout)["results"][0]["scores"] == json.loads(base.stdout)["results"][0]["scores"]
    bad = rt("score", "-p", "x", "-r", "pickscore:tiny", "-w", f"pickscore:tiny.processor={tmp_path / 'nowhere'}",
             str(img), cache=tmp_path / "hub")
    assert bad.returncode == 4 and "nowhere" in bad.stderr and "pickscore processor" in bad.stderr
    typo = rt("score", "-p", "x", "-r", "pickscore:tiny", "-w", "pickscore:tiny.processr=/x", str(img),
              cache=tmp_path / "hub")
    assert typo.returncode == 2 and "its keys: weights, processor" in typo.stderr


def test_secondary_weights_keys_are_accepted_by_validation_and_dropped_by_tiny(tmp_path):
    """Before: `objective[N].kwargs.processor=...`, the fix the error message suggested, was refused."""
    spec = tmp_path / "s.yaml"
    spec.write_text("model: {pretrained: zoo:sd1}\nobjective:\n  - reward: pickscore\n"
                    "    kwargs: {processor: laion/CLIP-ViT-H-14-laion2B-s32B-b79K}\n"
                    "  - {reward: imagereward, role: monitor, kwargs: {tokenizer: google-bert/bert-base-uncased}}\n"
                    "  - {reward: sam-llm, role: monitor, kwargs: {llm_weights: lmsys/vicuna-7b-v1.5}}\n"
                    "method: {name: draft_k, k: 1}\n")
    p = rt("validate", str(spec), cache=tmp_path / "hub")
    assert p.returncode == 0, p.stderr
    p = rt("validate", str(spec), "objective[0].kwargs.processr=x", cache=tmp_path / "hub")
    assert p.returncode == 2 and "Did you mean 'processor'?" in p.stderr
    p = rt("validate", str(spec), f"objective[0].kwargs.processor={tmp_path / 'no-such-dir'}", cache=tmp_path / "hub")
    assert p.returncode == 2 and "does not exist" in p.stderr  # a local path is checked like any weights directory
    p = rt("validate", str(spec), "--tiny", "--show", cache=tmp_path / "hub")
    assert p.returncode == 0 and "processor" not in p.stdout and "vicuna" not in p.stdout, p.stdout


def test_rewards_shows_the_real_status(tmp_path):
    cache = tmp_path / "hub"
    p = rt("rewards", "--json", cache=cache)
    assert p.returncode == 0, p.stderr
    by = {c["name"]: c for c in json.loads(p.stdout)}
    assert by["shapes-eval"]["status"] == "ready"
    assert by["pickscore"]["status"] == "weights missing"
    assert "rewardtune weights pickscore --download" in by["pickscore"]["status_fix"]
    hf_download(cache, "yuvalkirstain/PickScore_v1", {"config.json": b"{}", "model.safetensors": b"0"})
    hf_download(cache, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", {"tokenizer.json": b"{}"})
    by = {c["name"]: c for c in json.loads(rt("rewards", "--json", cache=cache).stdout)}
    assert by["pickscore"]["status"] == "ready"
    one = json.loads(rt("rewards", "pickscore", "--json", cache=cache).stdout)
    assert one["weight_keys"] == ["weights", "processor"] and one["preset_status"]["tiny"] == "ready"
    table = rt("rewards", cache=cache)
    assert "weights missing" in table.stdout and "ready" in table.stdout


def test_an_extra_that_carries_weights_is_reported_as_such(tmp_path, monkeypatch):
    from rewardtune.registry import get_card
    from rewardtune.rewards import _weights as W

    refs = W.reward_weights(get_card("blip2-caption"), "tiny-minilm")
    assert [r.kind for r in refs] == ["twin", "package"]
    # the package made unimportable for this one name and this test only (find_spec and import both see it missing)
    monkeypatch.setitem(sys.modules, refs[1].ref.removeprefix("pkg:"), None)
    status = W.weight_status(refs[1])
    assert status.state == "extra" and "pip install 'rewardtune[minilm]'" in status.detail


@pytest.mark.parametrize("ref_kw, files, allow, ignored, kept", [
    # HPSv2's repository holds both checkpoints: only the named one
    (dict(ref="xswu/HPSv2", needs=(("HPS_v2.1_compressed.pt",),)), ["HPS_v2.1_compressed.pt", "HPS_v2_compressed.pt"],
     ["HPS_v2.1_compressed.pt", "*.json", "*.txt"], [], []),
    # a transformers repository: safetensors, not the same weights as a pickle or in other frameworks
    (dict(ref="openai/clip-vit-large-patch14", needs=(("config.json",),)),
     ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"], None,
     ["pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"], ["config.json", "model.safetensors"]),
    # a tokenizer or processor in a model's repository (PickScore's processor, ImageReward's BERT tokenizer): its
    # own files, never the model's weights
    (dict(ref="laion/CLIP-ViT-H-14-laion2B-s32B-b79K", needs=(W.TOKENIZER_FILES,)),
     ["config.json", "preprocessor_config.json", "tokenizer.json", "merges.txt", "vocab.json", "spiece.model",
      "open_clip_pytorch_model.bin", "model.safetensors"], list(W.TOKENIZER_PATTERNS), [], []),
    # a model pushed from a Trainer checkpoint, pickles only: the weights, not the optimizer and training state
    (dict(ref="org/finetuned", needs=(("config.json",),)),
     ["config.json", "pytorch_model.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth",
      "rng_state_3.pth", "training_args.bin", "trainer_state.json", "ckpt/optimizer.bin"], None,
     ["optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "rng_state_3.pth", "training_args.bin",
      "ckpt/optimizer.bin"], ["config.json", "pytorch_model.bin"]),
    # the same from accelerate's save_state and from DeepSpeed (whose global_stepN/ holds its own shards)
    (dict(ref="org/accelerated", needs=(("config.json",),)),
     ["config.json", "model.safetensors", "optimizer.bin", "optimizer_1.bin", "scheduler.bin", "sampler.bin",
      "random_states_0.pkl", "global_step500/mp_rank_00_model_states.pt",
      "global_step500/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "unet_ema/global_steps.txt"], None,
     ["optimizer.bin", "optimizer_1.bin", "scheduler.bin", "sampler.bin", "random_states_0.pkl",
      "global_step500/mp_rank_00_model_states.pt", "global_step500/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"],
     ["config.json", "model.safetensors"]),
    # a pipeline: the diffusers folders, not the single-file copies beside them nor other variants
    (dict(ref="stable-diffusion-v1-5/stable-diffusion-v1-5", role="diffusion pipeline",
          needs=(("model_index.json",),)),
     ["model_index.json", "v1-5-pruned.ckpt", "v1-5-pruned.safetensors", "unet/config.json",
      "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
      "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.bin",
      "text_encoder/pytorch_model.bin"], None,
     ["v1-5-pruned.ckpt", "v1-5-pruned.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
      "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.bin"],
     ["unet/diffusion_pytorch_model.safetensors", "text_encoder/pytorch_model.bin", "model_index.json"]),
])
def test_download_patterns(ref_kw, files, allow, ignored, kept):
    import fnmatch

    from rewardtune.rewards._weights import WeightRef, download_patterns

    kw = {"revision": None, "role": "x", "setting": "s", "kind": "hub", **ref_kw}
    a, ign = download_patterns(WeightRef(**kw), files)
    assert a == allow
    if allow is not None and W.TOKENIZER_FILES in kw["needs"]:  # what the allow patterns take: no weights
        assert [f for f in files if any(fnmatch.fnmatch(f, p) for p in a)] == files[:6]
    for f in ignored:
        assert any(fnmatch.fnmatch(f, i) for i in ign), f
    for f in kept:
        assert not any(fnmatch.fnmatch(f, i) for i in ign), f


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_the_hf_download_hint_for_a_pipeline_takes_its_folders_not_every_copy(variant):
    """The hint printed for a machine with network cannot see the repository's files, so it says what patterns can:
    every file a fetch takes, and none of the single-file copies or other variants beside them."""
    import shlex

    from huggingface_hub.utils import filter_repo_objects

    from rewardtune.rewards._weights import hf_download_command, pipeline_weights, selected_files

    files = ["model_index.json", "README.md", "v1-5-pruned.ckpt", "v1-5-pruned-emaonly.safetensors",
             "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
             "unet/diffusion_pytorch_model.msgpack", "onnx/unet/model.onnx", "vae/diffusion_pytorch_model.bin"]
    ref = pipeline_weights("org/pipe", variant=variant)
    argv = shlex.split(hf_download_command(ref))
    assert argv[:3] == ["hf", "download", "org/pipe"]
    include = [argv[i + 1] for i, a in enumerate(argv) if a == "--include"]
    exclude = [argv[i + 1] for i, a in enumerate(argv) if a == "--exclude"]
    hinted = set(filter_repo_objects(files, allow_patterns=include, ignore_patterns=exclude))
    fetched = set(selected_files(ref, files))
    assert fetched <= hinted
    assert not hinted & {"v1-5-pruned.ckpt", "v1-5-pruned-emaonly.safetensors",
                         "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.msgpack",
                         "onnx/unet/model.onnx"}
    # what patterns cannot say: a pickle beside the same weights as safetensors (the fetch skips it)
    assert "vae/diffusion_pytorch_model.bin" in hinted and "vae/diffusion_pytorch_model.bin" not in fetched
    assert ("unet/diffusion_pytorch_model.fp16.safetensors" in hinted) == (variant == "fp16")


def test_fp16_variant_downloads_the_variant_files():
    import fnmatch

    from rewardtune.rewards._weights import pipeline_weights

    files = ["model_index.json", "unet/diffusion_pytorch_model.safetensors",
             "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    from rewardtune.rewards._weights import download_patterns

    _, ign = download_patterns(pipeline_weights("a/b", variant="fp16"), files)
    got = [f for f in files if not any(fnmatch.fnmatch(f, i) for i in ign)]
    # the vae has no fp16 file: its plain one is kept
    assert got == ["model_index.json", "unet/diffusion_pytorch_model.fp16.safetensors",
                   "vae/diffusion_pytorch_model.safetensors"]


def test_resolve_weights_uses_a_cached_snapshot_without_the_network(tmp_path, monkeypatch):
    from rewardtune.rewards import _weights as W

    snap = hf_download(tmp_path, "org/model", {"config.json": b"{}", "model.safetensors": b"0"})
    monkeypatch.setattr(W, "hub_cache_dir", lambda: str(tmp_path))
    assert W.resolve_weights("org/model") == snap
    with pytest.raises(W.MissingWeightsError) as e:
        W.resolve_weights("org/other")
    assert "hf download org/other" in str(e.value) and "huggingface-cli" not in str(e.value)


def test_an_interrupted_download_is_completed_not_loaded(tmp_path, monkeypatch):
    """The cache links a file into the snapshot only once it is complete, so an interrupted download is a snapshot
    whose own index names a shard it lacks. resolve_weights must not hand that folder to a loader: it completes the
    download (as `weights --download` fetches), and offline it says what is missing and how to finish it."""
    from huggingface_hub import constants

    from rewardtune.rewards import _weights as W

    index = json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                       "b": "model-00002-of-00002.safetensors"}}).encode()
    files = {"config.json": b"{}", "model.safetensors.index.json": index, "model-00001-of-00002.safetensors": b"1"}
    snap = hf_download(tmp_path, "org/big", files)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(W.MissingWeightsError) as e:
        W.resolve_weights("org/big")
    msg = str(e.value)
    assert "incomplete copy" in msg and "model-00002-of-00002.safetensors" in msg and "completes this one" in msg
    status = W.weight_status(W.WeightRef("org/big", None, "x weights", "weights", "hub", needs=(("config.json",),)))
    assert status.state == "missing" and status.lacks == ["model-00002-of-00002.safetensors"]

    # the same weights also as pickles, whose index a download keeps (all *.json) while it skips their shards:
    # complete once one index is
    pickles = json.dumps({"weight_map": {"a": "pytorch_model-00001-of-00002.bin",
                                         "b": "pytorch_model-00002-of-00002.bin"}}).encode()
    hf_download(tmp_path, "org/big", {"pytorch_model.bin.index.json": pickles})
    assert W.weight_status(status.ref).lacks == ["model-00002-of-00002.safetensors"]

    # with a hub at hand (tests/hub_server.py, on localhost), resolve_weights completes the copy, fetching only
    # what it lacks, and hands it over; asked again, it needs no network
    files["model-00002-of-00002.safetensors"] = b"2"
    files["pytorch_model.bin.index.json"] = pickles
    code = ("from rewardtune.rewards._weights import resolve_weights\n"
            "print(resolve_weights('org/big'))\nprint(resolve_weights('org/big'))\n")
    with HubServer({"org/big": files}) as hub:
        hub.commits["org/big"] = snap.name
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                           env=cli_process.env(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp_path)))
        assert p.returncode == 0, p.stderr
        assert p.stdout.split() == [str(snap), str(snap)]
        assert hub.downloads("org/big") == ["model-00002-of-00002.safetensors"]
    assert (snap / "model-00002-of-00002.safetensors").read_bytes() == b"2" and W.weight_status(status.ref).ok


def test_a_pipeline_snapshot_without_a_components_weights_is_incomplete(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from rewardtune.rewards import _weights as W

    index = json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                        "vae": ["diffusers", "AutoencoderKL"]}).encode()
    files = {"model_index.json": index, "unet/config.json": b"{}", "vae/config.json": b"{}",
             "vae/diffusion_pytorch_model.safetensors": b"v"}
    hf_download(tmp_path, "org/pipe", files)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(W.MissingWeightsError, match=r"lacks unet/ weights"):
        W.resolve_weights("org/pipe", what="diffusion pipeline", setting="model.pretrained")
    # a reward's folder is judged by what the caller says it needs: a component's weights in a subfolder are not a
    # model's own
    with pytest.raises(W.MissingWeightsError, match=r"lacks a weights file"):
        W.resolve_weights("org/pipe", needs=W.MODEL_NEEDS)


def test_an_interrupted_single_file_download_is_not_loaded(tmp_path, monkeypatch):
    """A checkpoint in one file: an interrupted download leaves its config without the weights. Every way in sees
    it: `resolve_weights` asked for a model (`needs=MODEL_NEEDS`, as every shipped reward asks; `load_reward`
    calls it without `require`) and `weights`. A tokenizer's folder holds no weights and is complete without them."""
    from huggingface_hub import constants

    snap = hf_download(tmp_path, "org/one", {"config.json": b"{}", "tokenizer.json": b"{}"})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(W.MissingWeightsError) as e:
        W.resolve_weights("org/one", what="clip", needs=W.MODEL_NEEDS)
    assert "incomplete copy" in str(e.value) and "lacks a weights file" in str(e.value)
    assert W.resolve_weights("org/one", what="clip tokenizer", needs=W.TOKENIZER_NEEDS) == snap
    assert W.resolve_weights("org/one") == snap  # a caller that names no needs gets what the folder's own files ask
    ref = W.WeightRef("org/one", None, "clip weights", "weights", "hub", needs=W._needs("weights", {}))
    status = W.weight_status(ref)
    assert status.state == "missing" and status.lacks == [W.WEIGHTS_FILE]
    hf_download(tmp_path, "org/one", {"model.safetensors": b"0"})
    assert W.resolve_weights("org/one", what="clip", needs=W.MODEL_NEEDS) == snap
    assert W.weight_status(ref).ok
    # a sentencepiece model, a chat template or a card is not a model's weights
    other = hf_download(tmp_path, "org/two", {"config.json": b"{}", "spiece.model": b"s", "README.md": b"# x",
                                              "chat_template.jinja": b"{{ x }}"})
    with pytest.raises(W.MissingWeightsError, match=r"lacks a weights file"):
        W.resolve_weights("org/two", needs=W.MODEL_NEEDS)
    assert W.resolve_weights("org/two", needs=W.TOKENIZER_NEEDS) == other
    # nor is what a Trainer saves beside it, in the same formats (fetched first, it must not pass for the model)
    hf_download(tmp_path, "org/three", {"config.json": b"{}", "training_args.bin": b"t", "optimizer.pt": b"o"})
    with pytest.raises(W.MissingWeightsError, match=r"lacks a weights file"):
        W.resolve_weights("org/three", needs=W.MODEL_NEEDS)

def test_model_card_front_matter_is_read_as_the_hub_reads_it(tmp_path):
    from rewardtune.rewards._weights import card_license, read_card

    (tmp_path / "README.md").write_text("---\nlicense: openrail++\nbase_model: [org/base]\n---\n# card\n")
    assert read_card(tmp_path) == {"license": "openrail++", "base_model": ["org/base"]}
    assert card_license(tmp_path) == "openrail++"
    (tmp_path / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    assert read_card(tmp_path) == {} and card_license(tmp_path) == ""
    (tmp_path / "README.md").write_text(f"---\nlicense: !!python/object/apply:os.system ['touch {tmp_path}/pwned']"
                                        "\n---\n")
    assert read_card(tmp_path) == {} and not (tmp_path / "pwned").exists()  # YAML tags never build objects
    assert read_card(tmp_path / "nowhere") == {} and card_license(None) == ""


def test_download_refuses_when_the_hub_is_off(tmp_path):
    p = rt("weights", "pickscore", "--download", cache=tmp_path / "hub")
    assert p.returncode == 2 and "offline mode is on (HF_HUB_OFFLINE" in p.stderr
