"""What every algorithm script shares: the same helpers (each file has its own copy, so each copy is tested),
and the same command-line behaviour: evaluations and logs, determinism, Ctrl-C and resume, the two phases, video, and
rollout beliefs that are the ones the VAE trains on (--track: test_benchmarks.py, where a comparison tracks every
script)."""

import json
import os
import signal
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

import contrabar
import dynamite_rl
import envs.protocol
import envs.runs
import rl2
import varibad
from conftest import FINISHED, PHASE_FLAG, SCRIPTS, TINY, VAE_SCRIPTS, discrete_args, run_script

MODULES = {"dynamite_rl.py": dynamite_rl, "varibad.py": varibad, "rl2.py": rl2, "contrabar.py": contrabar}
# an episode pair of H = 6 steps with session ends marked
SESSION_DONE = torch.tensor([[0, 0], [0, 1], [1, 0], [0, 0], [0, 1], [1, 1]], dtype=torch.bool)


@pytest.fixture(params=SCRIPTS)
def script(request):
    return request.param


@pytest.fixture(params=VAE_SCRIPTS)
def vae_script(request):
    return request.param


@pytest.fixture(params=list(PHASE_FLAG))
def encoder_script(request):
    return request.param


@pytest.fixture(params=SCRIPTS)
def algo(request):
    return MODULES[request.param]


@pytest.fixture(params=VAE_SCRIPTS)
def vae_algo(request):
    return MODULES[request.param]


def test_gaussian_kl_matches_torch_distributions(vae_algo):
    gen = torch.Generator().manual_seed(0)
    mq, lq, mp, lp = (torch.randn(7, 3, 5, generator=gen) for _ in range(4))
    expected = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp())).sum(-1)
    torch.testing.assert_close(vae_algo.gaussian_kl(mq, lq, mp, lp), expected)
    assert torch.all(vae_algo.gaussian_kl(mq, lq, mq, lq).abs() < 1e-6)


def test_gae_with_termination_and_truncation_matches_hand_computation(algo):
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0], [0.0], [2.0], [1.0]])
    values = torch.tensor([[0.5], [1.0], [0.2], [0.3]])
    # step 1 ends an episode by truncation (bootstrap 0.7); step 3 by termination (bootstrap 0)
    next_values = torch.tensor([[1.0], [0.7], [0.3], [0.0]])
    ends = torch.tensor([[False], [True], [False], [True]])
    advantages, returns = algo.compute_gae(rewards, values, next_values, ends, gamma, lam)
    d = [r + gamma * n - v for r, n, v in zip(rewards[:, 0], next_values[:, 0], values[:, 0])]
    expected = [d[0] + gamma * lam * d[1], d[1], d[2] + gamma * lam * d[3], d[3]]
    torch.testing.assert_close(advantages[:, 0], torch.stack(expected))
    torch.testing.assert_close(returns, advantages + values)


def test_observation_scaling_maps_bounds_to_unit_interval_and_standardises_the_rest(algo):
    import gymnasium as gym

    low, high = np.array([0.0, -2.0, -np.inf], np.float32), np.array([4.0, 2.0, np.inf], np.float32)
    scaling = algo.ObservationScaling(gym.spaces.Box(low=low, high=high, dtype=np.float32))
    obs = torch.tensor([[0.0, -2.0, 7.0], [4.0, 2.0, -3.0], [2.0, 0.0, 0.0]])
    torch.testing.assert_close(scaling(obs), torch.tensor([[-1.0, -1.0, 7.0], [1.0, 1.0, -3.0], [0.0, 0.0, 0.0]]))
    samples = torch.randn(1000, 3) * torch.tensor([1.0, 1.0, 5.0]) + torch.tensor([2.0, 0.0, 3.0])
    scaling.fit(samples)  # only the unbounded dimension is standardised
    fitted = scaling(samples)
    torch.testing.assert_close(fitted[:, 2].mean(), torch.tensor(0.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(fitted[:, 2].std(), torch.tensor(1.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(scaling(obs)[:, :2], torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))


def test_policy_input_carries_the_elapsed_fraction_of_the_episode(vae_algo):
    obs, mean, logvar = torch.zeros(3, 6), torch.ones(3, 5), -torch.ones(3, 5)
    agent = vae_algo.Agent(6, gym.spaces.Discrete(5), discrete_args(vae_algo))
    with_time = vae_algo.policy_input(agent, obs, 15, 60, mean, logvar, discrete_args(vae_algo))
    assert with_time.shape == (3, 17) and (with_time[:, 6] == 0.25).all()
    assert vae_algo.policy_input(agent, obs, 15, 60, mean, logvar, discrete_args(vae_algo, time_feature=False)).shape == (3, 16)


def test_running_statistics_equal_those_of_all_batches_together(vae_algo):
    torch.manual_seed(0)
    rms = vae_algo.RunningMeanStd(3)
    batches = [torch.randn(7, 4, 3) * 5 + 2, torch.randn(2, 9, 3) - 1, torch.randn(30, 1, 3) * 0.1]
    for batch in batches:
        rms.update(batch)
    everything = torch.cat([b.reshape(-1, 3) for b in batches])
    torch.testing.assert_close(rms.mean, everything.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rms.var, everything.var(0, unbiased=False), atol=1e-3, rtol=1e-4)
    normalized = rms.normalize(everything)
    torch.testing.assert_close(normalized.mean(0), torch.zeros(3), atol=1e-3, rtol=0)


def test_the_policy_sees_the_belief_standardised_by_the_running_statistics(vae_algo):
    args = discrete_args(vae_algo)
    agent = vae_algo.Agent(6, gym.spaces.Discrete(5), args)
    beliefs = torch.randn(60, 8, 10) * 3 + 4
    agent.belief_rms.update(beliefs)
    obs = torch.zeros(60 * 8, 6)
    inputs = vae_algo.policy_input(agent, obs, 0, 60, beliefs.reshape(-1, 10)[:, :5], beliefs.reshape(-1, 10)[:, 5:], args)
    torch.testing.assert_close(inputs[:, 7:].mean(0), torch.zeros(10), atol=1e-3, rtol=0)
    torch.testing.assert_close(inputs[:, 7:].std(0), torch.ones(10), atol=1e-2, rtol=0)
    raw = vae_algo.policy_input(agent, obs, 0, 60, beliefs.reshape(-1, 10)[:, :5], beliefs.reshape(-1, 10)[:, 5:],
                          discrete_args(vae_algo, norm_belief=False))
    torch.testing.assert_close(raw[:, 7:], beliefs.reshape(-1, 10))


def test_episode_buffer_keeps_the_last_episodes_and_samples_time_major(vae_algo):
    buffer = vae_algo.EpisodeBuffer(capacity=5, horizon=3, obs_dim=2, action_dim=4, device="cpu")
    for start in (0, 3):  # 3 episodes, then 3 more: the oldest is overwritten
        ids = torch.arange(start, start + 3, dtype=torch.float32)
        states = (10 * ids[None, :, None] + torch.arange(4.0)[:, None, None]).expand(4, 3, 2)  # s_0..s_3
        buffer.add(states[:-1], torch.zeros(3, 3, 4), ids[None].expand(3, 3), states[1:],
                   torch.zeros(3, 3, dtype=torch.bool))
    assert buffer.size == 5 and buffer.position == 1
    assert sorted(buffer.fields["rewards"][:, 0].tolist()) == [1, 2, 3, 4, 5]
    assert buffer.fields["obs"].shape == (5, 4, 2)  # the H + 1 observations of an episode, once
    obs, actions, rewards, next_obs, session_done = buffer.sample(7)
    assert obs.shape == next_obs.shape == (3, 7, 2) and actions.shape == (3, 7, 4) and session_done.shape == (3, 7)
    assert set(rewards[0].tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0} and (rewards == rewards[0]).all()
    torch.testing.assert_close(obs[:, :, 0] % 10, torch.arange(3.0)[:, None].expand(3, 7))  # s_t
    torch.testing.assert_close(next_obs - obs, torch.ones(3, 7, 2))  # s_{t+1}, the last one too
    restored = vae_algo.EpisodeBuffer(capacity=5, horizon=3, obs_dim=2, action_dim=4, device="cpu")
    restored.load_state_dict(buffer.state_dict())
    assert all(torch.equal(restored.fields[k], buffer.fields[k]) for k in buffer.fields)
    with pytest.raises(ValueError, match="next observation must be the next step's observation"):
        buffer.add(states[:-1], torch.zeros(3, 3, 4), torch.zeros(3, 3), states[:-1], torch.zeros(3, 3, dtype=torch.bool))


def test_decoding_the_mean_ignores_the_belief_variance(vae_algo):
    torch.manual_seed(0)
    args = discrete_args(vae_algo, latent_dim=3)
    decoder = vae_algo.Decoder(4, 5, args)
    obs, actions = torch.randn(6, 2, 4), torch.nn.functional.one_hot(torch.randint(5, (6, 2)), 5).float()
    rewards, means = torch.randn(6, 2), torch.randn(6, 2, 3)
    mask, steps = torch.ones(6, 6, 2, dtype=torch.bool), torch.arange(6)

    def loss(logvars, sample):
        return vae_algo.reconstruction_loss(decoder, means, logvars, obs, actions, rewards, obs, SESSION_DONE, mask, steps, sample)

    small, large = torch.full((6, 2, 3), -20.0), torch.full((6, 2, 3), 4.0)
    torch.testing.assert_close(loss(small, False), loss(large, False))
    torch.testing.assert_close(loss(small, True), loss(small, False), atol=1e-4, rtol=0)
    assert loss(large, True) != loss(large, False)


def test_the_reward_decoder_reads_the_state_the_transition_lands_in(vae_algo):
    torch.manual_seed(0)
    latent, obs, next_obs = torch.randn(4, 3), torch.randn(4, 6), torch.randn(4, 6)
    action = torch.nn.functional.one_hot(torch.arange(4), 5).float()
    decoder = vae_algo.Decoder(6, 5, discrete_args(vae_algo, latent_dim=3))
    reward, state = decoder(latent, obs, action, next_obs)
    assert state is None
    torch.testing.assert_close(decoder(latent, torch.randn(4, 6), action.flip(0), next_obs)[0], reward)
    assert not torch.allclose(decoder(latent, obs, action, torch.randn(4, 6))[0], reward)
    full = vae_algo.Decoder(6, 5, discrete_args(vae_algo, latent_dim=3, state_decoder=True))
    reward, state = full(latent, obs, action, next_obs)
    assert state.shape == (4, 6) and torch.equal(full(latent, obs, action.flip(0), next_obs)[0], reward)
    assert not torch.allclose(full(latent, obs, action.flip(0), next_obs)[1], state)  # s_{t+1} from (s_t, a_t, m)


@pytest.mark.parametrize("env_id, expected", [
    ("dynamite/Gridworld-v0", {"ent_coef": 0.01, "encoder_updates": 8, "encoder_train_steps": 4_000_000, "latent_dim": 5}),
    ("dynamite/HalfCheetahVel-v0", {"ent_coef": 0.05, "encoder_updates": 2, "encoder_train_steps": 0, "latent_dim": 16}),
    ("dynamite/ScratchItch-v0", {"ent_coef": 0.01, "encoder_updates": 2, "encoder_train_steps": 0, "latent_dim": 16}),
])
def test_unset_settings_take_their_environment_family_value_and_given_ones_stay(algo, env_id, expected):
    envs_ = envs.protocol.make_vector_env(env_id, 1, {})
    args = algo.Args(env_id=env_id)
    envs.runs.fill_family_defaults(args, envs_)
    for name, value in expected.items():
        if hasattr(args, name):
            assert getattr(args, name) == value, name
    given = algo.Args(env_id=env_id, ent_coef=0.3)
    envs.runs.fill_family_defaults(given, envs_)
    assert given.ent_coef == 0.3
    envs_.close()


# what a run writes, on runs trained once and shared: tests that train are slow
def final_weights(run_dir) -> dict[str, torch.Tensor]:
    modules = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["modules"]
    return {f"{m}.{k}": v for m, weights in modules.items() for k, v in weights.items()}


def evaluations(run_dir) -> list[dict]:
    return json.load(open(os.path.join(run_dir, "eval.json")))["evaluations"]


def assert_same_run(run_dir, expected_dir):
    """The same weights at the end and the same evaluations, each once, as ``expected_dir``."""
    keys = ("iteration", "global_step", "return", "return_std", "return_per_session", "consecutive_episode_returns")
    assert [[e[k] for k in keys] for e in evaluations(run_dir)] == \
        [[e[k] for k in keys] for e in evaluations(expected_dir)]
    weights, expected = final_weights(run_dir), final_weights(expected_dir)
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_a_finished_run_writes_its_evaluations_and_tensorboard_log(script, finished_run):
    run_dir = finished_run(script)
    result = json.load(open(os.path.join(run_dir, "eval.json")))
    assert result["finished"] and [e["global_step"] for e in result["evaluations"]] == [480, 960]
    final = result["evaluations"][-1]
    assert len(final["return_per_session"]) == 4 and final["episodes"] == 16
    assert len(final["consecutive_episode_returns"]) == 5  # the final evaluation: 5 episodes in a row, the others 1
    assert len(result["evaluations"][0]["consecutive_episode_returns"]) == 1
    assert final["fraction_of_bayes_optimal"] == pytest.approx(final["return"] / 47.370, abs=1e-4)
    assert result["bayes_optimal_return"] == pytest.approx(47.370, abs=1e-3)
    assert len(final["episode_returns"]) == 16 and "episode_returns" not in result["evaluations"][0]
    assert np.mean(final["episode_returns"]) == pytest.approx(final["return"])
    assert 100 < final["peak_memory_mib"] < 4096  # the process's peak resident set (torch alone is ~300 MiB)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir))


@pytest.mark.slow
def test_same_seed_gives_identical_runs_and_another_seed_does_not(script, finished_run, tmp_path):
    again = run_script(script, *TINY[script], *FINISHED, cwd=tmp_path / "again")
    other = run_script(script, *TINY[script], *FINISHED, "--seed", "2", cwd=tmp_path / "other")
    assert_same_run(again, finished_run(script))
    weights, other_weights = final_weights(finished_run(script)), final_weights(other)
    assert not all(torch.equal(weights[k], other_weights[k]) for k in weights)
    assert [e["return"] for e in evaluations(other)] != [e["return"] for e in evaluations(again)]


class InterruptAfter:
    """sys.stdout that presses Ctrl-C (sends this process a SIGINT) as soon as it has written a line starting
    with ``line``: the signal reaches the script's handler at a known point of the run."""

    def __init__(self, stream, line: str):
        self.stream, self.line, self.sent = stream, line, False

    def write(self, text):
        written = self.stream.write(text)
        if not self.sent and text.startswith(self.line):
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return written

    def __getattr__(self, name):
        return getattr(self.stream, name)


@pytest.mark.slow
def test_ctrl_c_saves_after_the_iteration_and_resume_ends_where_an_uninterrupted_run_ends(script, finished_run,
                                                                                         tmp_path, monkeypatch):
    stdout = sys.stdout
    monkeypatch.setattr(sys, "stdout", InterruptAfter(stdout, "iter 1/"))
    with pytest.raises(SystemExit) as stopped:
        run_script(script, *TINY[script], *FINISHED, cwd=tmp_path)
    monkeypatch.setattr(sys, "stdout", stdout)
    assert stopped.value.code == 130  # the exit status of a run stopped by Ctrl-C
    checkpoint_path = next((tmp_path / "runs").glob("*/checkpoint.pt"))
    assert torch.load(checkpoint_path, weights_only=True)["iteration"] == 1
    assert_same_run(run_script(script, "--resume", str(checkpoint_path), cwd=tmp_path), finished_run(script))


@pytest.mark.slow
def test_the_policy_phase_freezes_the_encoder_and_starts_a_fresh_policy(encoder_script, tmp_path):
    common = [*TINY[encoder_script], "--save-model", "--eval-every", "1"]
    encoder_only = run_script(encoder_script, *common, "--total-timesteps", "480", cwd=tmp_path / "a")
    both = run_script(encoder_script, *common, "--total-timesteps", "960", PHASE_FLAG[encoder_script], "480",
                      "--policy-num-envs", "4", cwd=tmp_path / "b")
    assert [e["global_step"] for e in evaluations(both)] == [480, 720, 960]  # 1 iteration of 8 episodes, 2 of 4
    before, after = torch.load(os.path.join(encoder_only, "checkpoint.pt"), weights_only=True), \
        torch.load(os.path.join(both, "checkpoint.pt"), weights_only=True)
    for name in after["modules"]:
        if name != "agent":  # the encoder (and decoder, prior, predictor) did not move in the policy phase
            assert all(torch.equal(v, before["modules"][name][k]) for k, v in after["modules"][name].items())
    moved = [k for k, v in after["modules"]["agent"].items() if not torch.equal(v, before["modules"]["agent"][k])]
    assert moved, "the policy did not train in the policy phase"
    if "belief_rms.count" in after["modules"]["agent"]:  # statistics of the policy phase's beliefs only
        assert after["modules"]["agent"]["belief_rms.count"].item() == pytest.approx(2 * 4 * 60, abs=1e-3)


@pytest.mark.slow
def test_capture_video_writes_an_evaluation_episode(script, finished_run):
    folder = os.path.join(finished_run(script), "videos")
    videos = [f for f in os.listdir(folder) if f.endswith(".mp4")]
    assert len(videos) == 1 and os.path.getsize(os.path.join(folder, videos[0])) > 1000


@pytest.mark.slow
def test_the_training_rollout_beliefs_are_the_teacher_forced_beliefs_of_its_episodes(vae_script, tmp_path):
    """With the encoder frozen and, for DynaMITE-RL, the true session ends, the beliefs of the rollout (the running
    statistics of what the policy read of them, updated once by the one iteration) are those encode_episodes gives on
    the episodes that the rollout put in the buffer."""
    algo = MODULES[vae_script]
    flags = ["--total-timesteps", "480", "--encoder-updates", "0", "--save-model"]
    flags += ["--oracle-sessions"] if vae_script == "dynamite_rl.py" else []
    checkpoint = torch.load(os.path.join(run_script(vae_script, *TINY[vae_script], *flags, cwd=tmp_path),
                                         "checkpoint.pt"), weights_only=True)
    args = algo.Args(**checkpoint["args"])
    encoder = algo.Encoder(6, 5, args)
    encoder.load_state_dict(checkpoint["modules"]["encoder"])
    episodes = {k: v.transpose(0, 1) for k, v in checkpoint["buffer"]["fields"].items()}  # (H, 8 episodes, ...)
    assert episodes["obs"].shape[:2] == (61, 8) and episodes["session_done"].sum() == 8 * 4  # s_0..s_H of each
    inputs = (episodes["obs"][:-1], episodes["actions"], episodes["rewards"])
    with torch.no_grad():
        if vae_script == "dynamite_rl.py":
            means, logvars = algo.encode_episodes(encoder, *inputs, episodes["session_done"], args, "cpu")[:2]
        else:
            means, logvars = algo.encode_episodes(encoder, *inputs, args, "cpu")
    expected = algo.RunningMeanStd(2 * algo.belief_size(args))
    expected.update(algo.policy_belief(means, logvars, args))
    rms = {k.split(".")[1]: v for k, v in checkpoint["modules"]["agent"].items() if k.startswith("belief_rms.")}
    torch.testing.assert_close(rms["count"], expected.count)
    torch.testing.assert_close(rms["mean"], expected.mean)
    torch.testing.assert_close(rms["var"], expected.var)
