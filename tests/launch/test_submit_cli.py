"""Fast tests of `rewardtune submit/status/cancel` that need no SLURM: the generated sbatch script, flag
overrides, parsing, and the refusal to submit without sbatch."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rewardtune.cli.main import app
from rewardtune.launch import slurm as L

DATA = Path(__file__).parent / "data"
TINY = str(DATA / "tiny.yaml")


def cli(*args: str, path: str | None = None):
    env = {"COLUMNS": "250"}
    if path is not None:
        env["PATH"] = path
    return CliRunner().invoke(app, list(args), env=env)


def sbatch_lines(script: str) -> dict[str, str]:
    out = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, val = line[len("#SBATCH --"):].partition("=")
            out[key] = val
    return out


def test_dry_run_takes_the_spec_block(tmp_path):
    res = cli("submit", TINY, "--tiny", "--dry-run", "-o", str(tmp_path / "run"))
    assert res.exit_code == 0, res.output
    flags = sbatch_lines(res.stdout)
    # from tests/launch/data/tiny.yaml: gpus_per_node 0, cpus_per_task 1, time_min 60, name launch-tiny
    assert flags["time"] == "60"
    assert flags["cpus-per-task"] == "1"
    assert flags["job-name"] == "launch-tiny"
    assert flags["nodes"] == "1" and flags["ntasks-per-node"] == "1"
    assert "gpus-per-node" not in flags and "partition" not in flags and "mem" not in flags
    assert flags["signal"] == "USR2@90"  # submitit's preemption warning, what Checkpointable relies on
    assert flags["output"] == f"{tmp_path}/run/slurm/%j/%j_0_log.out"
    # the job runs this interpreter, so a CI venv is the job's venv
    assert f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {tmp_path}/run/slurm/%j" in res.stdout
    assert not (tmp_path / "run").exists(), "a dry run must not create the run directory"


def test_dry_run_flags_override_the_spec(tmp_path):
    res = cli("submit", TINY, "--tiny", "--dry-run", "-o", str(tmp_path / "r"),
              "--partition", "gpu", "--account", "proj1", "--qos", "high", "--time", "1-02:30:00",
              "--nodes", "2", "--gpus-per-node", "4", "--cpus-per-task", "6", "--mem", "64G",
              "--constraint", "a100", "--exclusive", "--sbatch", "mail-type=END", "--sbatch", "comment=x y",
              "--job-name", "big")
    assert res.exit_code == 0, res.output
    f = sbatch_lines(res.stdout)
    assert f["partition"] == "gpu" and f["account"] == "proj1" and f["qos"] == "high"
    assert f["time"] == str(24 * 60 + 2 * 60 + 30)
    assert f["nodes"] == "2"
    assert f["gpus-per-node"] == "4"
    assert f["ntasks-per-node"] == "4", "one process per GPU"
    assert f["cpus-per-task"] == "6" and f["mem"] == "64GB"
    assert f["constraint"] == "a100" and f["exclusive"] == ""
    assert f["mail-type"] == "END" and f["comment"] == "'x y'"
    assert f["job-name"] == "big"


def test_dotted_overrides_reach_the_launcher_and_tasks_per_node_wins(tmp_path):
    res = cli("submit", TINY, "launcher.partition=cpuq", "launcher.tasks_per_node=3", "--tiny", "--dry-run",
              "-o", str(tmp_path / "r"))
    assert res.exit_code == 0, res.output
    f = sbatch_lines(res.stdout)
    assert f["partition"] == "cpuq" and f["ntasks-per-node"] == "3"


def test_dry_run_array(tmp_path):
    res = cli("submit", TINY, "--tiny", "--dry-run", "--array", "3", "-o", str(tmp_path / "r"))
    assert res.exit_code == 0, res.output
    f = sbatch_lines(res.stdout)
    assert f["array"] == "0-2%3"
    assert f["output"].endswith("%A_%a_0_log.out")


def test_dry_run_of_a_spec_without_slurm_block_says_so(tmp_path):
    spec = tmp_path / "local.yaml"
    text = (DATA / "tiny.yaml").read_text().split("launcher:")[0]
    spec.write_text(text.replace("launch_rewards.py", str(DATA / "launch_rewards.py")))
    res = cli("submit", str(spec), "--tiny", "--dry-run", "-o", str(tmp_path / "r"))
    assert res.exit_code == 0, res.output
    assert "no `launcher: {type: slurm}` block" in res.stderr
    assert sbatch_lines(res.stdout)["gpus-per-node"] == "1"  # SlurmLauncher's default


@pytest.mark.parametrize("args, needle", [
    (["--time", "soon"], "cannot read time limit"),
    (["--mem", "lots"], "cannot read memory"),
    (["--nodes", "0"], "nodes"),
    (["--sbatch", "novalue"], "--sbatch takes key=value"),
    (["--cluster", "cloud"], "--cluster must be one of"),
])
def test_bad_flags_exit_2_with_the_reason(tmp_path, args, needle):
    res = cli("submit", TINY, "--tiny", "--dry-run", "-o", str(tmp_path / "r"), *args)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr


def test_the_spec_is_validated_before_anything_is_submitted(tmp_path):
    res = cli("submit", TINY, "train.stpes=3", "--tiny", "-o", str(tmp_path / "r"))
    assert res.exit_code == 2
    assert "Did you mean 'steps'" in res.stderr
    assert not (tmp_path / "r").exists()


def test_refuses_without_sbatch_on_path(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    res = cli("submit", TINY, "--tiny", "-o", str(tmp_path / "r"), path=str(empty))
    assert res.exit_code == 2, res.output
    assert "`sbatch` is not on PATH" in res.stderr
    assert "--cluster local" in res.stderr and "--cluster debug" in res.stderr
    assert not (tmp_path / "r" / "slurm").exists()


def test_dry_run_works_without_sbatch_and_notes_it(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    res = cli("submit", TINY, "--tiny", "--dry-run", "-o", str(tmp_path / "r"), path=str(empty))
    assert res.exit_code == 0, res.output
    assert "sbatch is not on PATH" in res.stderr
    assert res.stdout.startswith("#!/bin/bash")


def test_status_and_cancel_of_a_directory_without_a_job(tmp_path):
    for verb in ("status", "cancel"):
        res = cli(verb, str(tmp_path))
        assert res.exit_code == 2
        assert "no submitted job recorded" in res.stderr


@pytest.mark.parametrize("text, minutes", [("90", 90), ("01:30:00", 90), ("2-00", 2880), ("1-1:1:1", 1502),
                                           ("10:30", 11)])
def test_parse_time(text, minutes):
    assert L.parse_time(text) == minutes


@pytest.mark.parametrize("text, gb", [("64", 64), ("64G", 64), ("64gb", 64), ("1536M", 2), ("1T", 1024)])
def test_parse_mem(text, gb):
    assert L.parse_mem_gb(text) == gb


def test_explain_failure_names_the_error_and_the_place():
    tb = ('Traceback (most recent call last):\n  File "/x/submission.py", line 55, in process_job\n'
          '    result = delayed.result()\n  File "/t/launch_rewards.py", line 12, in explode\n'
          '    raise ValueError("boom")\nValueError: boom\n')
    msg = L.explain_failure(f"Job (task=0) failed during processing with trace:\n{'-' * 20}\n{tb}", "42",
                            Path("/logs/42_0_log.err"), None)
    assert msg.splitlines()[0] == "job 42 failed on the cluster: ValueError: boom"
    assert 'File "/t/launch_rewards.py", line 12, in explode' in msg
    assert "/logs/42_0_log.err" in msg


def test_cluster_debug_runs_here_without_sbatch_and_says_so(tmp_path):
    """No SLURM needed: the same job object runs in this process (submitit's debug executor)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    run = tmp_path / "r"
    res = cli("submit", TINY, "train.steps=2", "sampling.steps=2", "--tiny", "--cluster", "debug", "-o", str(run),
              path=str(empty))
    assert res.exit_code == 0, res.output
    assert "--cluster debug: no SLURM; the job runs inside this process" in res.stderr
    assert "done: job" in res.stdout
    assert (run / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert [e["event"] for e in L.read_events(run)] == ["submitted", "started", "finished"]
    st = cli("status", str(run))
    assert st.exit_code == 0 and "COMPLETED (step 2)" in st.stdout, st.output
    again = cli("submit", TINY, "train.steps=2", "--tiny", "--cluster", "debug", "-o", str(run), path=str(empty))
    assert again.exit_code == 2 and "already holds checkpoints" in again.stderr and "--resume" in again.stderr


def test_global_batch_must_split_over_the_processes(tmp_path):
    res = cli("submit", TINY, "train.batch_size=3", "--tiny", "--tasks-per-node", "2", "--cluster", "debug",
              "-o", str(tmp_path / "r"))
    assert res.exit_code == 2, res.output
    assert "must split evenly over the 2 processes" in res.stderr
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------- sbatch injection
#: a command that leaves a trace, spelled with an absolute path: the script below runs with an empty PATH
PWNED = f"{shutil.which('touch') or '/usr/bin/touch'} PWNED"
#: control characters that end (or corrupt) an `#SBATCH` line
CONTROL = ["\n", "\r", "\x00", "\x1b", "\t", "\x85"]


@pytest.mark.parametrize("flag, value", [
    ("--job-name", "x\n" + PWNED), ("--partition", "gpu\n" + PWNED), ("--account", "a\r\n" + PWNED),
    ("--qos", "high\n" + PWNED), ("--constraint", "a100\n" + PWNED), ("--sbatch", "comment=x\n" + PWNED),
    ("--sbatch", "mail-type\n" + PWNED + "=END"), ("--time", "60\n" + PWNED), ("--mem", "64G\n" + PWNED),
    *[("--job-name", f"x{c}y") for c in CONTROL],
])
def test_control_characters_in_flags_are_refused(tmp_path, flag, value):
    res = cli("submit", TINY, "--tiny", "--dry-run", "-o", str(tmp_path / "r"), flag, value)
    assert res.exit_code == 2, res.output
    assert flag in res.stderr
    assert "would end the '#SBATCH' line" in res.stderr and "Remove it" in res.stderr
    assert "#!/bin/bash" not in res.stdout, "no script is printed"


def test_control_characters_in_the_output_dir_are_refused(tmp_path):
    res = cli("submit", TINY, "--tiny", "--dry-run", "-o", str(tmp_path / f"r\n{PWNED}"))
    assert res.exit_code == 2, res.output
    assert "--output-dir" in res.stderr and "a newline" in res.stderr


@pytest.mark.parametrize("field", ["partition", "account", "qos", "constraint", "job_name"])
def test_control_characters_in_the_spec_launcher_are_refused(tmp_path, field):
    spec = tmp_path / "hostile.yaml"
    text = (DATA / "tiny.yaml").read_text().replace("launch_rewards.py", str(DATA / "launch_rewards.py"))
    spec.write_text(text + f'  {field}: "x\\n{PWNED}"\n')
    res = cli("submit", str(spec), "--tiny", "--dry-run", "-o", str(tmp_path / "r"))
    assert res.exit_code == 2, res.output
    assert f"launcher.{field}" in res.stderr and "control character" in res.stderr and "Remove it" in res.stderr
    assert "#!/bin/bash" not in res.stdout


@pytest.mark.parametrize("additional", ['{comment: "x\\ntouch PWNED"}', '{"mail-type\\ntouch PWNED": END}',
                                        '{"mail type": END}', '{"x;touch PWNED": END}'])
def test_bad_additional_sbatch_parameters_in_the_spec_are_refused(tmp_path, additional):
    spec = tmp_path / "hostile.yaml"
    text = (DATA / "tiny.yaml").read_text().replace("launch_rewards.py", str(DATA / "launch_rewards.py"))
    spec.write_text(text + f"  additional: {additional}\n")
    res = cli("submit", str(spec), "--tiny", "--dry-run", "-o", str(tmp_path / "r"))
    assert res.exit_code == 2, res.output
    assert "launcher.additional" in res.stderr
    assert "#!/bin/bash" not in res.stdout


def test_a_launcher_built_without_validation_still_cannot_reach_the_script(tmp_path):
    """Python callers can build a SlurmLauncher with model_construct (no validation): the script writer checks
    every parameter itself."""
    from rewardtune.errors import UsageError
    from rewardtune.spec.schema import SlurmLauncher

    for bad in (dict(job_name="x\n" + PWNED), dict(partition="p\n" + PWNED),
                dict(additional={"comment": "c\n" + PWNED}), dict(additional={"a\nb": "1"})):
        lau = SlurmLauncher.model_construct(**{**SlurmLauncher().model_dump(), **bad})
        with pytest.raises(UsageError, match="Remove it|not an sbatch option name"):
            L.sbatch_script(lau, "run", tmp_path / "r")
    with pytest.raises(UsageError, match="output directory"):
        L.sbatch_script(SlurmLauncher(), "run", tmp_path / f"r\n{PWNED}")


#: shell metacharacters without control characters: allowed, and quoted so they stay data
HOSTILE = {"--job-name": f"$({PWNED})", "--partition": f"`{PWNED}`", "--account": f"a;{PWNED}",
           "--qos": f"q' ; {PWNED} ; '", "--constraint": f'c" && {PWNED} "#'}


def test_shell_metacharacters_stay_quoted_data_and_the_script_runs_nothing_else(tmp_path):
    run_dir = tmp_path / f"r $({PWNED}) '`x`'"
    args = [a for kv in HOSTILE.items() for a in kv] + ["--sbatch", f"comment=$({PWNED}) ok",
                                                         "--sbatch", f"mail-user=`{PWNED}`"]
    res = cli("submit", TINY, "--tiny", "--dry-run", "-o", str(run_dir), *args)
    assert res.exit_code == 0, res.output
    script = res.stdout
    expected = {k.lstrip("-"): v for k, v in HOSTILE.items()} | {"comment": f"$({PWNED}) ok",
                                                                 "mail-user": f"`{PWNED}`"}
    seen = {}
    commands = []
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            # one shell word per line, which unquotes to exactly the value given
            words = shlex.split(line[len("#SBATCH "):])
            assert len(words) == 1 and words[0].startswith("--"), line
            key, _, value = words[0][2:].partition("=")
            seen[key] = value
        elif line.strip() and not line.startswith("#"):
            commands.append(line)
    for key, value in expected.items():
        assert seen[key] == value, key
    assert seen["output"].startswith(str(run_dir))
    # outside the #SBATCH comments there are exactly submitit's two commands, with the run dir as one quoted word
    assert commands[0] == "export SUBMITIT_EXECUTOR=slurm" and len(commands) == 2
    words = shlex.split(commands[1])
    assert words[0] == "srun" and words[-1] == f"{run_dir}/slurm/%j"
    assert words[-5:-1] == [sys.executable, "-u", "-m", "submitit.core._submit"]
    # and bash, running the script (nothing is on its PATH, so srun is not found), runs nothing the values spelled
    path = tmp_path / "script.sh"
    path.write_text(script)
    empty = tmp_path / "bin"
    empty.mkdir()
    ran = subprocess.run(["/bin/bash", str(path)], cwd=tmp_path, env={"PATH": str(empty)}, capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode == 127 and "srun" in ran.stderr, ran.stderr
    assert not list(tmp_path.rglob("PWNED")), "a value ran as a shell command"
