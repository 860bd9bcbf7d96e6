"""`rewardtune score` with the shapes world's judge: files on disk, per-file prompts, and the judge's verdicts."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from rewardtune.cli.main import app
from rewardtune.world import shapes as W


def test_score_reads_saved_world_images_with_the_judge(tmp_path):
    imgs, scenes = W.sample(6, seed=31)
    lines = []
    for i, (img, sc) in enumerate(zip(imgs, scenes, strict=True)):
        Image.fromarray((img * 255 + 0.5).astype(np.uint8)).resize((128, 128), Image.NEAREST).save(tmp_path / f"{i}.png")
        # half the files get their own caption, half another colour's
        colour = sc.objects[0].colour if i % 2 == 0 else ("red" if sc.objects[0].colour != "red" else "blue")
        lines.append(json.dumps({"path": f"{i}.png", "prompt": W.caption(colour, sc.objects[0].shape)}))
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(app, ["score", "--json", "--explain", "-r", "shapes-eval", "--prompts-file",
                                   str(tmp_path / "prompts.jsonl")])
    assert res.exit_code == 0, res.output
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(res.stdout)["results"]}
    for i in range(6):
        row = rows[f"{i}.png"]
        assert row["scores"]["shapes-eval"] == (1.0 if i % 2 == 0 else 0.0), row
        verdict = row["explain"]["shapes-eval"]
        assert verdict["colour"] == scenes[i].objects[0].colour and verdict["shape_ok"] is True
        assert verdict["verdict"].endswith(": ok" if i % 2 == 0 else "wrong colour")
