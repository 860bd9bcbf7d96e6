"""Sharing a result: the model card every export carries, and the trackers (tensorboard, wandb offline)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import cli_process
import pytest
import yaml

import rewardtune.api as api


def _front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n"), text[:200]
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_lora_export_carries_a_model_card_the_hub_reads(tmp_path, spec_factory):
    from huggingface_hub import ModelCard

    res = api.run(spec_factory(train={"steps": 2}), output_dir=tmp_path, progress=False)
    card_path = res.weights_path / "README.md"
    meta = _front_matter(card_path)
    assert meta["base_model"] == "zoo:sd1" and meta["library_name"] == "diffusers"
    assert {"lora", "rewardtune", "text-to-image", "rewardtune-draft_k"} <= set(meta["tags"])
    assert meta["method"] == "draft_k" and meta["steps"] == 2 and meta["trainable"] == "lora"
    assert meta["rewards"] == [{"reward": "test-brightness", "role": "optimize", "weight": 1.0}]
    assert meta["sampling"] == {"scheduler": "DDIM", "steps": 3, "guidance_scale": 1.0, "eta": 0.0, "resolution": 16}
    assert meta["metrics"]["eval_after"] == res.eval_after and meta["metrics"]["eval_before"] == res.eval_before
    # the grid the card shows lies beside the weights
    assert meta["widget"][0]["output"]["url"] == "compare.png" and (res.weights_path / "compare.png").is_file()
    # huggingface_hub parses it as a model card (what the hub does with the front matter)
    card = ModelCard.load(card_path)
    assert card.data.base_model == "zoo:sd1" and "lora" in card.data.tags
    assert "pipe.load_lora_weights" in card.text and "rewardtune eval lora" in card.text


def test_full_export_carries_a_model_card(tmp_path, spec_factory):
    res = api.run(spec_factory(model={"pretrained": "zoo:sd1", "trainable": {"type": "full"}}, train={"steps": 1}),
                  output_dir=tmp_path, progress=False)
    assert res.weights_path.name == "unet"
    meta = _front_matter(res.weights_path / "README.md")
    assert meta["trainable"] == "full" and "lora" not in meta["tags"] and meta["model_family"] == "sd1"


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_tracker_logs_metrics_and_grids(tmp_path, spec_factory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = api.run(spec_factory(train={"steps": 3}, logging={"trackers": ["tensorboard"], "progress": False,
                                                            "eval_prompts": 2}),
                  output_dir=tmp_path, progress=False)
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert "reward/test-brightness" in scalars, scalars
    evals = acc.Scalars("eval/test-brightness")
    assert [e.step for e in evals] == [0, 3]
    assert evals[-1].value == pytest.approx(res.eval_after["test-brightness"], rel=1e-6)
    assert "eval/grid" in acc.Tags()["images"]


WANDB = importlib.util.find_spec("wandb") is not None


def _wandb_records(path: Path) -> list:
    """The records of an offline run's `run-ID.wandb` file: wandb's transaction log, in the LevelDB log format (a
    7-byte file header, 32 KiB blocks, records with a 7-byte header: crc32, length, type; FULL=1 or FIRST, MIDDLE,
    LAST=4 for a record split over blocks), each a protobuf `Record`. wandb 0.31 no longer ships a reader."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            out.append(r)
            buf = b""
    return out


@pytest.mark.skipif(not WANDB, reason="wandb is an optional extra, not installed here (see docs/sharing.md)")
def test_wandb_tracker_offline_writes_its_run_files(tmp_path, spec_factory, monkeypatch):
    import json

    # offline, silent, no error reports sent anywhere, and wandb's own files under tmp_path instead of $HOME
    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false",
                 "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
                 "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}.items():
        monkeypatch.setenv(k, v)
    res = api.run(spec_factory(train={"steps": 2}, logging={"trackers": ["wandb"], "wandb_project": "rt-test",
                                                            "progress": False}),
                  output_dir=tmp_path, progress=False)
    run_id = (tmp_path / "wandb" / "run-id.txt").read_text().strip()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    records = _wandb_records(runs[0] / f"run-{run_id}.wandb")
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "rt-test" and run.run_id == run_id
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["train"]["steps"] == 2 and config["logging"]["trackers"] == ["wandb"]  # the resolved spec
    history: dict[int, dict] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            history.setdefault(r.history.step.num, {}).update(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    assert sorted(history) == [0, 1, 2]
    assert history[0]["eval/test-brightness"] == pytest.approx(res.eval_before["test-brightness"])
    assert history[2]["eval/test-brightness"] == pytest.approx(res.eval_after["test-brightness"])
    assert "reward/test-brightness" in history[1] and "loss" in history[2]
    grids = sorted((runs[0] / "files" / "media" / "images" / "eval").glob("grid_*.png"))
    assert [g.name.split("_")[1] for g in grids] == ["0", "2"]  # the before and after grids


def test_wandb_tracker_without_wandb_is_refused_before_loading(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"objective": [{"reward": "clip"}], "logging": {"trackers": ["wandb"]}}))
    code = ("import sys\nsys.modules['wandb'] = None\nfrom rewardtune.cli.main import main\n"
            "main(['validate', sys.argv[1]])\n")
    p = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, timeout=120,
                       env=cli_process.env(columns=250))
    assert p.returncode == 4, p.stdout + p.stderr
    assert "logging.trackers[0]" in p.stderr and "pip install 'rewardtune[wandb]'" in p.stderr
