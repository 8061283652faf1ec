"""What every algorithm script of the library shares about its environments: making them from the command line's
settings, their horizon and generators, the exact reference return where one exists, and the one evaluation
protocol, driven by a policy callback so that every method is evaluated by the very same code.

A policy for :func:`evaluate` and :func:`record_video` is made by ``make_policy(num_envs)`` and has two methods:
``act(obs, t) -> actions`` (a batch of observations at step t of the episode, as numpy arrays) and
``observe(rewards, info)`` (what the step returned, ``info`` batched as a vector env's).
"""

import copy
import json
import os

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def parse_env_settings(env_id: str, env_kwargs: str, flag: str = "--env-kwargs") -> dict:
    """The constructor arguments ``env_kwargs`` (JSON, given as ``flag``) of ``env_id``; ValueError with one line if
    either is wrong."""
    if env_id not in gym.registry:
        known = sorted(name for name in gym.registry if name.startswith("dynamite/"))
        raise ValueError(f"unknown --env-id {env_id!r}; known environments: {', '.join(known)}")
    try:
        kwargs = json.loads(env_kwargs)
    except json.JSONDecodeError as error:
        raise ValueError(f"{flag} is not valid JSON ({error}): {env_kwargs!r}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"{flag} must be a JSON object, got {env_kwargs!r}")
    return kwargs


# the spaces as the networks see them: observations scaled, actions one-hot or as vectors, and back
class ObservationScaling(nn.Module):
    """obs * scale + shift: the finite bounds of the observation space map to [-1, 1]; unbounded dimensions are
    standardised by statistics fitted once, on uniformly random-action episodes before training, and fixed from
    then on, so that the encoder, its buffer and the policy always see one scale (checkpoints carry it)."""

    def __init__(self, space: gym.spaces.Box):
        super().__init__()
        low, high = space.low.astype(np.float64).ravel(), space.high.astype(np.float64).ravel()
        finite = np.isfinite(low) & np.isfinite(high) & (high > low)
        low, high = np.where(finite, low, -1.0), np.where(finite, high, 1.0)  # unbounded dims: identity for now
        self.register_buffer("scale", torch.as_tensor(2.0 / (high - low), dtype=torch.float32))
        self.register_buffer("shift", torch.as_tensor(-(high + low) / (high - low), dtype=torch.float32))
        self.register_buffer("unbounded", torch.as_tensor(~finite))

    def fit(self, observations) -> None:
        """Standardise the unbounded dimensions by the mean and std of ``observations`` (..., obs_dim)."""
        observations = torch.as_tensor(observations, dtype=torch.float32, device=self.scale.device)
        flat = observations.reshape(-1, observations.shape[-1])
        mean, std = flat.mean(0), flat.std(0).clamp(min=1e-3)
        self.scale.copy_(torch.where(self.unbounded, 1.0 / std, self.scale))
        self.shift.copy_(torch.where(self.unbounded, -mean / std, self.shift))

    def forward(self, obs):
        return torch.as_tensor(obs, dtype=torch.float32, device=self.scale.device) * self.scale + self.shift


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches (kept as buffers, so checkpoints carry them)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.tensor(1e-4))

    def update(self, x):
        x = x.reshape(-1, x.shape[-1])
        batch_mean, batch_var, batch_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = batch_mean - self.mean, self.count + batch_count
        merged = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var.copy_(merged / total)
        self.mean.add_(delta * batch_count / total)
        self.count.copy_(total)

    def normalize(self, x):
        return ((x - self.mean) / torch.sqrt(self.var + 1e-8)).clamp(-10.0, 10.0)


def action_features(action, action_space):
    """What the networks read of an action: one-hot for Discrete actions, the vector itself for Box ones."""
    if isinstance(action_space, gym.spaces.Discrete):
        return F.one_hot(action.long(), int(action_space.n)).float()
    return action.float()


def action_size(action_space) -> int:
    return int(action_space.n) if isinstance(action_space, gym.spaces.Discrete) else int(np.prod(action_space.shape))


def env_action(action, action_space) -> np.ndarray:
    """The action as the environment takes it; Gaussian samples are clipped to the action bounds."""
    action = action.cpu().numpy()
    if isinstance(action_space, gym.spaces.Box):
        action = np.clip(action, action_space.low, action_space.high)
    return action



class LockstepVectorEnv(gym.vector.SyncVectorEnv):
    """``SyncVectorEnv`` whose steps without autoreset (the mode of every run here) batch the infos in one pass: the
    sub-environments of a DLCMDP return the same info keys at every step, so each key becomes one array and its
    ``_key`` mask is all True, the layout ``SyncVectorEnv`` builds key by key and environment by environment (its
    merge costs as much as the Python side of a MuJoCo step). Anything else (another mode, infos whose keys
    differ, nested infos) is ``SyncVectorEnv``'s own code."""

    def step(self, actions):
        if self.autoreset_mode != gym.vector.AutoresetMode.DISABLED:
            return super().step(actions)
        if self._autoreset_envs.any():
            ended = np.flatnonzero(self._autoreset_envs)
            raise RuntimeError(f"{len(ended)} of the {self.num_envs} sub-environments (the first: {ended[0]}) have "
                               f"ended their episode: call reset() first")
        infos = []
        for i, (env, action) in enumerate(zip(self.envs, gym.vector.utils.iterate(self.action_space, actions),
                                              strict=True)):
            (self._env_obs[i], self._rewards[i], self._terminations[i], self._truncations[i],
             info) = env.step(action)
            infos.append(info)
        self._observations = gym.vector.utils.concatenate(self.single_observation_space, self._env_obs,
                                                          self._observations)
        self._autoreset_envs = np.logical_or(self._terminations, self._truncations)
        return (copy.deepcopy(self._observations) if self.copy else self._observations, self._rewards.copy(),
                self._terminations.copy(), self._truncations.copy(), self._batch_infos(infos))

    def _batch_infos(self, infos: list[dict]) -> dict:
        keys = infos[0].keys()
        if any(info.keys() != keys for info in infos) or any(isinstance(value, dict) for value in infos[0].values()):
            batched = {}
            for i, info in enumerate(infos):
                batched = self._add_info(batched, info, i)
            return batched
        batched, everywhere = {}, np.ones(self.num_envs, dtype=bool)
        for key in keys:
            values = [info[key] for info in infos]
            first = values[0]
            if type(first) in (int, float, bool) or isinstance(first, np.number):
                batched[key] = np.array(values, dtype=type(first))
            elif isinstance(first, np.ndarray):
                batched[key] = np.stack(values).astype(first.dtype, copy=False)
            else:
                batched[key] = np.empty(self.num_envs, dtype=object)
                batched[key][:] = values
            batched[f"_{key}"] = everywhere.copy()
        return batched


def make_vector_env(env_id: str, num_envs: int, env_kwargs: dict) -> gym.vector.VectorEnv:
    """Lock-step environments without autoreset: every iteration resets them and plays whole episodes. A setting
    the environment rejects is a ValueError naming it. ``"observe_latent": true`` among the settings appends the
    true latent of the current session to every observation (:class:`LatentInObservation`, for oracles)."""
    env_kwargs = dict(env_kwargs)
    observe_latent = bool(env_kwargs.pop("observe_latent", False))
    try:
        if gym.spec(env_id).vector_entry_point is not None:
            envs = gym.make_vec(env_id, num_envs=num_envs, autoreset_mode="Disabled", **env_kwargs)
        else:
            envs = LockstepVectorEnv([lambda: gym.make(env_id, **env_kwargs)] * num_envs,
                                     autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot make {env_id} with --env-kwargs {json.dumps(env_kwargs)}: {error}") from None
    return LatentInObservation(envs) if observe_latent else envs


def current_latents(vector_env) -> np.ndarray:
    """(num_envs, latent size): the latent of each environment's current session, as floats (the Gridworld's: the
    index of the paying goal), which the next reward depends on."""
    base = vector_env.unwrapped
    latents = base.latents if hasattr(base, "latents") else base.get_attr("latent")
    return np.asarray(latents, dtype=np.float32).reshape(base.num_envs, -1)


class LatentInObservation(gym.vector.VectorWrapper):
    """The true latent of each environment's current session appended to its observation: what an oracle sees."""

    def __init__(self, env: gym.vector.VectorEnv):
        super().__init__(env)
        env.reset(seed=0)
        size = current_latents(env).shape[1]
        space = env.single_observation_space
        low = np.concatenate([space.low, np.full(size, -np.inf)]).astype(space.dtype)
        high = np.concatenate([space.high, np.full(size, np.inf)]).astype(space.dtype)
        self.single_observation_space = gym.spaces.Box(low, high, dtype=space.dtype)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, env.num_envs)

    def _with_latent(self, obs):
        obs = np.asarray(obs)
        return np.concatenate([obs, current_latents(self.env).astype(obs.dtype)], -1)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._with_latent(obs), info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        return self._with_latent(obs), reward, terminated, truncated, info


def horizon(env) -> int:
    """The episode length H of an environment, or of a batch of them (the same in all)."""
    base = env.unwrapped
    base = base.envs[0].unwrapped if hasattr(base, "envs") else base
    return base.config.horizon if hasattr(base, "config") else base.horizon


def _generators(vector_env) -> list:
    base = vector_env.unwrapped
    if hasattr(base, "_rngs"):  # the batched Gridworld
        return base._rngs
    return [env.unwrapped.np_random for env in base.envs]


def generator_states(vector_env) -> list[dict]:
    """The states of the environments' random generators, as plain data (a checkpoint saves them)."""
    return [rng.bit_generator.state for rng in _generators(vector_env)]


def set_generator_states(vector_env, states: list[dict]) -> None:
    """Restore what :func:`generator_states` returned (after a reset, which creates the generators)."""
    for rng, state in zip(_generators(vector_env), states, strict=True):
        rng.bit_generator.state = state


def latent_changes_dynamics(env_id: str) -> bool:
    """Whether the environment class says that its transition dynamics (not only its reward) depend on the latent."""
    creator = gym.envs.registration.load_env_creator(gym.spec(env_id).entry_point)
    return bool(getattr(creator, "latent_changes_dynamics", False))


def bayes_optimal_return(env_id: str, env_kwargs: dict) -> float | None:
    """The exact Bayes-optimal return where the library has it (Gridworld with a fixed schedule), else None; a
    reference that would not fit in memory is skipped with a line saying why, not waited for."""
    env_kwargs = {k: v for k, v in env_kwargs.items() if k != "observe_latent"}  # the task is the same
    if env_id != "dynamite/Gridworld-v0" or env_kwargs.get("schedule", "fixed") != "fixed":
        return None
    from envs.gridworld_reference import cached_solution

    try:
        return cached_solution(env_kwargs, "bayes").total
    except ValueError as error:
        print(f"no Bayes-optimal reference: {error}")
        return None


def random_episode(vector_env, episode_horizon: int) -> list[tuple]:
    """One episode of uniformly random actions (numpy's global generator) in every environment, as a list of
    (obs, actions, rewards, next obs, session ends) per step."""
    space = vector_env.single_action_space
    next_obs, _ = vector_env.reset()
    steps = []
    for _ in range(episode_horizon):
        if isinstance(space, gym.spaces.Discrete):
            action = np.random.randint(space.n, size=vector_env.num_envs)
        else:
            action = np.random.uniform(space.low, space.high, size=(vector_env.num_envs, *space.shape)).astype(space.dtype)
        obs = next_obs
        next_obs, reward, _, _, info = vector_env.step(action)
        steps.append((obs, action, reward, next_obs, info["session_done"]))
    return steps


class SessionDetection:
    """How a method's detected session ends compare with the true ones, counted step by step: at step t, whether
    the transition before it ended a session (``info["session_done"]`` of step t - 1). Precision and recall are at
    the exact step; the delay is the mean number of steps by which an end is found late, over the ends found before
    the next one (0 for those found at the exact step); NaN where there is nothing to divide by."""

    def __init__(self):
        self.hits, self.fired, self.ends, self.found, self.delays = 0, 0, 0, 0, 0
        self.waiting = None  # per environment: steps since a true end not found yet, or -1

    def add(self, detected, true_end) -> None:
        detected, true_end = np.asarray(torch.as_tensor(detected).cpu()), np.asarray(torch.as_tensor(true_end).cpu())
        self.hits += int((detected & true_end).sum())
        self.fired, self.ends = self.fired + int(detected.sum()), self.ends + int(true_end.sum())
        if self.waiting is None:
            self.waiting = np.full(len(true_end), -1)
        late = (self.waiting >= 0) & detected & ~true_end  # an earlier end, found now
        self.found, self.delays = self.found + int(late.sum()), self.delays + int(self.waiting[late].sum())
        self.waiting[late] = -1
        self.found += int((true_end & detected).sum())
        self.waiting[true_end & ~detected] = 0  # (an end still waiting when the next comes is never found)
        self.waiting[true_end & detected] = -1
        self.waiting[self.waiting >= 0] += 1

    def rates(self) -> dict:
        return {"precision": self.hits / self.fired if self.fired else float("nan"),
                "recall": self.hits / self.ends if self.ends else float("nan"),
                "delay": self.delays / self.found if self.found else float("nan")}


def evaluate(env_id: str, env_kwargs: dict, make_policy, num_episodes: int, consecutive: int = 1,
             seed: int = 0, episode_returns: bool = False) -> dict:
    """Greedy returns: mean and per session over ``num_episodes`` episodes, then ``consecutive`` episodes back to
    back in the same task (goals kept, the latent's dynamics and whatever the policy carries go on); with
    ``episode_returns`` also the return of each of the first episodes (for box plots); for a policy that detects
    session ends and counts them in a :class:`SessionDetection` ``detections``, their precision and recall over the
    first episodes (those of the returns) and, with ``consecutive`` > 1, over each of the consecutive episodes."""
    eval_envs = make_vector_env(env_id, num_episodes, env_kwargs)
    episode_horizon = horizon(eval_envs)
    policy = make_policy(num_episodes)
    obs, _ = eval_envs.reset(seed=seed)
    consecutive_returns, consecutive_detection = [], []
    for episode in range(consecutive):
        if episode > 0:
            obs, _ = eval_envs.reset(options={"keep_task": True})
            if hasattr(policy, "detections"):  # counted afresh in each episode
                policy.detections = SessionDetection()
        total = np.zeros(num_episodes)
        session_returns = np.zeros((num_episodes, episode_horizon))
        num_sessions = 0
        for t in range(episode_horizon):
            obs, reward, _, _, info = eval_envs.step(policy.act(obs, t))
            total += reward
            if episode == 0:  # (a kept task's session index runs on past H in the consecutive episodes)
                session_returns[np.arange(num_episodes), info["session"]] += reward
                num_sessions = max(num_sessions, int(info["session"].max()) + 1)
            policy.observe(reward, info)
        consecutive_returns.append(float(total.mean()))
        if hasattr(policy, "detections"):
            consecutive_detection.append(policy.detections.rates())
        if episode == 0:
            first_return, per_session = total, session_returns[:, :num_sessions].mean(0).tolist()
            detection = policy.detections.rates() if hasattr(policy, "detections") else None  # of these episodes
    eval_envs.close()
    return {
        "return": float(first_return.mean()),
        "return_std": float(first_return.std()),
        "return_per_session": per_session,
        "consecutive_episode_returns": consecutive_returns,
        "episodes": num_episodes,
        **({"episode_returns": first_return.tolist()} if episode_returns else {}),
        **({"session_detection": detection} if detection is not None else {}),
        **({"consecutive_session_detection": consecutive_detection} if consecutive > 1 and consecutive_detection
           else {}),
    }


def record_video(env_id: str, env_kwargs: dict, make_policy, folder: str, seed: int = 0) -> None:
    """One greedy episode, rendered to an mp4 in ``folder`` (the rendering shows the latent: the paying goal, the
    Reacher's target)."""
    os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo renders headless
    env_kwargs = dict(env_kwargs)
    observe_latent = env_kwargs.pop("observe_latent", False)
    env = gym.wrappers.RecordVideo(gym.make(env_id, render_mode="rgb_array", **env_kwargs), folder,
                                   episode_trigger=lambda episode: True, name_prefix="eval")
    seen = lambda obs: np.concatenate([obs, np.atleast_1d(np.float32(env.unwrapped.latent)).ravel()]) \
        if observe_latent else obs  # noqa: E731  (as LatentInObservation shows it)
    policy = make_policy(1)
    obs, _ = env.reset(seed=seed)
    for t in range(horizon(env)):
        obs, reward, _, _, info = env.step(policy.act(seen(obs)[None], t)[0])
        policy.observe(np.array([reward]), {key: np.array([value]) for key, value in info.items()})
    env.close()
