"""`rewardtune score` on real image files: every format and mode, bad files, ranking, JSON/CSV, prompts files,
--min-score, captions, exit codes. Rewards with known scores are registered here; `clip --tiny` is the real one.
"""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from rewardtune.cli.main import app
from rewardtune.registry import load_reward, register_reward
from rewardtune.rewards.base import Reward
from rewardtune.scoring import load_rewards, score_files

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "tests" / "fixtures" / "images"
OCEAN = "a painting of an ocean with clouds and birds, day time, low depth field effect"


# --------------------------------------------------------------------------------- rewards with known scores
@register_reward("score-test-red", description="Mean of the red channel (known values for ranking tests).")
def _red(pixels, prompts):
    return pixels[:, 0].mean(dim=(1, 2))


@register_reward("score-test-prompt-len")
def _prompt_len(pixels, prompts):
    return torch.tensor([float(len(p)) for p in prompts]) + 0 * pixels.mean(dim=(1, 2, 3))


@register_reward("score-test-pixels-only", inputs=("pixels",))
def _blue(pixels, prompts):
    return pixels[:, 2].mean(dim=(1, 2))


@register_reward("score-test-no-green")
def _no_green(pixels, prompts):
    """Fails on any batch that holds a pure green image, like a reward that chokes on one odd input."""
    if bool(((pixels[:, 1] > 0.99) & (pixels[:, 0] < 0.01)).all(dim=(1, 2)).any()):
        raise ValueError("cannot score a pure green image")
    return pixels[:, 0].mean(dim=(1, 2))


class _Captioner(Reward):
    """A reward that explains itself with a caption naming the image's dominant channel."""

    name = "score-test-captioner"

    def _load(self):
        return []

    def _forward(self, pixels, prompts):
        return pixels.mean(dim=(1, 2, 3))

    def explain(self, pixels, prompts):
        names = ["red", "green", "blue"]
        return [{"caption": f"a mostly {names[int(p.mean(dim=(1, 2)).argmax())]} picture", "regions": [
            {"label": "everything", "likelihood": 0.5}]} for p in pixels]


register_reward("score-test-captioner")(_Captioner)


# ------------------------------------------------------------------------------------------------ image files
def flat(rgb, size=(24, 16), mode="RGB") -> Image.Image:
    return Image.new(mode, size, rgb)


def png_header_only(path: Path, w: int, h: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


#: relative path -> expected red-channel mean (x255) of the decoded image; None for the real photos
GOOD: dict[str, float | None] = {}
BAD = {"bad/empty.png": "empty file", "bad/not-an-image.jpg": "not an image", "bad/truncated.png": "corrupt",
       "bad/bomb.png": "too large"}


def make_images(root: Path) -> Path:
    """Files of every format and mode (flat colours with known red means), the real photos, and bad files."""
    root.mkdir(parents=True, exist_ok=True)
    specs = [  # (relative path, image, save kwargs, expected red x255)
        ("formats/red20.png", flat((20, 0, 0)), {}, 20),
        ("formats/red40.bmp", flat((40, 5, 5)), {}, 40),
        ("formats/red60.gif", flat((60, 0, 0)), {}, 60),
        ("formats/red80.webp", flat((80, 9, 9)), {"lossless": True}, 80),
        ("formats/red100.tif", flat((100, 0, 0)), {}, 100),
        ("formats/red180.jpg", flat((180, 0, 0)), {"quality": 95}, 180),
        ("modes/gray120.png", flat(120, mode="L"), {}, 120),
        ("modes/rgba-clear.png", flat((0, 0, 0, 0), mode="RGBA"), {}, 255),  # transparent -> white
        ("modes/la-opaque.png", flat((140, 255), mode="LA"), {}, 140),
        ("modes/cmyk-magenta.jpg", flat((0, 255, 0, 0), mode="CMYK"), {"quality": 95}, 255),
        ("modes/deep/nested/red200.png", flat((200, 0, 0), size=(16, 24)), {}, 200),
    ]
    for rel, im, kw, red in specs:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        im.save(p, **kw)
        GOOD[rel] = red
    pal = Image.new("P", (24, 16))
    pal.putpalette([0, 0, 0, 160, 0, 0] + [0] * 762)
    pal.putdata([0] * (24 * 8) + [1] * (24 * 8))  # top half transparent (-> white), bottom half red 160
    pal.save(root / "modes/palette-transparent.gif", transparency=0)
    GOOD["modes/palette-transparent.gif"] = (255 + 160) / 2
    Image.fromarray(np.full((16, 24), 257 * 70, np.uint16)).save(root / "modes/gray16-70.png")
    GOOD["modes/gray16-70.png"] = 70
    for i in (1, 2, 3, 4):
        (root / "photos").mkdir(exist_ok=True)
        shutil.copy(PHOTOS / f"{i}.webp", root / "photos" / f"{i}.webp")
        GOOD[f"photos/{i}.webp"] = None
    (root / "bad").mkdir()
    (root / "bad/empty.png").write_bytes(b"")
    (root / "bad/not-an-image.jpg").write_text("hello\n")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    (root / "bad/truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    png_header_only(root / "bad/bomb.png", 50_000, 50_000)
    (root / "notes.txt").write_text("not scanned: folders only yield image suffixes\n")
    return root


@pytest.fixture(scope="module")
def imgs(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("score") / "imgs")


def score(*args: str):
    res = CliRunner().invoke(app, ["score", "--no-progress", *args], env={"COLUMNS": "250"})
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res


def rel(root: Path, p: str) -> str:
    return str(Path(p).relative_to(root))


# ---------------------------------------------------------------------------------------------------- tests
def test_every_format_and_mode_scored_bad_files_get_rows_and_ranking_pinned(imgs):
    res = score("--json", "-r", "score-test-red", "-p", "anything", str(imgs))
    assert res.exit_code == 2, res.stderr  # some files failed (bad input); the rest are scored
    doc = json.loads(res.stdout)
    rows = {rel(imgs, r["path"]): r for r in doc["results"]}
    assert set(rows) == set(GOOD) | set(BAD)  # recursive, notes.txt skipped
    assert doc["scored"] == len(GOOD) and doc["failed"] == len(BAD)
    for name, needle in BAD.items():
        assert rows[name]["rank"] is None and needle in rows[name]["error"] and rows[name]["scores"] == {}
    for name, red in GOOD.items():
        assert rows[name]["error"] is None
        if red is not None:
            tol = 6 if name.endswith(".jpg") else 0.51
            assert abs(rows[name]["scores"]["score-test-red"] * 255 - red) <= tol, name
    # ranked by the reward, best first, errors last
    ranked = [rel(imgs, r["path"]) for r in doc["results"]]
    scores = [r["scores"].get("score-test-red", -math.inf) for r in doc["results"]]
    assert scores == sorted(scores, reverse=True)
    assert [r["rank"] for r in doc["results"][: len(GOOD)]] == list(range(1, len(GOOD) + 1))
    assert set(ranked[len(GOOD):]) == set(BAD)
    assert ranked[:3] == ["modes/cmyk-magenta.jpg", "modes/rgba-clear.png", "modes/palette-transparent.gif"] or \
        ranked[:3] == ["modes/rgba-clear.png", "modes/cmyk-magenta.jpg", "modes/palette-transparent.gif"]
    assert ranked[len(GOOD) - 1] == "formats/red20.png"


def test_table_ranked_by_first_reward_with_error_rows(imgs):
    res = score("-r", "score-test-red", "-r", "score-test-pixels-only", "-p", "x",
                str(imgs / "formats"), str(imgs / "bad" / "empty.png"))
    assert res.exit_code == 2
    lines = res.stdout.splitlines()
    header = next(line for line in lines if "rank" in line)
    assert header.index("score-test-red") < header.index("score-test-pixels-only") < header.index("error")
    order = [n for line in lines for n in ["red180.jpg", "red100.tif", "red80.webp", "red60.gif", "red40.bmp",
                                           "red20.png", "empty.png"] if n in line]
    assert order == ["red180.jpg", "red100.tif", "red80.webp", "red60.gif", "red40.bmp", "red20.png", "empty.png"]
    row = next(line for line in lines if "red180.jpg" in line)
    assert row.split()[1] == "1"
    assert "empty file" in next(line for line in lines if "empty.png" in line)
    assert "6 scored, 1 failed" in res.stderr


def test_a_lower_is_better_reward_ranks_its_lowest_score_first(imgs):
    """A card's `direction: lower` orders the ranking lowest first, in the table and in --json."""
    from rewardtune.registry import Card, registry

    registry().register(Card(name="score-test-red-lower", implementation=f"{__name__}:_red", differentiable=True,
                             inputs=("pixels", "prompt"), presets={"default": {}, "tiny": {}}, direction="lower",
                             origin=f"test card in {__name__}", factory=_red))
    doc = json.loads(score("--json", "-r", "score-test-red-lower", "-p", "x", str(imgs / "formats")).stdout)
    ranked = sorted(doc["results"], key=lambda r: r["rank"])
    assert [Path(r["path"]).name for r in ranked] == ["red20.png", "red40.bmp", "red60.gif", "red80.webp",
                                                      "red100.tif", "red180.jpg"]
    lines = score("-r", "score-test-red-lower", "-p", "x", str(imgs / "formats")).stdout.splitlines()
    assert next(line for line in lines if "red20.png" in line).split()[1] == "1"


def test_clip_tiny_batched_equals_each_image_alone_on_real_files(imgs):
    files = [imgs / n for n in GOOD]
    res = score("--tiny", "-r", "clip", "-r", "score-test-red", "--batch-size", "3", "--json", "-p", OCEAN,
                *map(str, files))
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["rewards"][0] == {"label": "clip", "name": "clip", "preset": "tiny", "direction": "higher"}
    got = {rel(imgs, r["path"]): r["scores"]["clip"] for r in doc["results"]}
    clip = load_reward("clip", "tiny")
    alone = {n: float(clip.score(OCEAN, [imgs / n])[0]) for n in GOOD}
    for n in GOOD:
        assert got[n] == pytest.approx(alone[n], rel=1e-5, abs=1e-5), n
    assert max(alone.values()) - min(alone.values()) > 1e-2  # the test can tell files apart
    # the Python API gives the same numbers for PIL images, paths and tensors
    photos = [imgs / "photos" / f"{i}.webp" for i in (1, 3)]
    by_path = clip.score(OCEAN, photos)
    by_pil = clip.score(OCEAN, [Image.open(p) for p in photos])
    by_tensor = clip.score(OCEAN, torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))
                                                                ).permute(2, 0, 1).float() / 255 for p in photos]))
    assert torch.allclose(by_path, by_pil, atol=1e-6) and torch.allclose(by_path, by_tensor, atol=1e-6)
    ranks, scores = clip.rank(OCEAN, [imgs / n for n in GOOD if "formats" in n])
    assert sorted(ranks) == list(range(1, 7)) and ranks[int(np.argmax(scores))] == 1
    assert scores == pytest.approx([alone[n] for n in GOOD if "formats" in n], abs=1e-5)


def test_tiny_rewards_print_a_ranked_table_on_the_real_photos():
    res = score("--tiny", "-r", "imagereward", "-r", "aesthetic", "-p", OCEAN, str(PHOTOS))
    assert res.exit_code == 0, res.stderr
    body = [line for line in res.stdout.splitlines() if ".webp" in line]
    assert len(body) == 4 and [line.split()[1] for line in body] == ["1", "2", "3", "4"]
    vals = [float([c for c in line.split() if c != "│"][2]) for line in body]  # imagereward, ranked best first
    assert vals == sorted(vals, reverse=True)


def test_csv_output_and_output_file(imgs, tmp_path):
    res = score("--csv", "-r", "score-test-red", "-p", "x", str(imgs / "formats"), str(imgs / "bad"))
    assert res.exit_code == 2
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(rows[0]) == ["rank", "path", "prompt", "score-test-red", "below_min", "error"]
    assert [r["rank"] for r in rows[:6]] == ["1", "2", "3", "4", "5", "6"]
    assert all(r["rank"] == "" and r["error"] for r in rows[6:]) and len(rows) == 6 + len(BAD)
    assert float(rows[0]["score-test-red"]) > float(rows[5]["score-test-red"])
    out = tmp_path / "sub" / "scores.json"
    res = score("-r", "score-test-red", "-p", "x", "-o", str(out), str(imgs / "formats"))
    assert res.exit_code == 0
    assert "red20.png" in res.stdout  # table still printed
    assert len(json.loads(out.read_text())["results"]) == 6


def test_prompts_file_csv_and_jsonl(imgs, tmp_path):
    (tmp_path / "a.png").write_bytes((imgs / "formats/red20.png").read_bytes())
    (tmp_path / "b").mkdir()
    (tmp_path / "b/c.png").write_bytes((imgs / "formats/red20.png").read_bytes())
    pf = tmp_path / "prompts.csv"
    pf.write_text('path,prompt\na.png,"a cat, sitting"\nb/c.png,dog\n')
    res = score("--json", "-r", "score-test-prompt-len", "--prompts-file", str(pf))
    assert res.exit_code == 0, res.stderr
    got = {Path(r["path"]).name: (r["prompt"], r["scores"]["score-test-prompt-len"])
           for r in json.loads(res.stdout)["results"]}
    assert got == {"a.png": ("a cat, sitting", 14.0), "c.png": ("dog", 3.0)}
    jl = tmp_path / "prompts.jsonl"
    jl.write_text(json.dumps({"path": "a.png", "prompt": "four"}) + "\n\n"
                  + json.dumps({"path": str(tmp_path / "b/c.png"), "prompt": "a much longer prompt"}) + "\n")
    # positional paths + prompts file: listed files get their prompt, others fall back to --prompt, else an error
    (tmp_path / "d.png").write_bytes((imgs / "formats/red20.png").read_bytes())
    res = score("--json", "-r", "score-test-prompt-len", "--prompts-file", str(jl), str(tmp_path))
    assert res.exit_code == 2
    rows = {Path(r["path"]).name: r for r in json.loads(res.stdout)["results"]}
    assert rows["a.png"]["scores"]["score-test-prompt-len"] == 4.0
    assert rows["c.png"]["scores"]["score-test-prompt-len"] == 20.0
    assert "no prompt" in rows["d.png"]["error"]
    res = score("--json", "-r", "score-test-prompt-len", "--prompts-file", str(jl), "-p", "fallback", str(tmp_path))
    assert res.exit_code == 0
    assert {Path(r["path"]).name: r["prompt"] for r in json.loads(res.stdout)["results"]}["d.png"] == "fallback"
    arr = tmp_path / "prompts.json"
    arr.write_text(json.dumps([{"path": "a.png", "prompt": "seven!!"}, {"path": "b/c.png", "prompt": "x"}]))
    res = score("--json", "-r", "score-test-prompt-len", "--prompts-file", str(arr))
    assert sorted(r["scores"]["score-test-prompt-len"] for r in json.loads(res.stdout)["results"]) == [1.0, 7.0]
    dup = tmp_path / "dup.csv"
    dup.write_text("a.png,one\nb/c.png,two\n./a.png,three\n")
    res = score("-r", "score-test-prompt-len", "--prompts-file", str(dup))
    assert res.exit_code == 2 and "line 3" in res.stderr and "different prompt (line 1)" in res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.png"}\n')
    res = score("-r", "score-test-prompt-len", "--prompts-file", str(bad))
    assert res.exit_code == 2 and "line 1" in res.stderr


def test_min_score_flags_and_filters(imgs):
    args = ["-r", "score-test-red", "-p", "x", str(imgs / "formats")]
    doc = json.loads(score("--json", "--min-score", str(70 / 255), *args).stdout)
    below = {Path(r["path"]).name for r in doc["results"] if r["below_min"]}
    assert below == {"red20.png", "red40.bmp", "red60.gif"}
    res = score("--csv", "--min-score", f"score-test-red={70 / 255}", "--only", "below", *args)
    assert res.exit_code == 0
    assert sorted(Path(r["path"]).name for r in csv.DictReader(io.StringIO(res.stdout))) == \
        ["red20.png", "red40.bmp", "red60.gif"]
    res = score("--csv", "--min-score", str(70 / 255), "--only", "passed", *args)
    assert sorted(Path(r["path"]).name for r in csv.DictReader(io.StringIO(res.stdout))) == \
        ["red100.tif", "red180.jpg", "red80.webp"]
    res = score("--min-score", str(70 / 255), *args)
    assert "3 below --min-score" in res.stderr
    res = score("--min-score", "score-test-rde=0.3", *args)
    assert res.exit_code == 2 and "Did you mean 'score-test-red'" in res.stderr


def test_one_file_breaking_a_reward_gets_its_own_row(tmp_path):
    for name, colour in (("a.png", (200, 0, 0)), ("green.png", (0, 255, 0)), ("c.png", (100, 0, 0))):
        flat(colour).save(tmp_path / name)
    res = score("--json", "-r", "score-test-no-green", "-r", "score-test-red", "-p", "x", str(tmp_path))
    assert res.exit_code == 2
    rows = {Path(r["path"]).name: r for r in json.loads(res.stdout)["results"]}
    assert "cannot score a pure green image" in rows["green.png"]["error"]
    assert rows["green.png"]["scores"] == {"score-test-red": 0.0}  # the other reward still scored it
    assert rows["a.png"]["error"] is None and rows["a.png"]["scores"]["score-test-no-green"] == pytest.approx(200 / 255)
    assert rows["a.png"]["rank"] == 1 and rows["c.png"]["rank"] == 2


def test_show_captions_and_explain(imgs):
    args = ["-r", "score-test-captioner", "-p", "x", str(imgs / "formats/red20.png"), str(imgs / "modes")]
    res = score("--show-captions", *args)
    assert res.exit_code == 0
    assert "caption" in res.stdout and "a mostly red picture" in res.stdout
    res = score("--explain", *args)
    assert "regions" in res.stdout and "everything" in res.stdout and "likelihood: 0.5000" in res.stdout
    doc = json.loads(score("--json", "--explain", *args).stdout)
    assert doc["results"][0]["explain"]["score-test-captioner"]["caption"].startswith("a mostly")


def test_blip2_caption_tiny_shows_its_captions():
    res = score("--tiny", "-r", "blip2-caption", "--show-captions", "--json", "-p", OCEAN, str(PHOTOS / "1.webp"))
    assert res.exit_code == 0, res.stderr
    row = json.loads(res.stdout)["results"][0]
    ex = row["explain"]["blip2-caption"]
    # the tiny twin's greedy caption of this photo (random weights: words, not sense), and its similarity is the score
    assert ex["caption"] == "soup grass cup of street coffee scene the", ex
    assert ex["similarity"] == ex["score"] == row["scores"]["blip2-caption"] and 0 < ex["score"] <= 1
    assert "soup grass cup of street coffee scene the" in score("--tiny", "-r", "blip2-caption", "--show-captions",
                                                               "-p", OCEAN, str(PHOTOS / "1.webp")).stdout


def test_pixels_only_reward_needs_no_prompt_but_others_do(imgs):
    res = score("--json", "-r", "score-test-pixels-only", str(imgs / "formats"))
    assert res.exit_code == 0 and len(json.loads(res.stdout)["results"]) == 6
    res = score("-r", "score-test-red", str(imgs / "formats"))
    assert res.exit_code == 2 and "--prompt is required" in res.stderr
    res = score("-r", "clip", str(imgs / "formats"))  # caught before looking for the (missing) weights
    assert res.exit_code == 2 and "--prompt is required" in res.stderr


def test_usage_errors_exit_2(imgs, tmp_path):
    res = score("-r", "imagerewrd", "-p", "x", str(imgs / "formats"))
    assert res.exit_code == 2 and "Did you mean 'imagereward'" in res.stderr
    res = score("-r", "clip:tinyy", "-p", "x", str(imgs / "formats"))
    assert res.exit_code == 2 and "Did you mean 'tiny'" in res.stderr
    (tmp_path / "empty").mkdir()
    res = score("-r", "score-test-red", "-p", "x", str(tmp_path / "empty"))
    assert res.exit_code == 2 and "No image files found" in res.stderr
    res = score("--json", "--csv", "-r", "score-test-red", "-p", "x", str(imgs / "formats"))
    assert res.exit_code == 2 and "--json and --csv are exclusive" in res.stderr and not res.stdout.strip()
    res = score("-r", "score-test-red", "-r", "score-test-red", "-p", "x", str(imgs / "formats"))
    assert res.exit_code == 2 and "twice" in res.stderr
    res = score("--dtype", "float8", "-r", "score-test-red", "-p", "x", str(imgs / "formats"))
    assert res.exit_code == 2 and "--dtype" in res.stderr
    res = score("--device", "cuda:99", "-r", "score-test-red", "-p", "x", str(imgs / "formats"))
    assert res.exit_code == 2 and "--device" in res.stderr
    if torch.cuda.is_available():  # a device index past the machine's devices
        assert f"this machine has {torch.cuda.device_count()} CUDA device(s)" in res.stderr
    else:
        assert "CUDA is not available" in res.stderr


def test_missing_weights_one_clear_message_exit_4(imgs):
    res = score("-r", "clip", "-p", "x", str(imgs / "formats"))
    assert res.exit_code == 4
    assert "openai/clip-vit-large-patch14" in res.stderr and "hf download openai/clip-vit-large-patch14" in res.stderr and "huggingface-cli" not in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_weights_option_scores_with_a_local_copy(imgs, tmp_path):
    """--weights points a reward at a downloaded directory (here: the tiny CLIP twin saved to a folder); a wrong
    directory is one clear error naming it; nothing existing to score fails before any model loads."""
    from rewardtune.zoo import materialize

    local = tmp_path / "my-clip"
    shutil.copytree(materialize("zoo:clip"), local)
    base = score("--json", "-r", "clip:tiny", "-p", "a cat", str(imgs / "formats"))
    via_dir = score("--json", "-r", "clip:tiny", "-w", f"clip:tiny={local}", "-p", "a cat", str(imgs / "formats"))
    bare = score("--json", "-r", "clip:tiny", "-w", str(local), "-p", "a cat", str(imgs / "formats"))
    assert base.exit_code == via_dir.exit_code == bare.exit_code == 0, (via_dir.stderr, bare.stderr)

    def scores(res):
        return {r["path"]: r["scores"] for r in json.loads(res.stdout)["results"]}

    assert scores(via_dir) == scores(base) == scores(bare)
    res = score("-r", "clip:tiny", "-w", f"clip:tiny={tmp_path / 'nowhere'}", "-p", "x", str(imgs / "formats"))
    assert res.exit_code == 4 and "nowhere" in res.stderr and "does not exist" in res.stderr
    res = score("-r", "clip:tiny", "-w", "imagereward=/x", "-p", "x", str(imgs / "formats"))
    assert res.exit_code == 2 and "not a reward being scored" in res.stderr
    res = score("-r", "clip:tiny", "-r", "score-test-red", "-w", "/x", "-p", "x", str(imgs / "formats"))
    assert res.exit_code == 2 and "say which reward" in res.stderr
    res = score("-r", "clip", "-p", "x", str(tmp_path / "no-such-folder"))
    assert res.exit_code == 2 and "No such file or folder" in res.stderr  # not exit 4: no model was loaded


def test_rotated_png_found_only_when_decoded_is_still_scored(tmp_path):
    """A PNG whose EXIF orientation sits after the image data looks 24x16 in its header and is 16x24 once
    decoded: it leaves its same-size batch and is scored on its own, with the right pixels."""
    for name in ("a.png", "b.png"):
        flat((100, 0, 0)).save(tmp_path / name)
    buf = io.BytesIO()
    Image.fromarray(np.concatenate([np.full((16, 12, 3), (250, 0, 0), np.uint8),
                                    np.full((16, 12, 3), (0, 0, 0), np.uint8)], axis=1)).save(buf, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6
    payload = exif.tobytes()[6:]  # without the "Exif\0\0" prefix, as PNG stores it
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    data = buf.getvalue()
    (tmp_path / "c.png").write_bytes(data[:-12] + chunk + data[-12:])
    res = score("--json", "-r", "score-test-red", "-b", "8", "-p", "x", str(tmp_path))
    assert res.exit_code == 0, res.stdout
    rows = {Path(r["path"]).name: r for r in json.loads(res.stdout)["results"]}
    assert (rows["c.png"]["width"], rows["c.png"]["height"]) == (16, 24)
    assert rows["c.png"]["scores"]["score-test-red"] == pytest.approx(125 / 255)
    assert rows["a.png"]["scores"]["score-test-red"] == pytest.approx(100 / 255)


def test_max_pixels_option(imgs):
    res = score("--json", "--max-pixels", "300", "-r", "score-test-red", "-p", "x", str(imgs / "formats"))
    assert res.exit_code == 2
    errors = [r["error"] for r in json.loads(res.stdout)["results"]]
    assert all("above the limit" in e for e in errors)  # every file here is 24x16 = 384 px


def test_score_files_progress_and_dtype(imgs):
    seen = []
    pil_limit = Image.MAX_IMAGE_PIXELS
    rewards = load_rewards(["clip:tiny"], dtype="bfloat16")
    rows = score_files([imgs / "formats", imgs / "bad"], rewards, prompt="x", batch_size=2,
                       progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (3, 6 + len(BAD)) and seen[-1] == (6 + len(BAD), 6 + len(BAD))
    assert all(b >= a for (a, _), (b, _) in zip(seen, seen[1:], strict=False))
    assert all(isinstance(r.scores["clip:tiny"], float) and math.isfinite(r.scores["clip:tiny"]) for r in rows if r.ok)
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # files opened from threads leave PIL's global limit alone  # noqa: SIM300


# --------------------------------------------------------------------------------- symlinks, unreadable folders
def test_symlinks_inside_a_folder_are_skipped_and_named_unless_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    flat((90, 0, 0)).save(outside / "private.png")
    (outside / "dir").mkdir()
    flat((30, 0, 0)).save(outside / "dir" / "d.png")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    flat((200, 0, 0)).save(imgs / "own.png")
    (imgs / "escape.png").symlink_to(outside / "private.png")
    (imgs / "escape-dir").symlink_to(outside / "dir", target_is_directory=True)

    res = score("--json", "-r", "score-test-red", "-p", "x", str(imgs))
    assert res.exit_code == 0, res.stderr  # skipping a link is not a failure
    doc = json.loads(res.stdout)
    assert [Path(r["path"]).name for r in doc["results"]] == ["own.png"]
    assert sorted(Path(p).name for p in doc["skipped_links"]) == ["escape-dir", "escape.png"]
    assert "skipped 2 symbolic links" in res.stderr and "escape.png" in res.stderr
    assert "--follow-symlinks" in res.stderr

    res = score("--json", "--follow-symlinks", "-r", "score-test-red", "-p", "x", str(imgs))
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert sorted(Path(r["path"]).name for r in doc["results"]) == ["d.png", "escape.png", "own.png"]
    assert doc["skipped_links"] == [] and "symbolic" not in res.stderr


def test_a_folder_holding_only_links_says_how_to_follow_them(tmp_path):
    flat((90, 0, 0)).save(tmp_path / "real.png")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "l.png").symlink_to(tmp_path / "real.png")
    res = score("-r", "score-test-red", "-p", "x", str(tmp_path / "imgs"))
    assert res.exit_code == 2
    assert "No image files found" in res.stderr and "1 symbolic link was not followed" in res.stderr
    assert "--follow-symlinks" in res.stderr


def _run_without_dac_override(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run the real CLI so that file permissions apply: as is when not root; as root, under setpriv with
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from the bounding set (root then obeys a folder's mode)."""
    import os

    cmd = [sys.executable, "-m", "rewardtune.cli.main", *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot make a folder unreadable")
        cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_an_unreadable_sub_folder_gets_an_error_row_and_a_hint(tmp_path):
    imgs = tmp_path / "imgs"
    (imgs / "locked").mkdir(parents=True)
    flat((200, 0, 0)).save(imgs / "a.png")
    flat((100, 0, 0)).save(imgs / "locked" / "hidden-from-us.png")
    (imgs / "locked").chmod(0)
    try:
        res = _run_without_dac_override(["score", "--no-progress", "--json", "--tiny", "-r", "clip", "-p", "x",
                                         str(imgs)], tmp_path)
    finally:
        (imgs / "locked").chmod(0o755)
    if res.returncode == 1 and "Operation not permitted" in res.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {res.stderr.strip()[-200:]}")
    assert res.returncode == 2, res.stderr  # not every image could be scored: bad input
    assert "Traceback" not in res.stderr
    rows = {Path(r["path"]).name: r for r in json.loads(res.stdout)["results"]}
    assert rows["a.png"]["error"] is None and math.isfinite(rows["a.png"]["scores"]["clip"])
    assert rows["locked"]["error"].startswith("cannot list this folder (Permission denied)")
    assert "hidden-from-us.png" not in res.stdout
    assert "a folder could not be listed" in res.stderr


# ---------------------------------------------------------------------------------------------- error policy
def test_library_errors_are_reworded_with_the_option_that_was_wrong(imgs, tmp_path):
    """rewardtune.scoring speaks of arguments (it is a library); the CLI names its options."""
    from rewardtune.scoring import ArgumentError, parse_min_scores, parse_weights_args

    with pytest.raises(ArgumentError) as e:
        parse_weights_args(["/models/x"], ["clip", "imagereward"])
    assert "--" not in str(e.value) and e.value.param == "weights"
    with pytest.raises(ArgumentError) as e:
        parse_min_scores(["clp=2"], ["clip"])
    assert "--" not in str(e.value) and "Did you mean 'clip'" in str(e.value)
    res = score("-r", "score-test-red", "-r", "score-test-pixels-only", "-p", "x", "--weights", "/models/x",
                str(imgs / "formats"))
    assert res.exit_code == 2 and "--weights /models/x: say which reward" in res.stderr
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"path": "a.png", "prompt": "x"}\n{oops\n')
    res = score("-r", "score-test-red", "--prompts-file", str(bad), str(imgs / "formats"))
    assert res.exit_code == 2 and f"--prompts-file {bad}: line 2: not valid JSON" in res.stderr


def test_library_messages_never_name_cli_options():
    """No message of the scoring library or the image loader speaks of a command-line option."""
    import re

    for mod in ("scoring.py", "images.py"):
        text = (ROOT / "rewardtune" / mod).read_text()
        assert not re.findall(r"--[a-z][a-z-]+", text), (mod, re.findall(r"--[a-z][a-z-]+", text))


def test_only_a_bad_file_exits_2_and_says_how_to_raise_the_limit(tmp_path):
    png_header_only(tmp_path / "bomb.png", 50_000, 50_000)  # 2.5 GP claimed: PIL's decompression-bomb check
    png_header_only(tmp_path / "big.png", 9000, 9000)  # 81 MP: above --max-pixels' default
    for name in ("bomb.png", "big.png"):
        res = score("-r", "score-test-red", "-p", "x", str(tmp_path / name))
        assert res.exit_code == 2, res.output
        assert "image too large" in res.stdout and "--max-pixels" in res.stderr


def test_an_extremely_elongated_image_gets_an_error_row_not_a_huge_allocation(tmp_path):
    """A CLIP-family reward scales the shorter side up to its input size: 30000 x 1 would become 224 x 6.7 million
    pixels (the fuzz test found such files taking gigabytes)."""
    flat((200, 0, 0), size=(30000, 1)).save(tmp_path / "line.png")
    flat((200, 0, 0), size=(320, 10)).save(tmp_path / "strip.png")  # 32:1 is still fine
    res = score("--json", "--tiny", "-r", "clip", "-p", "x", str(tmp_path))
    assert res.exit_code == 2
    rows = {Path(r["path"]).name: r for r in json.loads(res.stdout)["results"]}
    assert rows["line.png"]["error"].startswith("aspect ratio 30000:1 is beyond 32:1")
    assert rows["strip.png"]["error"] is None
