"""The run directory under hostile or careless use: unusable output dirs, full disks, two runs at once, corrupt or
planted checkpoints, a resume with another spec, the printed resume command, and signals during a long eval."""
from __future__ import annotations

import errno
import json
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cli_process
import pytest
import yaml
from run_helpers import assert_bitwise_equal, cli, lora

import rewardtune.api as api
from rewardtune.engine import control
from rewardtune.errors import OutputDirError
from rewardtune.registry import register_reward
from rewardtune.rundir import RunDir, atomic_write

HERE = Path(__file__).parent
CLI = [sys.executable, "-m", "rewardtune.cli.main"]


def _spec_file(tmp_path: Path, spec: dict, *, for_subprocess: bool = False) -> Path:
    spec = dict(spec)
    if for_subprocess:  # this process has the test rewards already (conftest)
        spec["imports"] = [str(HERE / "rewards_for_tests.py")]
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


ENV = cli_process.env(columns=400, OMP_NUM_THREADS="1")


def _wait_for(cond, proc: subprocess.Popen | None = None, timeout: float = 180.0, what: str = "") -> None:
    t0 = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (exit {proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------- unusable output dirs
@pytest.fixture
def unloadable_spec(tmp_path, spec_factory):
    """A spec whose model cannot load (a hub id that is not cached, offline): exit 4 once loading starts. A run
    that fails with the output directory's exit 2 instead has checked the directory before loading anything."""
    return _spec_file(tmp_path, spec_factory(model={"pretrained": "rewardtune-tests/not-cached-anywhere"}))


def _read_only_dir(path: Path):
    """A directory this process cannot write: a read-only tmpfs as root (root ignores mode bits), else mode 555."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    if shutil.which("mount") is None:
        pytest.skip("running as root without `mount`: no way to make a directory root cannot write")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"running as root and cannot mount a read-only tmpfs here: {r.stderr.decode().strip()}")
    return lambda: subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("kind", ["file", "below-a-file", "read-only"])
def test_unusable_output_dir_fails_with_2_before_any_model_loads(tmp_path, unloadable_spec, kind, capsys):
    cleanup = None
    if kind == "file":
        out = tmp_path / "out"
        out.write_text("not a directory")
        needle = "is a file, not a directory"
    elif kind == "below-a-file":
        (tmp_path / "blocker").write_text("x")
        out = tmp_path / "blocker" / "run"
        needle = "is a file, not a directory"
    else:
        out = tmp_path / "ro"
        cleanup = _read_only_dir(out)
        needle = "read-only" if os.geteuid() == 0 else "permission denied"
    try:
        assert cli(["run", str(unloadable_spec), "-o", str(out), "--no-progress"]) == 2
    finally:
        if cleanup:
            cleanup()
    err = capsys.readouterr().err
    assert needle in err and "output directory" in err, err
    assert "Traceback" not in err and "not-cached-anywhere" not in err  # no model was looked for


def test_a_usable_output_dir_gets_as_far_as_loading(tmp_path, unloadable_spec, capsys):
    """The other half of the proof above: with a good directory, the same spec fails on its weights (exit 4)."""
    assert cli(["run", str(unloadable_spec), "-o", str(tmp_path / "ok"), "--no-progress"]) == 4
    assert "not-cached-anywhere" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- full disk
def test_atomic_write_on_a_full_disk_gives_a_clean_error_and_no_temp_file(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"previous")

    def write(f):
        f.write(b"half of it")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputDirError) as ei:
        atomic_write(target, write, "the state")
    msg = str(ei.value)
    assert "no space left" in msg and "Free some space" in msg and str(target) in msg
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_atomic_write_to_dev_full_raises_the_disk_full_error(tmp_path):
    """A real ENOSPC from the kernel: /dev/full refuses every write."""
    def copy_from_dev_full_sink(f):
        with open("/dev/full", "wb", buffering=0) as sink:
            sink.write(b"x")  # raises OSError(ENOSPC)

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with pytest.raises(OutputDirError, match="no space left"):
        atomic_write(tmp_path / "x.json", copy_from_dev_full_sink)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MB tmpfs (root only): a real filesystem that fills up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root; the /dev/full and injected-ENOSPC tests cover the rest")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_disk_filling_up_mid_run_gives_a_clean_error_and_keeps_the_last_checkpoint(tiny_tmpfs, spec_factory):
    out = tiny_tmpfs / "run"
    filler = tiny_tmpfs / "filler"

    def fill_disk(ev):
        if ev.step == 2:  # after the checkpoint of step 1: fill the disk so the next one cannot be written
            with open(filler, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                try:
                    while True:
                        f.write(b"\0")
                except OSError:
                    pass

    spec = spec_factory(train={"steps": 4, "checkpoint_every": 1})
    with pytest.raises(OutputDirError) as ei:
        api.run(spec, output_dir=out, progress=False, callbacks=[fill_disk])
    msg = str(ei.value)
    assert "no space left" in msg and "Free some space" in msg and "resumes from its last complete checkpoint" in msg
    run = RunDir(out)
    assert [c.step for c in run.checkpoints()] == [1]
    assert not [p for p in run.checkpoints_dir.iterdir() if p.name.startswith(".tmp")], "a partial save was left"
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]
    filler.unlink()
    resumed = api.run(spec, output_dir=out, progress=False, resume=True)
    assert resumed.resumed_from == 1 and resumed.steps_done == 4


# ---------------------------------------------------------------------------------------------- two runs
def test_second_run_in_a_busy_output_dir_is_refused_naming_the_holder(tmp_path, spec_factory):
    spec = _spec_file(tmp_path, spec_factory(train={"steps": 100000, "checkpoint_every": 100000}),
                      for_subprocess=True)
    out = tmp_path / "out"
    first = subprocess.Popen(CLI + ["run", str(spec), "-o", str(out), "--no-progress"], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / RunDir.LOCK
        _wait_for(lambda: lock.exists() and f'"pid": {first.pid}' in lock.read_text(), first, what="the lock")
        # started after the first took the lock, with --overwrite even: refused, and before loading any model
        second = subprocess.run(CLI + ["run", str(spec), "-o", str(out), "--no-progress", "--overwrite"],
                                env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"in use by another run (pid {first.pid} on" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        _wait_for(lambda: RunDir(out).last_logged_step() is not None, first, what="the first run to train")
        assert first.poll() is None, "the first run must go on"
        # `rewardtune cancel` stops a local run: SIGTERM to the lock's holder, which checkpoints and exits 3
        cancel = subprocess.run(CLI + ["cancel", str(out)], env=ENV, capture_output=True, text=True, timeout=120)
        assert cancel.returncode == 0 and f"stop requested for pid {first.pid}" in cancel.stdout, cancel.stderr
        assert first.wait(timeout=120) == 3  # interrupted, resumable
        assert RunDir(out).read_result()["outcome"] == "stopped"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()
        first.stderr.close()


def test_the_lock_dies_with_its_process(tmp_path):
    """kill -9 of the holder frees the directory at once: no stale lock file to remove by hand."""
    run = RunDir(tmp_path)
    code = ("import sys, time; from rewardtune.rundir import RunDir; RunDir(sys.argv[1]).lock(); "
            "print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run.lock_holder()["pid"] == holder.pid
        with pytest.raises(OutputDirError, match=f"pid {holder.pid}"):
            run.lock()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert run.lock_holder() is None
    run.lock().release()


# ----------------------------------------------------------------------------------------- resume refusals
def test_resume_when_every_checkpoint_is_corrupt_refuses_and_keeps_every_file(tmp_path, spec_factory, capsys):
    p = _spec_file(tmp_path, spec_factory(train={"steps": 4, "checkpoint_every": 2}))
    out = tmp_path / "out"
    assert cli(["run", str(p), "-o", str(out), "--no-progress"]) == 0
    run = RunDir(out)
    assert [c.step for c in run.checkpoints()] == [2, 4]
    (run.checkpoint_dir(2) / "state.json").write_text("{not json")
    t = run.checkpoint_dir(4) / "tensors.safetensors"
    t.write_bytes(t.read_bytes()[:100])
    before = _files(out)
    capsys.readouterr()
    assert cli(["run", str(p), "-o", str(out), "--no-progress", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "none of its checkpoints can be used" in err and "step_00000002" in err and "step_00000004" in err
    assert "--overwrite" in err and "Traceback" not in err
    after = _files(out)
    before.pop(RunDir.LOCK), after.pop(RunDir.LOCK)  # the refusing process took the lock, so it names itself there
    assert after == before, "a refused resume must leave every file as it was"


class _Payload:
    """Unpickling this writes a marker file: proof that something ran code from a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_pickle_checkpoints_are_never_unpickled(tmp_path, spec_factory, capsys):
    import torch

    marker = tmp_path / "PWNED"
    p = _spec_file(tmp_path, spec_factory(train={"steps": 2, "checkpoint_every": 1}))
    out = tmp_path / "out"
    run = RunDir(out)
    # 1. a directory holding only a crafted pickle checkpoint (what older versions wrote, torch.save format)
    run.checkpoints_dir.mkdir(parents=True)
    torch.save({"step": 1, "x": _Payload(marker)}, run.checkpoints_dir / "step_00000001.pt")
    assert cli(["run", str(p), "-o", str(out), "--no-progress", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "step_00000001.pt" in err and "never loaded" in err and "unpickling can run code" in err
    assert not marker.exists()
    # 2. a real run, then a newer planted pickle file and a newer checkpoint directory whose tensors are a pickle
    shutil.rmtree(out)
    assert cli(["run", str(p), "-o", str(out), "--no-progress"]) == 0
    good = lora(out)
    torch.save({"step": 9, "x": _Payload(marker)}, run.checkpoints_dir / "step_00000009.pt")
    crafted = run.checkpoint_dir(7)
    shutil.copytree(run.checkpoint_dir(2), crafted)
    (crafted / "tensors.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    assert cli(["run", str(p), "-o", str(out), "--no-progress", "--resume"]) == 0  # from step 2, the newest good
    assert not marker.exists()
    assert_bitwise_equal(good, lora(out))
    assert (run.checkpoints_dir / "corrupt-step_00000007").is_dir()  # set aside, never pruned in favour of
    assert (run.checkpoints_dir / "step_00000009.pt").exists()  # left alone, never read


def test_nothing_in_the_package_unpickles():
    """Loaders that can run code: torch.load without weights_only=True, pickle, numpy's allow_pickle, submitit's
    pickle_load. The reward loaders' torch.load(weights_only=True) is torch's restricted, data-only unpickler."""
    import re

    root = Path(__import__("rewardtune").__file__).parent
    bad = []
    for f in sorted(root.rglob("*.py")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\bpickle\.loads?\(|pickle_load\(|allow_pickle\s*=\s*True|weights_only\s*=\s*False|"
                         r"\bUnpickler\(|\bjoblib\.load\(|\bdill\.", code):
                bad.append(f"{f.relative_to(root)}:{n}: {line.strip()}")
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code:
                bad.append(f"{f.relative_to(root)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_resume_with_another_spec_is_refused_and_the_saved_spec_kept(tmp_path, spec_factory, capsys):
    p = _spec_file(tmp_path, spec_factory(train={"steps": 4, "checkpoint_every": 100}))
    out = tmp_path / "out"
    first = api.run(str(p), output_dir=out, progress=False, callbacks=[lambda ev: ev.step == 2 and
                                                                          control.request_stop("test")])
    assert first.stopped_early and first.steps_done == 2
    saved = (out / "spec.yaml").read_bytes()
    capsys.readouterr()
    assert cli(["run", str(p), "-o", str(out), "--no-progress", "--resume", "train.steps=3", "train.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "differs from the one the run was started with" in err
    assert "train.steps: 4 in the run, 3 now" in err and "train.lr: 0.03 in the run, 0.5 now" in err
    assert (out / "spec.yaml").read_bytes() == saved
    # where it runs and how progress shows may change
    assert cli(["run", str(p), "-o", str(out), "--resume", "logging.progress=true", "launcher.type=local",
                 "launcher.device=cpu"]) == 0
    assert (out / "spec.yaml").read_bytes() == saved
    steps = [r["step"] for r in RunDir(out).metrics() if "loss" in r]
    assert steps == [1, 2, 3, 4]


def test_a_run_started_by_an_older_version_resumes_where_its_new_fields_keep_what_it_did(tmp_path, spec_factory,
                                                                                       capsys):
    """spec.yaml of a run started before some fields existed lacks them: a resume reads them as their defaults
    (what the run did then), except where a new default changes behaviour, which must then be given explicitly."""
    p = _spec_file(tmp_path, spec_factory(train={"steps": 4, "checkpoint_every": 100}))
    out = tmp_path / "out"
    api.run(str(p), output_dir=out, progress=False, callbacks=[lambda ev: ev.step == 2 and
                                                               control.request_stop("test")])
    old = yaml.safe_load((out / "spec.yaml").read_text())
    del old["logging"]["select_by"], old["train"]["compile_prefix"]  # fields this version added since
    (out / "spec.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    assert cli(["run", str(p), "-o", str(out), "--no-progress", "--resume"]) == 0
    assert [r["step"] for r in RunDir(out).metrics() if "loss" in r] == [1, 2, 3, 4]

    from rewardtune.engine.outputs import check_resume_spec, spec_data
    from rewardtune.errors import ResumeSpecError
    from rewardtune.spec.load import load_spec

    ranked = load_spec(spec_factory({"name": "ranked", "samples_per_prompt": 2, "top_m": 1},
                                    objective=[{"reward": "test-redness", "combine": "assemble_ranked"}]))
    old = spec_data(ranked)
    for key in ("baseline", "kl_coeff", "loss", "beta"):  # ranked before them: plain fine-tuning on the kept images
        del old["method"][key]
    run = RunDir(tmp_path / "ranked")
    run.path.mkdir()
    run.spec_file.write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(ResumeSpecError, match="method.baseline: 0.0 in the run, 1.0 now"):
        check_resume_spec(run, ranked)
    check_resume_spec(run, load_spec(spec_data(ranked) | {"method": {**old["method"], "baseline": 0.0}}))


# --------------------------------------------------------------------------------------- interrupt + resume
def test_continue_with_command_resumes_the_same_run_to_exactly_its_steps(tmp_path, spec_factory):
    """Ctrl-C, then paste the printed command into a shell: same spec, overrides, --tiny and output dir."""
    steps = 30
    spec = _spec_file(tmp_path, spec_factory(train={"steps": 10, "checkpoint_every": 100000}), for_subprocess=True)
    out = tmp_path / "out dir"  # a space: the printed command must quote it
    overrides = [f"train.steps={steps}", "prompts.train=[a cat's toy, a \"red\" car & $HOME]"]
    proc = subprocess.Popen(CLI + ["run", str(spec), *overrides, "--tiny", "-o", str(out), "--no-progress"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (RunDir(out).last_logged_step() or 0) >= 2, proc, what="two training steps")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr
    line = next(x for x in stdout.splitlines() if x.startswith("Continue with: "))
    cmd = line.removeprefix("Continue with: ")
    argv = shlex.split(cmd)
    assert argv[:3] == ["rewardtune", "run", str(spec)] and argv[3:5] == overrides
    assert argv[5:] == ["--tiny", "--resume", "--output-dir", str(out)]
    saved = (out / "spec.yaml").read_bytes()
    stopped_at = RunDir(out).last_logged_step()
    assert 2 <= stopped_at < steps
    shell = cmd.replace("rewardtune", " ".join(shlex.quote(a) for a in CLI), 1) + " --no-progress"
    done = subprocess.run(shell, shell=True, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"done {steps} steps" in done.stdout
    logged = [r["step"] for r in RunDir(out).metrics() if "loss" in r]
    assert logged == list(range(1, steps + 1)), "every step exactly once, and no more than train.steps"
    assert (out / "spec.yaml").read_bytes() == saved
    assert yaml.safe_load(saved)["prompts"]["train"]["inline"] == ["a cat's toy", 'a "red" car & $HOME']


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_a_long_eval_stops_within_a_unet_call(tmp_path, spec_factory, sig):
    """Sixteen eval prompts x 500 sampling steps: minutes of 'before' eval. A signal must end it at once."""
    prompts = [f"prompt number {i}" for i in range(16)]
    spec = _spec_file(tmp_path, spec_factory(prompts={"train": ["a cat"], "eval": prompts},
                                             sampling={"steps": 500}, logging={"eval_prompts": 16}),
                      for_subprocess=True)
    out = tmp_path / "out"
    proc = subprocess.Popen(CLI + ["run", str(spec), "-o", str(out), "--no-progress"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "spec.yaml").exists(), proc, what="the run to start its 'before' eval")
    time.sleep(1.0)  # well inside the eval
    proc.send_signal(sig)
    try:
        stdout, stderr = proc.communicate(timeout=60)  # the eval alone takes minutes: 60 s means "did not hang"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"{sig.name} did not stop the eval") from None
    assert proc.returncode == 3, stderr
    assert f"signal {sig.name}" in stdout and "Continue with: " in stdout
    run = RunDir(out)
    assert [c.step for c in run.checkpoints()] == [0]
    assert run.read_result()["outcome"] == "stopped"
    assert not (out / "images" / "before.png").exists()


_STOP_AT_CALL: dict[str, int | None] = {"n": 0, "at": None}


@register_reward("test-convnet-stopping", differentiable=True)
def convnet_stopping(pixels, prompts):
    """test-convnet, which asks the run to stop at one chosen call (as a signal arriving then would)."""
    from rewards_for_tests import _CONV

    _STOP_AT_CALL["n"] += 1
    if _STOP_AT_CALL["n"] == _STOP_AT_CALL["at"]:
        control.request_stop("test: stop mid-step")
    return _CONV(pixels, prompts)


def _mid_step_spec(spec_factory):
    # grad_accum 2 with running z-score statistics: the first micro-batch updates them before the second one's
    # sampling is aborted, so a checkpoint of the unfinished step's state would not resume bitwise
    return spec_factory({"name": "alignprop", "k_range": [1, 3], "draw": "per_batch"},
                        objective=[{"reward": "test-convnet-stopping", "normalize": "running_zscore"}],
                        sampling={"steps": 3, "eta": 1.0, "guidance_scale": 2.0},
                        train={"steps": 4, "grad_accum": 2, "lr_schedule": "cosine", "warmup_steps": 1,
                               "checkpoint_every": 100})


def test_stop_in_the_middle_of_a_step_checkpoints_the_last_finished_step(tmp_path, spec_factory):
    spec = _mid_step_spec(spec_factory)
    _STOP_AT_CALL.update(n=0, at=None)
    full = api.run(spec, output_dir=tmp_path / "full", progress=False)
    # calls: 1 = 'before' eval, 2-3 = step 1, 4 = step 2's first micro-batch -> its second one is aborted
    _STOP_AT_CALL.update(n=0, at=4)
    try:
        part = api.run(spec, output_dir=tmp_path / "part", progress=False)
    finally:
        _STOP_AT_CALL.update(n=0, at=None)
    assert part.stopped_early and part.steps_done == 1 and "mid-step" in part.stop_reason
    assert [c.step for c in RunDir(tmp_path / "part").checkpoints()] == [1]
    resumed = api.run(spec, output_dir=tmp_path / "part", progress=False, resume=True)
    assert resumed.resumed_from == 1 and resumed.steps_done == 4
    assert_bitwise_equal(lora(tmp_path / "full"), lora(tmp_path / "part"))
    assert resumed.eval_after == full.eval_after


def test_stop_during_the_before_and_after_evals_resumes_to_the_same_result(tmp_path, spec_factory):
    spec = spec_factory(train={"steps": 3})
    full = api.run(spec, output_dir=tmp_path / "full", progress=False)

    class StopAtStart:  # the 'before' eval starts right after on_train_start: stop in its first UNet call
        def on_train_start(self, info):
            control.request_stop("test: before eval")

    part = api.run(spec, output_dir=tmp_path / "part", progress=False, callbacks=[StopAtStart()])
    assert part.stopped_early and part.steps_done == 0 and part.eval_before == {}
    assert [c.step for c in RunDir(tmp_path / "part").checkpoints()] == [0]
    # the last step's callback asks to stop: training is complete, the 'after' eval is interrupted
    part = api.run(spec, output_dir=tmp_path / "part", progress=False, resume=True,
                   callbacks=[lambda ev: ev.step == 3 and control.request_stop("test: after eval")])
    assert part.stopped_early and part.steps_done == 3 and part.weights_path is None
    assert part.eval_before == full.eval_before  # the interrupted 'before' eval was run on resume
    done = api.run(spec, output_dir=tmp_path / "part", progress=False, resume=True)
    assert not done.stopped_early and done.resumed_from == 3
    assert done.eval_before == full.eval_before and done.eval_after == full.eval_after
    assert_bitwise_equal(lora(tmp_path / "full"), lora(tmp_path / "part"))
    result = json.loads((tmp_path / "part" / "result.json").read_text())
    assert result["outcome"] == "done" and result["steps_done"] == 3


def test_status_of_a_local_run_reads_its_files(tmp_path, spec_factory, capsys):
    p = _spec_file(tmp_path, spec_factory(train={"steps": 2}))
    out = tmp_path / "out"
    first = api.run(str(p), output_dir=out, progress=False,
                    callbacks=[lambda ev: ev.step == 1 and control.request_stop("test")])
    assert first.stopped_early
    capsys.readouterr()
    assert cli(["status", str(out)]) == 3  # the run's own code: stopped, resumable
    text = capsys.readouterr().out
    assert "run: STOPPED (step 1 of 2)" in text and "resumable" in text and "step_00000001" in text
    assert cli(["run", str(p), "-o", str(out), "--resume", "--no-progress"]) == 0
    capsys.readouterr()
    assert cli(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "run: COMPLETED (step 2 of 2)" in text and "weights:" in text


def test_a_fresh_run_in_an_existing_directory_deletes_nothing_of_the_users(tmp_path, spec_factory):
    """Only --overwrite of a directory that holds a run removes outputs; other files are never touched."""
    mine = tmp_path / "images" / "mine.png"
    mine.parent.mkdir()
    mine.write_bytes(b"the user's own file")
    api.run(spec_factory(train={"steps": 1}), output_dir=tmp_path, progress=False)
    assert mine.read_bytes() == b"the user's own file"
    api.run(spec_factory(train={"steps": 1}), output_dir=tmp_path, progress=False, overwrite=True)
    assert not mine.exists()  # overwrite starts over: images/ belonged to the run it replaces


def test_a_run_dirs_spec_yaml_with_aliases_is_refused_before_expanding(tmp_path, spec_factory, capsys):
    """rewardtune writes spec.yaml without aliases; an alias bomb planted there is refused, not expanded."""
    p = _spec_file(tmp_path, spec_factory(train={"steps": 2}))
    out = tmp_path / "out"
    api.run(str(p), output_dir=out, progress=False, callbacks=[lambda ev: control.request_stop("test")])
    assert "&" not in (out / "spec.yaml").read_text() and "*" not in (out / "spec.yaml").read_text()
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]  # 10^6 leaves if expanded
    (out / "spec.yaml").write_text("\n".join(levels) + "\n")
    capsys.readouterr()
    assert cli(["run", str(p), "-o", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "was not written by rewardtune (it uses YAML aliases)" in err and "Traceback" not in err
