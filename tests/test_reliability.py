"""Faults and bad input, in every script: checkpoints are data and carry a header, --resume continues the run it
names (also after a SIGKILL), non-finite values stop a run, and every bad setting gets one line before anything is
written."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import envs.gridworld
import envs.runs
from conftest import PHASE_FLAG, ROOT, SCRIPTS, TINY, run_script


@pytest.fixture(params=SCRIPTS)
def script(request):
    return request.param


def fails(script: str, *args: str, cwd) -> str:
    """The one-line error with which ``python <script> <args>`` stops (in this process)."""
    with pytest.raises(SystemExit) as stopped:
        run_script(script, *args, cwd=cwd)
    message = str(stopped.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def folder_state(folder) -> dict:
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}


@pytest.fixture
def checkpoint(finished_run, script) -> str:
    """The checkpoint of a finished 2-iteration run of the script, evaluated and saved after every iteration."""
    return os.path.join(finished_run(script), "checkpoint.pt")


# bad settings: one line naming the flag, its value and what is allowed, the same words in every script
BAD_SETTINGS = [
    (["--gamma", "1.5"], "error: --gamma 1.5 is out of range: it must be in (0, 1]"),
    (["--gamma", "0"], "error: --gamma 0.0 is out of range: it must be in (0, 1]"),
    (["--gae-lambda", "-0.1"], "error: --gae-lambda -0.1 is out of range: it must be in [0, 1]"),
    (["--learning-rate", "-0.001"], "error: --learning-rate -0.001 is out of range: it must be > 0"),
    (["--learning-rate", "nan"], "error: --learning-rate nan is out of range: it must be > 0"),
    (["--learning-rate", "inf"], "error: --learning-rate inf is out of range: it must be > 0"),
    (["--clip-coef", "0"], "error: --clip-coef 0.0 is out of range: it must be > 0"),
    (["--max-grad-norm", "-1"], "error: --max-grad-norm -1.0 is out of range: it must be > 0"),
    (["--vf-coef", "-0.5"], "error: --vf-coef -0.5 is out of range: it must be >= 0"),
    (["--num-envs", "0"], "error: --num-envs 0 is out of range: it must be an integer >= 1"),
    (["--num-minibatches", "0"], "error: --num-minibatches 0 is out of range: it must be an integer >= 1"),
    (["--total-timesteps", "-5"], "error: --total-timesteps -5 is out of range: it must be an integer >= 1"),
    (["--update-epochs", "0"], "error: --update-epochs 0 is out of range: it must be an integer >= 1"),
    (["--gru-hidden", "0"], "error: --gru-hidden 0 is out of range: it must be an integer >= 1"),
    (["--eval-episodes", "0"], "error: --eval-episodes 0 is out of range: it must be an integer >= 1"),
    (["--eval-every", "-1"], "error: --eval-every -1 is out of range: it must be an integer >= 0"),
    (["--log-every", "0"], "error: --log-every 0 is out of range: it must be an integer >= 1"),
    (["--num-envs", "10", "--num-minibatches", "4"], "--num-envs 10 must be divisible by --num-minibatches 4"),
    (["--env-id", "dynamite/Nope-v0"], "unknown --env-id 'dynamite/Nope-v0'; known environments: dynamite/Gridworld-v0"),
    (["--env-kwargs", "{size: 3}"], "--env-kwargs is not valid JSON"),
    (["--env-kwargs", '{"num_goals": 30}'], "num_goals must be at most"),
    (["--resume", "missing.pt"], "no such checkpoint"),
]
# the settings of one algorithm only
OWN_BAD_SETTINGS = {
    "dynamite_rl.py": [(["--consistency-weight", "-1"], "error: --consistency-weight -1.0 is out of range: it must be >= 0"),
                       (["--encoder-learning-rate", "0"], "error: --encoder-learning-rate 0.0 is out of range: it must be > 0"),
                       (["--decode-beliefs", "0"], "error: --decode-beliefs 0 is out of range: it must be an integer >= 1"),
                       (["--head-delay", "-1"], "error: --head-delay -1 is out of range: it must be an integer >= 0")],
    "varibad.py": [(["--kl-weight", "-0.1"], "error: --kl-weight -0.1 is out of range: it must be >= 0"),
                   (["--encoder-updates", "-1"], "error: --encoder-updates -1 is out of range: it must be an integer >= 0")],
    "contrabar.py": [(["--encoder-train-steps", "-1"], "error: --encoder-train-steps -1 is out of range: it must be an integer >= 0"),
                     (["--cpc-steps", "0"], "error: --cpc-steps 0 is out of range: it must be an integer >= 1")],
    "rl2.py": [(["--embed-dim", "0"], "error: --embed-dim 0 is out of range: it must be an integer >= 1")],
}


@pytest.mark.parametrize("args,message", BAD_SETTINGS)
def test_a_bad_setting_stops_with_one_line_before_anything_is_written(script, args, message, tmp_path):
    assert message in fails(script, *args, cwd=tmp_path)
    assert not (tmp_path / "runs").exists()


def test_an_algorithm_s_own_bad_settings_stop_with_one_line(script, tmp_path):
    for args, message in OWN_BAD_SETTINGS[script]:
        assert message in fails(script, *args, cwd=tmp_path)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_no_traceback_reaches_the_user(tmp_path):
    """As a user sees it, in every script (started at once): exit status 1, one line on stderr, no run folder."""
    processes = {script: subprocess.Popen([sys.executable, os.path.join(ROOT, script), "--gamma", "1.5"], cwd=tmp_path,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for script in SCRIPTS}
    for script, process in processes.items():
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 1, script
        assert stderr.strip() == "error: --gamma 1.5 is out of range: it must be in (0, 1]", script
    assert not (tmp_path / "runs").exists()


# checkpoints
@pytest.mark.slow
def test_a_checkpoint_loads_as_data_only_with_its_header(checkpoint, script):
    saved = torch.load(checkpoint, weights_only=True)  # tensors and plain data: no code runs
    assert saved["header"] == {"script": script, "format": 1, "env_id": "dynamite/Gridworld-v0"}
    assert saved["iteration"] == 2 and saved["global_step"] == 960
    assert [e["iteration"] for e in saved["evaluations"]] == [1, 2]  # what eval.json holds, too
    written = json.load(open(os.path.join(os.path.dirname(checkpoint), "eval.json")))["evaluations"]
    assert [e["return"] for e in saved["evaluations"]] == [e["return"] for e in written]


class RunsCode:
    """Unpickling this calls os.mkdir(path): what a crafted checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def write_bad_checkpoint(kind: str, folder) -> str:
    path = os.path.join(folder, "checkpoint.pt")
    if kind == "empty":
        open(path, "wb").close()
    elif kind == "truncated":  # the first half of a file in the checkpoint format
        torch.save({"header": {"script": "dynamite_rl.py", "format": 1, "env_id": "dynamite/Gridworld-v0"},
                    "modules": {"agent": {"weight": torch.randn(256, 256)}}}, path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif kind == "text":
        open(path, "w").write("not a checkpoint\n")
    elif kind == "code":
        torch.save({"header": RunsCode(os.path.join(folder, "code_ran"))}, path)
    elif kind == "no header":
        torch.save({"modules": {}}, path)
    return path


@pytest.mark.parametrize("kind,message", [
    ("empty", "the file is empty"),
    ("truncated", "is truncated or not a checkpoint"),
    ("text", "is truncated or not a checkpoint"),
    ("code", "holds objects other than tensors and plain data"),
    ("no header", "is not of this library's checkpoint format 1"),
])
def test_a_file_that_is_not_a_checkpoint_stops_with_one_line_and_writes_nothing(script, kind, message, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    path = write_bad_checkpoint(kind, folder)
    before = folder_state(folder)
    error = fails(script, "--resume", path, cwd=tmp_path)
    assert message in error and repr(path) in error
    assert folder_state(folder) == before and not (tmp_path / "runs").exists()  # no events file, no code run


def copy_of(checkpoint_path: str, folder, edit=None) -> str:
    """A copy of a checkpoint in ``folder``, edited by ``edit(checkpoint)``."""
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    if edit is not None:
        edit(checkpoint)
    os.makedirs(folder, exist_ok=True)
    torch.save(checkpoint, os.path.join(folder, "checkpoint.pt"))
    return os.path.join(folder, "checkpoint.pt")


@pytest.mark.slow
def test_a_checkpoint_of_another_script_names_both(finished_run, script, tmp_path):
    other = SCRIPTS[(SCRIPTS.index(script) + 1) % len(SCRIPTS)]
    path = copy_of(os.path.join(finished_run(other), "checkpoint.pt"), tmp_path / "other")
    before = folder_state(tmp_path / "other")
    error = fails(script, "--resume", path, cwd=tmp_path)
    assert f"is one of {other} on dynamite/Gridworld-v0, not of {script}" in error
    assert folder_state(tmp_path / "other") == before


@pytest.mark.slow
def test_another_environment_or_setting_given_with_resume_is_refused(checkpoint, script, tmp_path):
    path = copy_of(checkpoint, tmp_path / "run")
    before = folder_state(tmp_path / "run")
    error = fails(script, "--resume", path, "--env-id", "dynamite/Reacher-v0", cwd=tmp_path)
    assert "is a run on dynamite/Gridworld-v0, not on --env-id dynamite/Reacher-v0" in error
    error = fails(script, "--resume", path, "--gamma", "0.9", "--total-timesteps", "1920", cwd=tmp_path)
    assert error.startswith("error: --gamma cannot change on --resume") and "--total-timesteps" in error
    assert "--seed cannot change on --resume" in fails(script, "--resume", path, "--seed", "2", cwd=tmp_path)
    assert "--norm-adv cannot change on --resume" in fails(script, "--resume", path, "--no-norm-adv", cwd=tmp_path)
    assert folder_state(tmp_path / "run") == before
    older = copy_of(checkpoint, tmp_path / "older", lambda saved: saved["args"].pop("gamma"))  # a setting it lacked
    assert "written by an older version of the script, which had no --gamma" in fails(script, "--resume", older,
                                                                                      cwd=tmp_path)


@pytest.mark.slow
def test_a_missing_or_misshapen_module_is_an_error_not_a_random_network(checkpoint, script, tmp_path):
    def drop_scaling(saved):
        del saved["modules"]["obs_scaling"]

    def widen(saved):
        weights = saved["modules"]["agent"]
        name = next(k for k in weights if k.endswith("weight"))
        weights[name] = torch.zeros(weights[name].shape[0] + 1, *weights[name].shape[1:])

    path = copy_of(checkpoint, tmp_path / "a", drop_scaling)
    assert "has no 'obs_scaling' module" in fails(script, "--resume", path, "--total-timesteps", "1920", cwd=tmp_path)
    path = copy_of(checkpoint, tmp_path / "b", widen)
    assert "its 'agent' does not fit this run" in fails(script, "--resume", path, "--total-timesteps", "1920",
                                                        cwd=tmp_path)
    assert not (tmp_path / "runs").exists() and sorted(os.listdir(tmp_path / "a")) == ["checkpoint.pt"]


@pytest.mark.slow
def test_resume_takes_the_settings_of_the_checkpoint_and_extends_only_what_it_is_told(checkpoint, script, tmp_path):
    path = copy_of(checkpoint, tmp_path / "run")
    assert "the run has finished its 2 iterations" in fails(script, "--resume", path, cwd=tmp_path)
    run_script(script, "--resume", path, "--total-timesteps", "1440", cwd=tmp_path)
    result = json.load(open(tmp_path / "run" / "eval.json"))
    started = torch.load(checkpoint, weights_only=True)["args"]
    changed = {k: v for k, v in result["args"].items() if started[k] != v}
    assert changed == {"total_timesteps": 1440, "resume": path}
    assert [e["iteration"] for e in result["evaluations"]] == [1, 2, 3]  # eval_every 1 kept, not the default 25


@pytest.mark.slow
def test_a_checkpoint_resumes_on_the_device_it_is_loaded_to(checkpoint, script):
    loaded = envs.runs.load_checkpoint(checkpoint, torch.device("meta"), script)  # as a GPU's would on the CPU
    assert loaded["modules"]["agent"][next(iter(loaded["modules"]["agent"]))].device.type == "meta"


# non-finite values
@pytest.mark.slow
def test_an_enormous_reward_stops_the_run_at_a_named_term(script, tmp_path):
    error = fails(script, *TINY[script], "--env-kwargs", '{"step_reward": 1e20}', cwd=tmp_path)
    assert "is not finite at iteration 1: the run stops" in error


@pytest.mark.slow
def test_a_reward_that_is_not_finite_stops_the_run_and_keeps_the_last_good_checkpoint(script, tmp_path, monkeypatch):
    """The training environments start paying inf in the third iteration; the checkpoint of the second stays."""
    step, calls = envs.gridworld.GridworldVectorEnv.step, []

    def step_paying_inf_late(self, actions):
        obs, reward, terminated, truncated, info = step(self, actions)
        if self.num_envs == 8:  # the training environments (evaluation uses 16)
            calls.append(1)
            if len(calls) > 2 * 60 + 10:
                reward = np.full_like(reward, np.inf)
        return obs, reward, terminated, truncated, info

    monkeypatch.setattr(envs.gridworld.GridworldVectorEnv, "step", step_paying_inf_late)
    error = fails(script, *TINY[script], "--total-timesteps", "2400", "--save-model", "--eval-every", "1",
                  cwd=tmp_path)
    assert error.startswith("error: the reward is not finite at iteration 3")
    checkpoint = torch.load(next((tmp_path / "runs").glob("*/checkpoint.pt")), weights_only=True)
    assert checkpoint["iteration"] == 2
    assert all(torch.isfinite(v).all() for m in checkpoint["modules"].values() for v in m.values())


def test_environments_refuse_rewards_that_float32_cannot_hold(script, tmp_path):
    error = fails(script, "--env-kwargs", '{"goal_reward": 1e308}', cwd=tmp_path)
    assert "goal_reward" in error and not (tmp_path / "runs").exists()


# a kill -9 at any moment
def losses(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every ``losses/`` series of a run's TensorBoard log, as TensorBoard reads it (orphans of a kill purged)."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
            if tag.startswith("losses/")}


# 6 iterations of 4 environments, evaluated and saved every 2; for the scripts with an encoder phase, 3 iterations
# train the encoder, then 3 a fresh policy
def kill_args(script: str) -> list[str]:
    args = [*TINY[script], "--num-envs", "4", "--save-model", "--eval-every", "2", "--total-timesteps", str(60 * 4 * 6)]
    return [*args, PHASE_FLAG[script], str(60 * 4 * 3), "--policy-num-envs", "4"] if script in PHASE_FLAG else args


# ``python -c KILLED_AT <script> <line> <args>``: runs the script, which SIGKILLs itself as it prints a line starting
# with <line>: a kill -9 at a known point of the run, with no chance to clean up
KILLED_AT = """
import os, runpy, signal, sys

script, line, *args = sys.argv[1:]


class KillOnLine:
    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        if text.startswith(line):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


sys.stdout, sys.argv = KillOnLine(sys.stdout), [script, *args]
runpy.run_path(script, run_name="__main__")
"""


# where a kill -9 lands, and the checkpoint the run then resumes from
KILL_POINTS = {
    "iter 5/": 4,  # between two iterations; resumed in the policy phase where the script has one
    "eval  iter 4:": 2,  # eval.json has evaluation 4, its checkpoint is not written yet; resumed across the phases
}


@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_to_the_uninterrupted_result(script, tmp_path):
    """Both kills run at once, one process each; then the uninterrupted run, and each killed run resumed to its end:
    the same evaluations (each once), TensorBoard losses and weights."""
    folders = {line: tmp_path / f"killed_{i}" for i, line in enumerate(KILL_POINTS)}
    processes = {}
    for line, folder in folders.items():
        folder.mkdir()
        processes[line] = subprocess.Popen([sys.executable, "-c", KILLED_AT, os.path.join(ROOT, script), line,
                                            *kill_args(script)], cwd=folder, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True)
    outputs = {line: process.communicate(timeout=300)[0] for line, process in processes.items()}
    straight = run_script(script, *kill_args(script), cwd=tmp_path / "straight")

    keys = ("iteration", "global_step", "return", "return_std", "return_per_session", "consecutive_episode_returns")
    expected = json.load(open(os.path.join(straight, "eval.json")))["evaluations"]
    expected_weights = torch.load(os.path.join(straight, "checkpoint.pt"), weights_only=True)["modules"]
    for line, folder in folders.items():
        assert processes[line].returncode == -signal.SIGKILL, outputs[line]
        checkpoint_path = next((folder / "runs").glob("*/checkpoint.pt"))
        assert torch.load(checkpoint_path, weights_only=True)["iteration"] == KILL_POINTS[line], line
        resumed = run_script(script, "--resume", str(checkpoint_path), cwd=folder)
        got = json.load(open(os.path.join(resumed, "eval.json")))
        assert got["finished"] and [[e[k] for k in keys] for e in got["evaluations"]] == \
            [[e[k] for k in keys] for e in expected], line  # each evaluation once, as uninterrupted
        assert losses(resumed) == losses(straight), line
        weights = torch.load(os.path.join(resumed, "checkpoint.pt"), weights_only=True)["modules"]
        assert all(torch.equal(v, expected_weights[m][k]) for m in weights for k, v in weights[m].items()), line
