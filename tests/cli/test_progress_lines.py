"""Progress when stdout is not a terminal (a pipe, a file, a SLURM log): plain lines, each flushed as it is written,
with the latest eval next to the training reward. Before, a piped 60-step run wrote its 6 lines at the end."""
from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import threading
from pathlib import Path

import cli_process

SMALL = ["sampling.steps=2", "logging.eval_prompts=2", "logging.eval_images_per_prompt=1"]

CHILD = """
import sys, time
from pathlib import Path
import rewardtune

go = Path(sys.argv[2])

def hold(event):  # step 2 waits until the test has read step 1's line from the pipe (the test always says go;
    if event.step == 2:  # the cap, above the test's own wait, only ends an orphan)
        t = time.monotonic()
        while not go.exists() and time.monotonic() - t < 900:
            time.sleep(0.05)

rewardtune.run("demo", overrides=sys.argv[3:], tiny=True, output_dir=sys.argv[1], callbacks=[hold])
"""


def test_piped_progress_lines_arrive_while_the_run_is_running(tmp_path):
    go = tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "out"), str(go), "train.steps=4",
                             "logging.progress_every_s=0", *SMALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_process.env(), cwd=tmp_path)
    lines: list[str] = []
    first = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("train 1/4"):
                first.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first.wait(300), f"no progress line while the run was held at step 2: {lines}"
        assert proc.poll() is None  # the line came through the pipe while the run was still going
        assert "eval@0 clip" in lines[-1] and "reward " in lines[-1], lines[-1]  # the latest eval beside the reward
    finally:
        go.touch()
        proc.wait(timeout=300)
        reader.join(timeout=10)
    assert proc.returncode == 0, proc.stderr.read()
    steps = [ln.split()[1] for ln in lines if ln.startswith("train ")]
    assert steps == ["1/4", "2/4", "3/4", "4/4"]


def run_lines(tmp_path: Path, *overrides: str) -> list[str]:
    tmp_path.mkdir()
    p = subprocess.run([sys.executable, "-m", "rewardtune.cli.main", "run", "demo", "--tiny", "-o",
                        str(tmp_path / "out"), *SMALL, *overrides], capture_output=True, text=True,
                       env=cli_process.env(), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    return [ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("train ")]


def _lines(total: int, start: int = 0, evals: tuple[int, ...] = (), **every) -> list[str]:
    """The steps that get a line from the progress of a run of `total` steps (steps in `evals` bring an eval)."""
    import io

    from rewardtune.engine.trainer import _Progress

    out = io.StringIO()  # not a terminal: plain lines
    with _Progress(True, total, start, stream=out, **every) as progress:
        for step in range(start + 1, total + 1):
            m = {"objective": 0.5, "loss": -0.5, "time/step_s": 0.1, "memory/peak_mb": 10.0}
            progress.update(step, m | ({"eval/clip": 0.7} if step in evals else {}), ["clip"])
    return [ln.split()[1] for ln in out.getvalue().splitlines()]


def test_lines_are_throttled_by_time_and_by_steps():
    assert _lines(5, every_s=3600) == ["1/5", "5/5"]  # a long interval: the first and the last step only
    assert _lines(5, every_s=0) == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert _lines(6, every_s=3600, every_steps=2) == ["1/6", "3/6", "5/6", "6/6"]  # every 2 steps, and the last
    assert _lines(8, start=3, every_s=3600) == ["4/8", "8/8"]  # a resumed run: its first step
    assert _lines(5, every_s=3600, evals=(3,)) == ["1/5", "3/5", "5/5"]  # a step with an eval


def test_a_mid_run_eval_gets_its_line(tmp_path):
    assert run_lines(tmp_path / "c", "train.steps=5", "logging.progress_every_s=3600",
                     "logging.images_every=3") == ["1/5", "3/5", "5/5"]


def test_no_progress_means_no_lines(tmp_path):
    p = subprocess.run([sys.executable, "-m", "rewardtune.cli.main", "run", "demo", "--tiny", "--no-progress", "-o",
                        str(tmp_path / "out"), "train.steps=2", *SMALL], capture_output=True, text=True,
                       env=cli_process.env(), cwd=tmp_path)
    assert p.returncode == 0 and not [ln for ln in p.stdout.splitlines() if ln.startswith("train ")], p.stdout


def test_a_terminal_gets_the_bar_not_lines(tmp_path):
    """Under a pseudo-terminal the rich bar is drawn (its `train` column and a bar), not the plain lines, and it
    shows the reward, the latest eval, the loss, the step time and the memory."""
    code = ("import rewardtune; rewardtune.run('demo', overrides=['train.steps=2', 'sampling.steps=2', "
            "'logging.eval_prompts=2', 'logging.eval_images_per_prompt=1'], tiny=True, output_dir='out')")
    main, child = os.openpty()  # the child's stdout and stderr are a terminal; this process's are untouched
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=child, stdout=child, stderr=child, cwd=tmp_path,
                            env=cli_process.env(columns=160, TERM="xterm"))
    os.close(child)
    out = bytearray()
    try:
        while True:
            if not select.select([main], [], [], 300)[0]:  # silent for 5 minutes: hung, not slow
                proc.kill()
                break
            try:
                data = os.read(main, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out.extend(data)
    finally:
        os.close(main)
    assert proc.wait(timeout=300) == 0, out.decode(errors="replace")[-2000:]
    text = out.decode(errors="replace")
    assert "━" in text and "2/2" in text, text[-2000:]
    assert "train 1/2 (50%)" not in text
    final = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "\n").splitlines()
    bar = [ln for ln in final if "2/2" in ln and "━" in ln][-1]
    assert re.search(r"reward -?[0-9.]+ +eval@0 clip -?[0-9.]+ .*loss -?[0-9.e+-]+ +[0-9.]+s/step +[0-9]+MB", bar), bar
