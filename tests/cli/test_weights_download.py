"""`rewardtune weights --download` against a model hub on localhost (tests/hub_server.py speaks the hub's HTTP API
to huggingface_hub's own client): what is fetched and what is skipped, the sizes reported before a fetch, a
download stopped by Ctrl-C whose finished files the next run keeps, and the fetch every command makes before
loading."""
from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path

import cli_process
import pytest
from hub_server import HubServer

MB = 1 << 20
BERT = "google-bert/bert-base-uncased"
CLIP = "openai/clip-vit-large-patch14"


def online(hub: HubServer, cache: Path) -> dict[str, str]:
    """The environment of a command that may use `hub`: HF_HOME beside the cache, so no stored token is sent; a
    read timeout far above the tests' pauses (20 s; huggingface_hub's default is 10), so the client never retries a
    held download on its own, yet below the Ctrl-C test's minute: a process-wide SIGINT may land on another thread
    than the main one (seen: a native one), and the main thread, blocked in a socket read, acts on it only when the
    read returns."""
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(cache),
            "HF_HOME": str(cache.parent / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DOWNLOAD_TIMEOUT": "20"}


def blob(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def test_download_fetches_what_loaders_read_and_nothing_else(tmp_path):
    """ImageReward: its named checkpoint from a repository that holds more, and the BERT tokenizer from a repository
    whose weights (safetensors, a pickle, other frameworks', a shard index) the tokenizer never reads."""
    cache = tmp_path / "hub"
    repos = {"THUDM/ImageReward": {"ImageReward.pt": blob(MB, 1), "med_config.json": b"{}",
                                   "README.md": b"---\nlicense: apache-2.0\n---\n", "old/ImageReward-v0.pt": b"x" * 9},
             BERT: {"config.json": b"{}", "tokenizer.json": b'{"a":1}', "tokenizer_config.json": b'{"b":2}',
                    "vocab.txt": b"[PAD]\n", "model.safetensors": blob(2 * MB, 2),
                    "pytorch_model.bin": blob(2 * MB, 3), "flax_model.msgpack": b"f" * 100,
                    "model.safetensors.index.json": b'{"weight_map": {"a": "model-00001-of-00002.safetensors"}}'}}
    with HubServer(repos) as hub:
        env = online(hub, cache)
        # before fetching: what a fetch would take, as the hub reports it
        p = cli_process.rt("weights", "imagereward", "--json", columns=250, **env)
        assert p.returncode == 4, p.stdout + p.stderr
        rows = {w["checkpoint"]: w for w in json.loads(p.stdout)["weights"]}
        assert rows["THUDM/ImageReward"]["fetch_bytes"] == MB + 2  # ImageReward.pt and med_config.json
        assert rows[BERT]["fetch_bytes"] == 2 + 7 + 7 + 6  # the tokenizer's files only
        assert not any(m == "GET" and "/resolve/" in path for m, path, _ in hub.requests)  # sizes, no bytes

        p = cli_process.rt("weights", "imagereward", "--download", columns=250, **env)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "all 2 checkpoints are here" in p.stderr
        assert sorted(hub.downloads("THUDM/ImageReward")) == ["ImageReward.pt", "med_config.json"]
        assert sorted(hub.downloads(BERT)) == ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    # offline, from the cache alone: every checkpoint is here, byte for byte
    p = cli_process.rt("weights", "imagereward", "--json", columns=250, HF_HUB_CACHE=str(cache))
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {w["checkpoint"]: w for w in json.loads(p.stdout)["weights"]}
    assert (Path(rows["THUDM/ImageReward"]["path"]) / "ImageReward.pt").read_bytes() == blob(MB, 1)


def test_a_download_stopped_by_ctrl_c_keeps_its_finished_files_and_the_next_run_fetches_the_rest(tmp_path):
    """Ctrl-C while the second shard of a sharded checkpoint is arriving: the command stops (exit 130, no
    traceback; at once when the signal reaches the main thread, else when its read times out). Offline, the
    checkpoint is not present: it lacks that shard. The next `--download` fetches only that shard (huggingface_hub
    drops a partial file, so it starts the file again) and the copy is whole."""
    cache = tmp_path / "hub"
    shards = {"model-00001-of-00002.safetensors": blob(2 * MB, 4), "model-00002-of-00002.safetensors": blob(6 * MB, 5)}
    index = json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                       "b": "model-00002-of-00002.safetensors"}}).encode()
    repos = {CLIP: {"config.json": b"{}", "model.safetensors.index.json": index, **shards,
                    "pytorch_model.bin": b"p" * 50}}
    snap = cache / "models--openai--clip-vit-large-patch14" / "snapshots" / HubServer.commit_of(CLIP)
    with HubServer(repos) as hub:
        hub.stall_after[(CLIP, "model-00002-of-00002.safetensors")] = 3 * MB
        # PYTHONFAULTHANDLER: should the command ever not stop, SIGABRT makes it print where each thread is
        proc = cli_process.start("weights", "clip", "--download", **online(hub, cache), PYTHONFAULTHANDLER="1")
        try:
            assert hub.stalled.wait(120), "the download never reached the stall"
            deadline = time.monotonic() + 60
            while not (snap / "model-00001-of-00002.safetensors").exists() and time.monotonic() < deadline:
                time.sleep(0.1)  # the first shard, not held back, finishes
            # held, the second shard would stay unfinished for 300 s: the command must stop without it
            sent = len(hub.requests)
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # seen once, on a loaded machine, not reproduced: keep the evidence
                # which thread holds the signal (a native thread, e.g. OpenBLAS's, may take it while the main one
                # sits in a read), and whether the client asked for anything after it (an interrupt swallowed)
                threads = {}
                for t in sorted(Path(f"/proc/{proc.pid}/task").iterdir()):
                    with contextlib.suppress(OSError):  # a thread may end meanwhile; the stacks matter more
                        threads[t.name] = [ln.strip() for ln in (t / "status").read_text().splitlines()
                                           if ln.startswith(("Name", "State", "SigPnd", "ShdPnd", "SigBlk", "SigIgn",
                                                             "SigCgt"))]
                proc.send_signal(signal.SIGABRT)
                out, err = proc.communicate(timeout=30)
                pytest.fail(f"no exit 60 s after SIGINT; threads: {threads}; requests since SIGINT: "
                            f"{hub.requests[sent:]}; its stacks on SIGABRT:\n{err}")
        finally:
            hub.release.set()
            proc.kill()
        assert proc.returncode == 130, out + err
        assert "Traceback" not in err
        assert "stopped: the files fetched so far stay in the hub cache; `rewardtune weights clip --download` " \
               "fetches the rest" in " ".join(err.split()), err
        p = cli_process.rt("weights", "clip", "--json", columns=250, HF_HUB_CACHE=str(cache))  # offline
        assert p.returncode == 4
        row = json.loads(p.stdout)["weights"][0]
        assert row["state"] == "missing" and row["lacks"] == ["model-00002-of-00002.safetensors"], row

        before = len(hub.downloads(CLIP))
        p = cli_process.rt("weights", "clip", "--download", columns=250, **online(hub, cache))
        assert p.returncode == 0, p.stdout + p.stderr
        assert hub.downloads(CLIP)[before:] == ["model-00002-of-00002.safetensors"]
        assert "pytorch_model.bin" not in hub.downloads(CLIP)
    for name, data in shards.items():
        assert (snap / name).read_bytes() == data


def test_score_fetches_a_missing_checkpoint_before_loading_and_scores_with_it(tmp_path):
    """`require`, the check every command makes before loading: online, a missing hub checkpoint is fetched first,
    then loaded. The hub serves the seeded tiny CLIP twin's real files, so the fetched copy must score exactly as
    the same files do from a local directory."""
    from PIL import Image

    from rewardtune.rewards._weights import resolve_weights

    local = resolve_weights("zoo:clip")
    files = {p.relative_to(local).as_posix(): p.read_bytes() for p in sorted(local.rglob("*")) if p.is_file()}
    img = tmp_path / "imgs" / "red.png"
    img.parent.mkdir()
    Image.new("RGB", (48, 48), (200, 30, 30)).save(img)
    args = ("score", "-r", "clip:tiny", "-p", "a red circle", "--json", str(img))
    cache = tmp_path / "hub"
    with HubServer({"org/tiny-clip": files}) as hub:
        p = cli_process.rt(*args, "-w", "org/tiny-clip", columns=250, **online(hub, cache))
        assert p.returncode == 0, p.stdout + p.stderr
        assert "fetching org/tiny-clip" in p.stderr
        assert sorted(hub.downloads("org/tiny-clip")) == sorted(files)
    fetched = json.loads(p.stdout)
    p = cli_process.rt(*args, "-w", str(local), columns=250, HF_HUB_CACHE=str(cache))
    assert p.returncode == 0, p.stdout + p.stderr
    assert fetched["scored"] == 1 and fetched["results"] == json.loads(p.stdout)["results"]
