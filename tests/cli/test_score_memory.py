"""`rewardtune score` keeps its memory bounded whatever the images: eight 8000x8000 PNGs used to take 10 GB
(every image decoded to float at full size, a batch of them at once). Each case runs the real CLI in a fresh
process and reads that process's own peak RSS (resource.getrusage), so nothing else in the test session counts.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cli_process
import numpy as np
import pytest
from PIL import Image

LIMIT_MB = 2048

#: runs the CLI in this process, then reports the peak RSS; `mem-test-mean` declares no input size, so images are
#: only downscaled to the generous default
RUNNER = """
import json, resource, sys
from rewardtune.registry import register_reward

@register_reward("mem-test-mean", inputs=("pixels",))
def _mean(pixels, prompts):
    return pixels.mean(dim=(1, 2, 3))

from rewardtune.cli.main import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as e:
    code = e.code
sys.stderr.write("\\nPEAK " + json.dumps({"exit": code, "maxrss_mb": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024}) + "\\n")
"""


def run_score(*args: str) -> tuple[dict, dict]:
    p = subprocess.run([sys.executable, "-c", RUNNER, "score", "--no-progress", "--json", *args],
                       env=cli_process.env(TRANSFORMERS_OFFLINE="1"),
                       capture_output=True, text=True, timeout=600)
    peak = json.loads(p.stderr.rsplit("PEAK ", 1)[-1])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    return peak, json.loads(p.stdout) if p.stdout.strip() else {}


def test_eight_8000px_pngs_score_in_under_2gb(tmp_path):
    """The issue's case: a batch of eight 8000x8000 PNGs (a flat colour compresses to 200 KB each)."""
    first = tmp_path / "0.png"
    Image.new("RGB", (8000, 8000), (200, 30, 40)).save(first)
    for i in range(1, 8):
        shutil.copy(first, tmp_path / f"{i}.png")
    peak, doc = run_score("--tiny", "-r", "imagereward", "-r", "clip", "-p", "a red square", "-b", "8",
                          str(tmp_path))
    assert peak["exit"] == 0, doc
    assert doc["scored"] == 8
    for r in doc["results"]:  # the sizes reported are the files' own, not the decoded ones
        assert (r["width"], r["height"]) == (8000, 8000)
    scores = {r["scores"]["imagereward"] for r in doc["results"]}
    assert len({round(s, 5) for s in scores}) == 1, "eight identical files, one score"
    assert peak["maxrss_mb"] < LIMIT_MB, peak


def test_huge_images_of_every_kind_score_in_under_2gb_with_a_reward_of_unknown_input_size(tmp_path):
    """Modes whose conversion used to need several full-size copies (16-bit grey as float64, RGBA compositing,
    palettes, CMYK), a JPEG, and a 4:1 panorama, all at ~64 MP, scored by a reward that declares no input size
    (downscaled only to a 2048 px short side)."""
    Image.new("RGBA", (8000, 8000), (200, 30, 40, 128)).save(tmp_path / "rgba.png")
    Image.fromarray(np.full((8000, 8000), 257 * 70, np.uint16)).save(tmp_path / "gray16.png")
    pal = Image.new("P", (8000, 8000), 1)
    pal.putpalette([0, 0, 0, 160, 0, 0] + [0] * 762)
    pal.save(tmp_path / "palette.png")
    Image.new("CMYK", (8000, 8000), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg", quality=90)
    Image.new("RGB", (16000, 4000), (10, 20, 240)).save(tmp_path / "panorama.png")
    peak, doc = run_score("-r", "mem-test-mean", str(tmp_path))
    assert peak["exit"] == 0, doc
    means = {Path(r["path"]).name: r["scores"]["mem-test-mean"] * 255 for r in doc["results"]}
    expect = {"rgba.png": (200 + 30 + 40) / 3 * 128 / 255 + 255 * 127 / 255, "gray16.png": 70,
              "palette.png": 160 / 3, "cmyk.jpg": (255 + 0 + 255) / 3, "panorama.png": (10 + 20 + 240) / 3}
    for name, m in expect.items():
        assert means[name] == pytest.approx(m, abs=1.5), name
    assert peak["maxrss_mb"] < LIMIT_MB, peak
