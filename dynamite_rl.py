# DynaMITE-RL: Liang et al., "DynaMITE-RL: A Dynamic Model for Improved Temporal Meta-Reinforcement Learning",
# NeurIPS 2024. VariBAD's recurrent posterior plus three changes for latent contexts that move between sessions:
#   1. consistency: within a session the KL to the session's final belief may only shrink  (--consistency)
#   2. latent belief conditioning: the posterior sees the previous session's final belief, and a
#      learned latent-dynamics prior p(m' | m) is the KL target at a session's start    (--conditioning)
#   3. session reconstruction: a belief decodes only the transitions of its own session (--session-recon)
# Run `python dynamite_rl.py --help` for every flag; `python dynamite_rl.py --no-consistency` is an ablation.
import dataclasses
import json
import math
import os
import random
import resource
import signal
import time
from dataclasses import asdict, dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import tyro
from torch.distributions.categorical import Categorical
from torch.distributions.normal import Normal
from torch.utils.tensorboard import SummaryWriter

import envs.protocol  # registers the dynamite/ environments with gymnasium; the evaluation protocol


@dataclass
class Args:
    # Experiment
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda is used when it is available"""
    num_threads: int = 1
    """torch CPU threads (one per run lets two seeds share a 2-core machine)"""
    track: bool = False
    """if toggled, the run is tracked with Weights and Biases (WANDB_MODE=offline works)"""
    wandb_project_name: str = "dynamite-rl"
    """the wandb project; every algorithm of this library logs to the same one"""
    wandb_entity: str | None = None
    """the entity (team) of the wandb project"""
    wandb_group: str | None = None
    """the wandb group, e.g. one per comparison"""
    capture_video: bool = False
    """if toggled, records a video of one evaluation episode into the run folder"""
    save_model: bool = False
    """write a checkpoint at every evaluation, at the end and on Ctrl-C"""
    resume: str | None = None
    """path of a checkpoint to continue from (its run folder is reused)"""
    run_dir: str | None = None
    """folder of the run (default: runs/<env>__<exp_name>__<seed>__<time>)"""
    eval_every: int = 25
    """evaluate every this many iterations (and at the end); 0 evaluates only at the end"""
    eval_episodes: int | None = None
    """episodes per evaluation (default: 2000 discrete, 25 continuous)"""
    log_every: int = 10
    """print a progress line every this many iterations"""

    # Environment
    env_id: str = "dynamite/Gridworld-v0"
    """the id of the environment"""
    env_kwargs: str = "{}"
    """constructor arguments of the environment as JSON, e.g. '{"size": 7, "num_goals": 3}'"""
    eval_env_kwargs: str = "{}"
    """what evaluation changes of them, e.g. '{"task_set": "test"}'"""
    total_timesteps: int = 6_000_000
    """total environment steps of the experiment, both phases"""
    num_envs: int = 64
    """number of environments stepped in lock-step; each iteration collects one whole episode of each"""
    encoder_train_steps: int | None = None
    """encoder phase steps (0: one joint phase; default 4 M discrete, 0 cont.)"""
    policy_num_envs: int = 256
    """environments per iteration in the policy phase: larger PPO batches there"""

    # Algorithm: PPO on the belief-augmented state
    learning_rate: float = 1e-3
    """learning rate of the policy and critic optimizer"""
    anneal_lr: bool = True
    """anneal the policy learning rate linearly to 10% of its value"""
    gamma: float = 0.99
    """the discount factor"""
    gae_lambda: float = 0.95
    """the lambda of generalized advantage estimation"""
    num_minibatches: int = 4
    """the number of PPO minibatches (the batch is split by environment)"""
    update_epochs: int = 4
    """the number of PPO epochs per iteration"""
    norm_adv: bool = True
    """normalize advantages per minibatch"""
    clip_coef: float = 0.2
    """the PPO clipping coefficient"""
    clip_vloss: bool = False
    """clip the value loss as the PPO paper's implementation does"""
    ent_coef: float | None = None
    """entropy bonus, annealed to 0 (default: 0.01 discrete, 0.05 continuous)"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """the maximum gradient norm, applied to the actor, the critic and the VAE separately"""
    policy_hidden: int = 128
    """width of the two hidden layers of the actor and of the critic"""
    norm_reward: bool | None = None
    """scale PPO's rewards by the return's running std (default: continuous only)"""
    norm_belief: bool = True
    """standardise the belief (mean, logvar) the actor and critic see by running statistics"""
    time_feature: bool = True
    """give the actor and critic the elapsed fraction t/H of the episode"""

    # Algorithm: the variational posterior (VAE)
    latent: Literal["gaussian", "dirichlet", "dirichlet-gaussian"] = "gaussian"
    """the latent's kind"""
    latent_dim: int | None = None
    """size of the Gaussian (part of the) latent (default: 5 discrete, 16 continuous)"""
    dirichlet_groups: int = 2
    """number of Dirichlet variables of a Dirichlet latent"""
    dirichlet_classes: int = 4
    """classes of each Dirichlet variable"""
    dirichlet_alpha: float = 0.2
    """concentration of the symmetric Dirichlet prior of each variable"""
    embed_dim: int | None = None
    """size of the state, action and reward embeddings (default: 16 discrete, 32 cont.)"""
    encoder_hidden: int = 64
    """width of the two layers between the embeddings and the GRU"""
    gru_hidden: int = 128
    """size of the GRU hidden state"""
    decoder_hidden: int = 64
    """width of the two hidden layers of the decoders"""
    encoder_learning_rate: float = 1e-3
    """learning rate of the VAE optimizer"""
    encoder_updates: int | None = None
    """VAE steps per iteration (default: 8 discrete, 2 continuous; 0 freezes it)"""
    encoder_batch_episodes: int = 64
    """episodes per VAE gradient step, drawn from the buffer"""
    encoder_buffer_episodes: int = 10000
    """the VAE trains on the last this many episodes"""
    kl_weight: float = 0.1
    """weight of the KL term of the ELBO"""
    consistency_weight: float = 0.5
    """beta: weight of the consistency loss"""
    termination_weight: float = 1.0
    """weight of the session-termination cross-entropy"""
    decode_beliefs: int = 15
    """beliefs per episode decoded at each VAE step (sampled; all if >= H)"""
    decode_mean: bool = True
    """decode the belief's mean instead of a sample of it"""
    state_decoder: bool | None = None
    """also reconstruct next states (default: where the latent changes the dynamics)"""

    # Ablations: the three DynaMITE-RL components and the session-termination source
    consistency: bool = True
    """the within-session consistency loss"""
    conditioning: bool = True
    """condition on the previous session's belief, with a latent-dynamics prior"""
    session_recon: bool = True
    """reconstruct only the current session (off: the whole trajectory, as VariBAD)"""
    oracle_sessions: bool = False
    """at rollout time use the true session terminations instead of the termination head"""
    session_encoder: bool = False
    """reset the GRU at each session end: the previous belief is the only memory (README)"""


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
        flat = observations.reshape(-1, observations.shape[-1])
        mean, std = flat.mean(0), flat.std(0).clamp(min=1e-3)
        self.scale.copy_(torch.where(self.unbounded, 1.0 / std, self.scale))
        self.shift.copy_(torch.where(self.unbounded, -mean / std, self.shift))

    def forward(self, obs):
        return torch.as_tensor(obs, dtype=torch.float32, device=self.scale.device) * self.scale + self.shift


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


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def mlp(in_dim: int, hidden: int, out_dim: int, out_std: float = np.sqrt(2)) -> nn.Sequential:
    return nn.Sequential(
        layer_init(nn.Linear(in_dim, hidden)), nn.ReLU(),
        layer_init(nn.Linear(hidden, hidden)), nn.ReLU(),
        layer_init(nn.Linear(hidden, out_dim), std=out_std),
    )


# ALGO LOGIC: networks
class Encoder(nn.Module):
    """q(m | tau_{:t}, previous session's belief): embeddings -> 2 FC -> GRU -> Gaussian belief + termination."""

    def __init__(self, obs_dim: int, action_dim: int, args: Args):
        super().__init__()
        self.state_embed = nn.Sequential(nn.Linear(obs_dim, args.embed_dim), nn.ReLU())
        self.action_embed = nn.Sequential(nn.Linear(action_dim, args.embed_dim), nn.ReLU())
        self.reward_embed = nn.Sequential(nn.Linear(1, args.embed_dim), nn.ReLU())
        belief_input = 2 * belief_size(args) if args.conditioning else 0
        self.fc = nn.Sequential(
            nn.Linear(3 * args.embed_dim + belief_input, args.encoder_hidden), nn.ReLU(),
            nn.Linear(args.encoder_hidden, args.encoder_hidden), nn.ReLU(),
        )
        self.gru = nn.GRU(args.encoder_hidden, args.gru_hidden)
        self.belief_mean = nn.Linear(args.gru_hidden, belief_size(args))
        self.belief_logvar = nn.Linear(args.gru_hidden, belief_size(args))
        self.termination = mlp(args.gru_hidden + 3 * args.embed_dim, args.decoder_hidden, 1, out_std=1.0)
        self.conditioning = args.conditioning

    def embed(self, prev_actions, rewards, obs):
        return torch.cat([self.action_embed(prev_actions), self.reward_embed(rewards), self.state_embed(obs)], -1)

    def forward(self, hidden, prev_actions, rewards, obs, prev_session_beliefs):
        """Steps (T, B, ...) from the GRU state ``hidden`` (B, gru_hidden) in one fused GRU call: inputs (a_{t-1}, r_t,
        s_t); returns the last GRU state, every step's GRU state and each step's belief (mean, logvar)."""
        parts = [self.embed(prev_actions, rewards, obs)]
        if self.conditioning:
            parts.append(prev_session_beliefs)
        hiddens, hidden = self.gru(self.fc(torch.cat(parts, -1)), hidden[None])
        return hidden[0], hiddens, self.belief_mean(hiddens), self.belief_logvar(hiddens)

    def termination_logit(self, hidden_before, prev_actions, rewards, obs):
        """After the fact (the paper's Algorithm 3): did the transition into s_t end a session? Read from the GRU state
        before step t and the step's input (a_{t-1}, r_t, s_t), e.g. the start cell the agent jumped to."""
        return self.termination(torch.cat([hidden_before, self.embed(prev_actions, rewards, obs)], -1)).squeeze(-1)

    def prior(self, batch: int):
        """The belief at the GRU's initial state, (mean, logvar) of shape (batch, D): the first KL target, as VariBAD's."""
        hidden = torch.zeros(batch, self.gru.hidden_size, device=self.belief_mean.weight.device)
        return self.belief_mean(hidden), self.belief_logvar(hidden)


class LatentDynamicsPrior(nn.Module):
    """p(m' | m): the previous session's final belief (mean, logvar) -> Gaussian over the next latent."""

    def __init__(self, args: Args):
        super().__init__()
        self.net = mlp(2 * belief_size(args), args.decoder_hidden, 2 * belief_size(args), out_std=0.01)

    def forward(self, prev_session_belief):
        mean, logvar = self.net(prev_session_belief).chunk(2, -1)
        return mean, logvar


class Decoder(nn.Module):
    """p(r_{t+1} | s_{t+1}, m) and optionally p(s_{t+1} | s_t, a_t, m), Gaussian with unit variance (MSE). The reward
    decoder reads the state the transition lands in, as VariBAD's code does (README)."""

    def __init__(self, obs_dim: int, action_dim: int, args: Args):
        super().__init__()
        self.state_embed = nn.Sequential(nn.Linear(obs_dim, args.embed_dim), nn.ReLU())
        self.action_embed = nn.Sequential(nn.Linear(action_dim, args.embed_dim), nn.ReLU())
        self.reward = mlp(args.embed_dim + belief_size(args), args.decoder_hidden, 1, out_std=1.0)
        self.next_state = (mlp(2 * args.embed_dim + belief_size(args), args.decoder_hidden, obs_dim, out_std=1.0)
                           if args.state_decoder else None)

    def forward(self, latent, obs, action, next_obs):
        """Predicted reward (and next state) of each transition (N, dim) under its latent (N, latent_dim)."""
        reward = self.reward(torch.cat([self.state_embed(next_obs), latent], -1)).squeeze(-1)
        if self.next_state is None:
            return reward, None
        return reward, self.next_state(torch.cat([self.state_embed(obs), self.action_embed(action), latent], -1))


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


class Agent(nn.Module):
    """Actor and critic on (s, belief mean, belief logvar); the belief is detached from the encoder."""

    def __init__(self, obs_dim: int, action_space, args: Args):
        super().__init__()
        in_dim = obs_dim + 2 * belief_size(args) + int(args.time_feature)
        self.belief_rms = RunningMeanStd(2 * belief_size(args))
        if args.norm_reward:
            self.return_rms = RunningMeanStd(1)
        self.critic = mlp(in_dim, args.policy_hidden, 1, out_std=1.0)
        self.actor = mlp(in_dim, args.policy_hidden, action_size(action_space), out_std=0.01)
        self.continuous = isinstance(action_space, gym.spaces.Box)
        if self.continuous:
            self.actor_logstd = nn.Parameter(torch.zeros(action_size(action_space)))

    def get_value(self, x):
        return self.critic(x).squeeze(-1)
    def get_action_and_value(self, x, action=None, deterministic=False):
        """Categorical over Discrete actions, a diagonal Gaussian (state-independent std) over Box ones."""
        if self.continuous:
            mean = self.actor(x)
            probs = Normal(mean, self.actor_logstd.expand_as(mean).exp())
            if action is None:
                action = mean if deterministic else probs.sample()
            return action, probs.log_prob(action).sum(-1), probs.entropy().sum(-1), self.get_value(x)
        logits = self.actor(x)
        probs = Categorical(logits=logits)
        if action is None:
            action = logits.argmax(-1) if deterministic else probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.get_value(x)


def policy_input(agent: Agent, obs, step: int, horizon: int, mean, logvar, args: Args):
    """(s, [t/H], belief mean, belief logvar): the belief-augmented state the actor and critic see; with
    --norm-belief the belief is standardised by the running statistics of the beliefs seen in rollouts."""
    belief = policy_belief(mean, logvar, args)
    parts = [obs, agent.belief_rms.normalize(belief) if args.norm_belief else belief]
    if args.time_feature:
        parts.insert(1, torch.full_like(obs[:, :1], step / horizon))
    return torch.cat(parts, -1)


# ALGO LOGIC: the latent: one Gaussian, or Dirichlet groups approximated by logit-normals (Ren, Garg & Anandkumar),
# or both. The belief is always a diagonal Gaussian (mean, logvar) over belief_size(args) coordinates, the logits of
# the Dirichlet groups first; every KL is the Gaussian KL in these coordinates
def belief_size(args: Args) -> int:
    dirichlet = args.dirichlet_groups * args.dirichlet_classes if args.latent != "gaussian" else 0
    return dirichlet + (args.latent_dim if args.latent != "dirichlet" else 0)


def latent_prior(args: Args, device=None):
    """(mean, logvar) of the prior: N(0, I) on Gaussian coordinates and, on each Dirichlet group's logits, the
    Laplace approximation of Dir(alpha) in the softmax basis: mean_k = log a_k - mean_i log a_i,
    var_k = (1 / a_k)(1 - 2 / K) + (1 / K^2) sum_i 1 / a_i."""
    mean, logvar = torch.zeros(belief_size(args), device=device), torch.zeros(belief_size(args), device=device)
    if args.latent != "gaussian":
        k, n = args.dirichlet_classes, args.dirichlet_groups * args.dirichlet_classes
        alpha = torch.full((k,), float(args.dirichlet_alpha), device=device)
        mean[:n] = (alpha.log() - alpha.log().mean()).repeat(args.dirichlet_groups)
        logvar[:n] = ((1 / alpha) * (1 - 2 / k) + (1 / alpha).sum() / k**2).log().repeat(args.dirichlet_groups)
    return mean, logvar


def to_latent(coordinates, args: Args):
    """Belief coordinates -> the latent m the decoder reads: each Dirichlet group's logits through a softmax (a point
    of its simplex), the Gaussian coordinates as they are."""
    if args.latent == "gaussian":
        return coordinates
    n = args.dirichlet_groups * args.dirichlet_classes
    simplex = coordinates[..., :n].unflatten(-1, (args.dirichlet_groups, args.dirichlet_classes)).softmax(-1)
    return torch.cat([simplex.flatten(-2), coordinates[..., n:]], -1)


def policy_belief(mean, logvar, args: Args):
    """What the actor and critic read of a belief: its mean as a latent (the Dirichlet means softmax(mean)) and
    its log-variances."""
    return torch.cat([to_latent(mean, args), logvar], -1)


# ALGO LOGIC: the objective, one function per term
def gaussian_kl(mean_q, logvar_q, mean_p, logvar_p):
    """KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))) of diagonal Gaussians, summed over the last dim."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mean_q - mean_p) ** 2) / logvar_p.exp() - 1).sum(-1)


def session_index(session_done):
    """(H, B) index of the session each step belongs to; session_done[t] marks the last step of a session."""
    return torch.cumsum(session_done.long(), 0) - session_done.long()


def reconstruction_mask(session_done, session_recon: bool):
    """(H beliefs, H targets, B): which transitions the belief at each step reconstructs."""
    sessions = session_index(session_done)
    if not session_recon:
        return torch.ones(sessions.shape[0], *sessions.shape, dtype=torch.bool, device=sessions.device)
    return sessions[:, None, :] == sessions[None, :, :]


def session_final_index(session_done):
    """(H, B) the step at which each step's session ends (its final belief)."""
    horizon = session_done.shape[0]
    steps = torch.arange(horizon, device=session_done.device)[:, None].expand_as(session_done)
    ends = torch.where(session_done.bool(), steps, torch.full_like(steps, horizon - 1))
    return torch.flip(torch.cummin(torch.flip(ends, [0]), 0).values, [0])


def kl_loss(means, logvars, session_done, prior, base, dynamics_prior=None):
    """Mean over the prior and the H beliefs of KL(q_t || target_t), as VariBAD's: the prior at the GRU's initial
    state (``prior``, (B, D) twice) against the latent's prior ``base`` ((D,) twice), then each belief against the one
    before it, except that where a later session starts the target is ``dynamics_prior`` ((H, B, D) twice, the
    latent-dynamics prior of --conditioning) when given."""
    all_means, all_logvars = torch.cat([prior[0][None], means]), torch.cat([prior[1][None], logvars])
    target_means, target_logvars = all_means[:-1], all_logvars[:-1]
    if dynamics_prior is not None:
        later_start = torch.zeros_like(session_done, dtype=torch.bool)
        later_start[1:] = session_done[:-1].bool()
        target_means = torch.where(later_start[..., None], dynamics_prior[0], target_means)
        target_logvars = torch.where(later_start[..., None], dynamics_prior[1], target_logvars)
    target_means = torch.cat([base[0].expand_as(prior[0])[None], target_means])
    target_logvars = torch.cat([base[1].expand_as(prior[1])[None], target_logvars])
    return gaussian_kl(all_means, all_logvars, target_means, target_logvars).mean()


def consistency_loss(means, logvars, session_done):
    """Mean over consecutive same-session steps of max(delta_{t+1} - delta_t, 0),
    delta_t = KL(q_t || stopgrad(q_final of t's session))."""
    final = session_final_index(session_done)
    final_mean = torch.gather(means, 0, final[..., None].expand_as(means)).detach()
    final_logvar = torch.gather(logvars, 0, final[..., None].expand_as(logvars)).detach()
    delta = gaussian_kl(means, logvars, final_mean, final_logvar)
    same_session = ~session_done[:-1].bool()
    increase = F.relu(delta[1:] - delta[:-1])
    return (increase * same_session).sum() / same_session.sum().clamp(min=1)


def termination_loss(termination_logits, session_done):
    """Binary cross-entropy of the termination head at steps 1..H-1 against the true ends of the transitions before
    them, session_done[0..H-2] (step 0 follows no transition)."""
    return F.binary_cross_entropy_with_logits(termination_logits[1:], session_done[:-1].float())


def reconstruction_loss(decoder, means, logvars, obs, actions, rewards, next_obs, session_done, mask, belief_steps,
                        sample: bool = True, args: Args | None = None):
    """Negative log-likelihood (unit-variance Gaussian: squared error) of the transitions in ``mask``, summed over
    each belief's targets and averaged over beliefs and episodes, for the beliefs at ``belief_steps``; each belief
    decodes a reparameterised sample m ~ q_t (its mean with ``sample=False``). Summing over targets follows the
    ELBO: averaging would shrink the few informative transitions (a goal reached) against the KL and let the
    posterior collapse."""
    mean, logvar = means[belief_steps], logvars[belief_steps]  # (K, B, D)
    latent = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
    latent = to_latent(latent, args) if args is not None else latent  # (args: the latent's kind)
    # a session's last transition is followed by the next session's start state, not by where the move landed:
    # neither its next state nor (for a decoder reading s_{t+1}) its reward can be decoded, so it is left out.
    # Only the (belief, target) pairs that count are decoded: with --session-recon a quarter of them
    belief, step, env = (mask[belief_steps] & ~session_done.bool()[None]).nonzero(as_tuple=True)  # (K, H, B) pairs
    predicted_reward, predicted_state = decoder(latent[belief, env], obs[step, env], actions[step, env], next_obs[step, env])
    num_beliefs = len(belief_steps) * rewards.shape[1]
    loss = ((predicted_reward - rewards[step, env]) ** 2).sum() / num_beliefs
    if predicted_state is not None:
        loss = loss + ((predicted_state - next_obs[step, env]) ** 2).sum() / num_beliefs
    return loss


def compute_gae(rewards, values, next_values, episode_ends, gamma: float, gae_lambda: float):
    """Advantages and returns, (H, B). ``next_values[t]`` bootstraps step t (0 after a termination, V(final
    obs) after a truncation that is not the task's end); ``episode_ends[t]`` stops the recursion after t."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        last = delta + gamma * gae_lambda * (1 - episode_ends[t].float()) * last
        advantages[t] = last
    return advantages, advantages + values


def scale_rewards(agent, rewards, gamma: float):
    """Rewards (H, B) divided by the running std of the discounted return, the scale PPO learns best on; the
    statistics (in the agent, so checkpoints carry them) are updated with this batch's returns first."""
    discounted, running = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0]):
        running = running * gamma + rewards[t]
        discounted[t] = running
    agent.return_rms.update(discounted[..., None])
    return rewards / torch.sqrt(agent.return_rms.var + 1e-8)


# ALGO LOGIC: encoding a batch of episodes step by step, shared by rollouts, training and evaluation
class BeliefState:
    """What the encoder carries from step to step: GRU state, last action, reward and belief, and the previous
    session's belief. A session end is found after the fact, at the first step of the next session."""

    def __init__(self, num_envs: int, action_dim: int, args: Args, device):
        self.hidden = torch.zeros(num_envs, args.gru_hidden, device=device)
        self.prev_action = torch.zeros(num_envs, action_dim, device=device)
        self.reward = torch.zeros(num_envs, 1, device=device)
        self.belief = torch.zeros(num_envs, 2 * belief_size(args), device=device)
        self.prev_session_belief = torch.zeros(num_envs, 2 * belief_size(args), device=device)
        self.session_encoder, self.started = args.session_encoder, False

    def encode(self, encoder: Encoder, obs, session_end=None):
        """One step for every environment: first the termination head says whether the transition into ``obs`` ended a
        session (``session_end``, if given, says it instead: the true ends); then the belief after ``obs``. Returns
        (mean, logvar, termination logit, session end)."""
        logit = encoder.termination_logit(self.hidden, self.prev_action, self.reward, obs)
        ended = (logit > 0 if session_end is None else session_end.bool()) & self.started
        self.end_sessions(ended, self.belief)
        self.hidden, _, mean, logvar = encoder(self.hidden, self.prev_action[None], self.reward[None], obs[None],
                                               self.prev_session_belief[None])
        return mean[0], logvar[0], logit, ended

    def end_sessions(self, ended, belief):
        """Where a session ended, ``belief`` (its last) becomes the one the next session conditions on; with
        --session-encoder the GRU starts again from zero."""
        self.prev_session_belief = torch.where(ended[:, None], belief.detach(), self.prev_session_belief)
        if self.session_encoder:
            self.hidden = torch.where(ended[:, None], torch.zeros_like(self.hidden), self.hidden)

    def observe(self, action_onehot, reward, mean, logvar):
        self.prev_action, self.reward = action_onehot, reward[:, None]
        self.belief, self.started = torch.cat([mean, logvar], -1).detach(), True


def encode_episodes(encoder, obs, actions_onehot, rewards, session_done, args, device):
    """Teacher-forced pass over whole episodes (H, B, ...): the true session ends drive the conditioning (and the
    resets of --session-encoder). The same beliefs as BeliefState step by step, computed by one fused GRU call per
    stretch of steps in which no episode's session changes (the whole episode if nothing depends on it). Returns the
    beliefs (mean, logvar), the termination logits (step t: did the transition before it end a session) and the
    previous session's belief each step read."""
    horizon, num_envs = rewards.shape
    state = BeliefState(num_envs, actions_onehot.shape[-1], args, device)
    prev_actions = torch.cat([state.prev_action[None], actions_onehot[:-1]])
    prev_rewards = torch.cat([state.reward[None], rewards[:-1, :, None]])
    changes = session_done[:-1].any(1) if args.conditioning or args.session_encoder else \
        torch.zeros(horizon - 1, dtype=torch.bool, device=device)
    stops = [*(changes.nonzero()[:, 0] + 1).tolist(), horizon]
    hiddens, means, logvars, prev_session_beliefs, start = [], [], [], [], 0
    for stop in stops:
        prev_session_beliefs.append(state.prev_session_belief.expand(stop - start, -1, -1))
        state.hidden, hidden, mean, logvar = encoder(state.hidden, prev_actions[start:stop], prev_rewards[start:stop],
                                                     obs[start:stop], prev_session_beliefs[-1])
        state.end_sessions(session_done[stop - 1].bool(), torch.cat([mean[-1], logvar[-1]], -1))
        hiddens.append(hidden), means.append(mean), logvars.append(logvar)
        start = stop
    hiddens = torch.cat(hiddens)  # the GRU state after each step, before any reset
    logits = encoder.termination_logit(torch.cat([torch.zeros_like(hiddens[:1]), hiddens[:-1]]), prev_actions,
                                       prev_rewards, obs)
    return torch.cat(means), torch.cat(logvars), logits, torch.cat(prev_session_beliefs)


def vae_loss(encoder, decoder, prior_net, batch, args, device):
    """The DynaMITE-RL objective (paper eq. 6) on a batch of episodes; returns (loss, dict of terms). With all three
    components off it is VariBAD's objective plus the termination head's cross-entropy."""
    obs, actions_onehot, rewards, next_obs, session_done = batch
    means, logvars, logits, prev_beliefs = encode_episodes(encoder, obs, actions_onehot, rewards, session_done, args, device)
    horizon, num_envs = rewards.shape
    if args.decode_beliefs >= horizon:
        belief_steps = torch.arange(horizon, device=device)
    else:
        belief_steps = torch.randperm(horizon)[: args.decode_beliefs].to(device)
    mask = reconstruction_mask(session_done, args.session_recon)
    dynamics_prior = prior_net(prev_beliefs) if args.conditioning else None  # p(m' | previous session's belief)
    terms = {
        "reconstruction": reconstruction_loss(decoder, means, logvars, obs, actions_onehot, rewards, next_obs,
                                              session_done, mask, belief_steps, sample=not args.decode_mean, args=args),
        "kl": kl_loss(means, logvars, session_done, encoder.prior(num_envs), latent_prior(args, device), dynamics_prior),
        "termination": termination_loss(logits, session_done),
    }
    loss = terms["reconstruction"] + args.kl_weight * terms["kl"] + args.termination_weight * terms["termination"]
    if args.consistency:
        terms["consistency"] = consistency_loss(means, logvars, session_done)
        loss = loss + args.consistency_weight * terms["consistency"]
    return loss, terms


def vae_update(encoder, decoder, prior_net, optimizer, batch, args, device, iteration: int):
    """One gradient step of the VAE on ``batch``, its gradient clipped to --max-grad-norm; returns (loss, terms)."""
    loss, terms = vae_loss(encoder, decoder, prior_net, batch, args, device)
    optimizer.zero_grad()
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], args.max_grad_norm)
    check_finite(iteration, **{f"{name} loss": value for name, value in terms.items()}, encoder_gradient_norm=grad_norm)
    optimizer.step()
    return loss, terms


class EpisodeBuffer:
    """A ring buffer of whole episodes for VAE training, stored (capacity, H, ...) and sampled as (H, batch, ...).
    Each episode keeps its H + 1 observations once: the next observation of step t is the observation of step t + 1
    (at a session's end too, where it is the next session's start), so ``next_obs`` is a view, not a second copy."""

    def __init__(self, capacity: int, horizon: int, obs_dim: int, action_dim: int, device):
        self.fields = {
            "obs": torch.zeros(capacity, horizon + 1, obs_dim, device=device),
            "actions": torch.zeros(capacity, horizon, action_dim, device=device),
            "rewards": torch.zeros(capacity, horizon, device=device),
            "session_done": torch.zeros(capacity, horizon, dtype=torch.bool, device=device),
        }
        self.capacity, self.size, self.position = capacity, 0, 0

    def add(self, obs, actions_onehot, rewards, next_obs, session_done):
        """Append a batch of episodes given as (H, B, ...)."""
        if not torch.equal(next_obs[:-1], obs[1:]):
            raise ValueError("each step's next observation must be the next step's observation")
        index = (self.position + torch.arange(obs.shape[1])) % self.capacity
        for name, value in zip(self.fields, (torch.cat([obs, next_obs[-1:]]), actions_onehot, rewards, session_done)):
            self.fields[name][index] = value.transpose(0, 1)
        self.position = int(index[-1] + 1) % self.capacity
        self.size = min(self.size + obs.shape[1], self.capacity)

    def sample(self, batch: int):
        """(obs, actions, rewards, next_obs, session_done) of ``batch`` episodes drawn uniformly, (H, batch, ...)."""
        index = torch.randint(self.size, (batch,))
        obs, actions, rewards, session_done = (value[index].transpose(0, 1) for value in self.fields.values())
        return obs[:-1], actions, rewards, obs[1:], session_done

    def state_dict(self) -> dict:
        return {"size": self.size, "position": self.position,
                "fields": {name: value[: self.size].clone() for name, value in self.fields.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.position = state["size"], state["position"]
        for name, value in state["fields"].items():
            self.fields[name][: self.size] = value


class GreedyPolicy:
    """The policy of the evaluation protocol (envs.protocol): greedy actions on the belief it carries on; it counts
    how the termination head's session ends compare with the true ones."""

    def __init__(self, num_envs: int, encoder, agent, obs_scaling, space, horizon: int, args: Args, device):
        self.encoder, self.agent, self.obs_scaling, self.space, self.horizon = encoder, agent, obs_scaling, space, horizon
        self.args, self.device, self.state = args, device, BeliefState(num_envs, action_size(space), args, device)
        self.true_end, self.detections = None, {"hits": 0, "fired": 0, "ends": 0}

    @torch.no_grad()
    def act(self, obs, t: int) -> np.ndarray:
        obs = self.obs_scaling(obs)
        self.mean, self.logvar, logit, _ = self.state.encode(self.encoder, obs,
                                                            self.true_end if self.args.oracle_sessions else None)
        if self.true_end is not None:
            count_detections(self.detections, logit, self.true_end)
        inputs = policy_input(self.agent, obs, t, self.horizon, self.mean, self.logvar, self.args)
        self.action = self.agent.get_action_and_value(inputs, deterministic=True)[0]
        return env_action(self.action, self.space)

    def observe(self, reward, info) -> None:
        self.state.observe(action_features(self.action, self.space),
                           torch.as_tensor(reward, dtype=torch.float32, device=self.device), self.mean, self.logvar)
        self.true_end = torch.as_tensor(info["session_done"], device=self.device)


def count_detections(counts: dict, termination_logit, true_end) -> None:
    """Add one step's comparison of the head's session ends (logit > 0) with the true ones to ``counts``."""
    fired = termination_logit > 0
    counts["hits"] += int((fired & true_end).sum())
    counts["fired"] += int(fired.sum())
    counts["ends"] += int(true_end.sum())


def detection_rates(counts: dict) -> dict:
    """Precision and recall of the termination head at the exact step (NaN where there is nothing to divide by)."""
    return {"precision": counts["hits"] / counts["fired"] if counts["fired"] else float("nan"),
            "recall": counts["hits"] / counts["ends"] if counts["ends"] else float("nan")}


# TRY NOT TO MODIFY: settings, checks and checkpoints, the same in every script of the library
# the paper's Table 2 values where continuous control differs from the Gridworld, and the encoder's schedule (README)
FAMILY_DEFAULTS = {
    "discrete": {"eval_episodes": 2000, "ent_coef": 0.01, "latent_dim": 5, "embed_dim": 16, "norm_reward": False,
                 "encoder_updates": 8, "encoder_train_steps": 4_000_000, "small_batch_steps": 4_000_000},
    "continuous": {"eval_episodes": 25, "ent_coef": 0.05, "latent_dim": 16, "embed_dim": 32, "norm_reward": True,
                   "encoder_updates": 2, "encoder_train_steps": 0, "small_batch_steps": 0},
}
ENV_DEFAULTS = {"dynamite/ScratchItch-v0": {"ent_coef": 0.01}}  # where one environment differs again (README)
# the range of every numeric setting (a script skips those it lacks); other integers are counts >= 1, floats >= 0
RANGES = {"seed": (lambda v: True, "an integer"), "gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
          "gae_lambda": (lambda v: 0 <= v <= 1, "in [0, 1]"),
          "dirichlet_classes": (lambda v: v >= 2, "an integer >= 2"),
          **{name: (lambda v: v > 0, "> 0") for name in ("learning_rate", "encoder_learning_rate", "clip_coef", "max_grad_norm",
                                                         "dirichlet_alpha")},
          **{name: (lambda v: v >= 0, "an integer >= 0") for name in ("eval_every", "encoder_updates", "encoder_train_steps",
                                                                         "small_batch_steps")}}
SCRIPT, CHECKPOINT_FORMAT = os.path.basename(__file__), 1
# what --resume may change; every other setting is the checkpoint's, so that a resumed run continues the run it names
RESUMABLE = ("total_timesteps", "eval_every", "log_every", "num_threads", "cuda", "track", "wandb_project_name",
             "wandb_entity", "wandb_group", "capture_video")


def fill_family_defaults(args: Args, envs_) -> None:
    """Settings left unset take their environment family's value (discrete or continuous actions); the state
    decoder is on where the environment says that its dynamics change with the latent."""
    family = "discrete" if isinstance(envs_.single_action_space, gym.spaces.Discrete) else "continuous"
    for name, value in {**FAMILY_DEFAULTS[family], **ENV_DEFAULTS.get(args.env_id, {})}.items():
        if getattr(args, name, False) is None:  # (a setting this algorithm does not have is skipped)
            setattr(args, name, value)
    if getattr(args, "state_decoder", False) is None:
        args.state_decoder = envs.protocol.latent_changes_dynamics(args.env_id)


def check_args(args: Args) -> tuple[dict, dict]:
    """Fail before anything is written, with one line naming the flag, its value and what is allowed."""
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        ok, allowed = RANGES.get(field.name, (lambda v: v >= 1, "an integer >= 1") if isinstance(value, int)
                                 else (lambda v: v >= 0, ">= 0"))
        if not (math.isfinite(value) and ok(value)):
            raise SystemExit(f"error: --{field.name.replace('_', '-')} {value} is out of range: it must be {allowed}")
    for name in ("num_envs", "policy_num_envs"):
        if getattr(args, name, 0) % args.num_minibatches != 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} {getattr(args, name)} must be divisible by "
                             f"--num-minibatches {args.num_minibatches} (minibatches are split by environment)")
    try:  # the environment's settings for training and for evaluation
        env_kwargs = envs.protocol.parse_env_settings(args.env_id, args.env_kwargs)
        return env_kwargs, {**env_kwargs, **envs.protocol.parse_env_settings(args.env_id, args.eval_env_kwargs,
                                                                             "--eval-env-kwargs")}
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def check_finite(iteration: int, **values) -> None:
    """Stop the run where a loss, gradient norm, reward or observation is NaN or infinite, before anything is saved."""
    for name, value in values.items():
        if not bool(torch.isfinite(torch.as_tensor(value)).all()):
            raise SystemExit(f"error: the {name.replace('_', ' ')} is not finite at iteration {iteration}: the run stops "
                             "here (its last checkpoint, if any, is from before)")


def save_checkpoint(path: str, modules: dict, optimizers: dict, args: Args, envs_, progress: dict) -> None:
    """Everything needed to continue the run exactly, as tensors and plain data, written atomically (a kill leaves
    the previous checkpoint or this one). ``progress``: step, iteration, evaluations, the encoder's buffer."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    torch.save({"header": {"script": SCRIPT, "format": CHECKPOINT_FORMAT, "env_id": args.env_id}, "args": asdict(args),
                "modules": {name: module.state_dict() for name, module in modules.items()},
                "optimizers": {name: optimizer.state_dict() for name, optimizer in optimizers.items()},
                "rng": {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                        "envs": envs.protocol.generator_states(envs_)}, **progress}, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def load_checkpoint(path: str, device, script: str | None = SCRIPT) -> dict:
    """The checkpoint at ``path``, loaded as data (weights_only: a file that would run code is refused), written by
    ``script`` (None: by any script of the library); one line on what is wrong otherwise."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise SystemExit(f"error: checkpoint {path!r}: " + ("the file is empty" if os.path.isfile(path) else "no such checkpoint file"))
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a truncated or foreign file, or one that refers to classes or functions
        raise SystemExit(f"error: checkpoint {path!r} " + (
            "holds objects other than tensors and plain data (written by an older version, or a file that would run "
            "code when loaded): it is not loaded" if "GLOBAL" in str(error) else "is truncated or not a checkpoint "
            f"({type(error).__name__})")) from None
    header = checkpoint.get("header") if isinstance(checkpoint, dict) else None
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"error: checkpoint {path!r} is not of this library's checkpoint format {CHECKPOINT_FORMAT}")
    if script is not None and header["script"] != script:
        raise SystemExit(f"error: checkpoint {path!r} is one of {header['script']} on {header['env_id']}, not of "
                         f"{script}: resume it with `python {header['script']} --resume {path}`")
    return checkpoint


def resume_args(args: Args, checkpoint: dict) -> Args:
    """``args`` parsed with the checkpoint's settings as defaults: only those in RESUMABLE may differ (printed)."""
    saved = checkpoint["args"]
    changed = {name: value for name, value in asdict(args).items() if name != "resume" and value != saved[name]}
    if "env_id" in changed:
        raise SystemExit(f"error: --resume {args.resume!r} is a run on {saved['env_id']}, not on --env-id {args.env_id}")
    for name in sorted(set(changed) - set(RESUMABLE)):
        raise SystemExit(f"error: --{name.replace('_', '-')} cannot change on --resume: the run continues with the "
                         f"settings it started with; only {', '.join('--' + n.replace('_', '-') for n in RESUMABLE)} may")
    for name, value in changed.items():
        print(f"resume: --{name.replace('_', '-')} {value} (the run started with {saved[name]})")
    return args


def restore(checkpoint: dict, modules: dict, optimizers: dict, envs_, path: str) -> None:
    """The run's modules, optimizers and random generators from the checkpoint; a part missing or of another
    shape is an error, not a silently random network."""
    for kind, parts in (("modules", modules), ("optimizers", optimizers)):
        for name, part in parts.items():
            if name not in checkpoint[kind]:
                raise SystemExit(f"error: checkpoint {path!r} has no {name!r} {kind[:-1]}")
            try:
                part.load_state_dict(checkpoint[kind][name])
            except (RuntimeError, ValueError, KeyError) as error:
                raise SystemExit(f"error: checkpoint {path!r}: its {name!r} does not fit this run "
                                 f"({str(error).splitlines()[0]})") from None
    rng = checkpoint["rng"]
    torch.set_rng_state(rng["torch"].cpu())
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in rng["cuda"]])
    envs_.reset(seed=0)  # creates the generators, whose states are then restored
    envs.protocol.set_generator_states(envs_, rng["envs"])


if __name__ == "__main__":
    args = tyro.cli(Args)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    resume = load_checkpoint(args.resume, device) if args.resume else None
    if resume is not None:  # the checkpoint's settings, of which the command line may change only RESUMABLE ones
        args = resume_args(tyro.cli(Args, default=Args(**resume["args"])), resume)
    env_kwargs, eval_env_kwargs = check_args(args)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup
    try:
        envs_ = envs.protocol.make_vector_env(args.env_id, args.num_envs, env_kwargs)
        envs.protocol.make_vector_env(args.env_id, 1, eval_env_kwargs).close()  # checked before training, not after
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    action_space = envs_.single_action_space
    if not isinstance(action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        raise SystemExit(f"error: {args.env_id} has {action_space}; {SCRIPT} handles Discrete and Box actions")
    fill_family_defaults(args, envs_)
    obs_dim, action_dim, horizon = int(np.prod(envs_.single_observation_space.shape)), action_size(action_space), \
        envs.protocol.horizon(envs_)
    batch_size, policy_batch_size = args.num_envs * horizon, args.policy_num_envs * horizon
    if 0 < args.encoder_train_steps < args.total_timesteps:  # the encoder phase, then the policy phase
        encoder_iterations = max(1, args.encoder_train_steps // batch_size)
        num_iterations = encoder_iterations + max(1, (args.total_timesteps - encoder_iterations * batch_size) // policy_batch_size)
    else:
        encoder_iterations = num_iterations = max(1, args.total_timesteps // batch_size)
    if resume is not None and resume["iteration"] >= num_iterations:
        raise SystemExit(f"error: --resume {args.resume!r}: the run has finished its {num_iterations} iterations; "
                         "a larger --total-timesteps extends it")
    if resume is not None and resume["iteration"] > encoder_iterations:  # resumed in the policy phase
        envs_.close()
        envs_ = envs.protocol.make_vector_env(args.env_id, args.policy_num_envs, env_kwargs)
    bayes_return = envs.protocol.bayes_optimal_return(args.env_id, eval_env_kwargs)

    encoder = Encoder(obs_dim, action_dim, args).to(device)
    decoder = Decoder(obs_dim, action_dim, args).to(device)
    prior_net = LatentDynamicsPrior(args).to(device)
    agent = Agent(obs_dim, action_space, args).to(device)
    obs_scaling = ObservationScaling(envs_.single_observation_space).to(device)
    encoder_optimizer = optim.Adam([*encoder.parameters(), *decoder.parameters(), *prior_net.parameters()],
                                   lr=args.encoder_learning_rate)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    modules = {"encoder": encoder, "decoder": decoder, "prior": prior_net, "agent": agent, "obs_scaling": obs_scaling}
    optimizers = {"encoder": encoder_optimizer, "policy": optimizer}
    buffer = EpisodeBuffer(args.encoder_buffer_episodes, horizon, obs_dim, action_dim, device)
    global_step, start_iteration, evaluations = 0, 1, []
    if resume is not None:  # everything is loaded and checked before the run folder is touched
        restore(resume, modules, optimizers, envs_, args.resume)
        buffer.load_state_dict(resume["buffer"])
        global_step, start_iteration, evaluations = resume["global_step"], resume["iteration"] + 1, resume["evaluations"]
    else:
        envs_.reset(seed=args.seed)
        if obs_scaling.unbounded.any():  # standardised by random-action episodes
            obs_scaling.fit(torch.as_tensor(np.stack([step[0] for step in envs.protocol.random_episode(envs_, horizon)]),
                                            dtype=torch.float32, device=device))

    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.dirname(os.path.abspath(args.resume)) if args.resume else args.run_dir or os.path.join("runs", run_name)
    run_name, checkpoint_path, eval_path = (os.path.basename(run_dir), os.path.join(run_dir, "checkpoint.pt"),
                                            os.path.join(run_dir, "eval.json"))
    os.makedirs(run_dir, exist_ok=True)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, group=args.wandb_group,
                   sync_tensorboard=True, config=vars(args), name=run_name, dir=run_dir, save_code=True)
    # on resume, TensorBoard hides what a killed run logged after its checkpoint, which the resumed run logs again
    writer = SummaryWriter(run_dir, purge_step=global_step + 1 if resume is not None else None)
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    if resume is not None:
        print(f"resumed {run_dir} at iteration {start_iteration}, step {global_step}")

    def save(iteration: int) -> None:
        progress = {"global_step": global_step, "iteration": iteration, "evaluations": evaluations,
                    "buffer": buffer.state_dict()}
        writer.flush()  # what was logged up to the checkpoint survives a kill
        save_checkpoint(checkpoint_path, modules, optimizers, args, envs_, progress)

    def write_eval(iteration: int, final: bool = False) -> None:
        tick = time.time()
        policies = []  # (the one the protocol makes, for its session-end counts)
        result = envs.protocol.evaluate(
            args.env_id, eval_env_kwargs, lambda n: policies.append(GreedyPolicy(
                n, encoder, agent, obs_scaling, action_space, horizon, args, device)) or policies[-1],
            args.eval_episodes, consecutive=5 if final else 1, seed=args.seed + 1_000_000, episode_returns=final)
        result["session_detection"] = detection_rates(policies[0].detections)
        for name, value in result["session_detection"].items():
            writer.add_scalar(f"eval/session_{name}", value, global_step)
        timing["eval"] += time.time() - tick
        result.update(iteration=iteration, global_step=global_step,
                      train_time=train_time_before + sum(v for k, v in timing.items() if k != "eval"),
                      wall_time=wall_time_before + time.time() - start_time,
                      peak_memory_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # resident set
        if bayes_return:  # (a reference of 0, e.g. with every reward 0, has no fraction)
            result["fraction_of_bayes_optimal"] = result["return"] / bayes_return
        evaluations.append(result)
        writer.add_scalar("eval/return", result["return"], global_step)
        writer.add_scalar("charts/peak_memory_mib", result["peak_memory_mib"], global_step)
        for s, value in enumerate(result["return_per_session"]):
            writer.add_scalar(f"eval/return_per_session/{s}", value, global_step)
        for e, value in enumerate(result["consecutive_episode_returns"]):
            writer.add_scalar(f"eval/consecutive_episode_return/{e}", value, global_step)
        with open(f"{eval_path}.tmp", "w") as f:
            json.dump({"args": vars(args), "bayes_optimal_return": bayes_return, "finished": final,
                       "time": {k: round(v, 2) for k, v in timing.items()}, "evaluations": evaluations}, f, indent=1)
        os.replace(f"{eval_path}.tmp", eval_path)
        sessions = " ".join(f"{v:.2f}" for v in result["return_per_session"])
        print(f"eval  iter {iteration}: return {result['return']:.2f} ± {result['return_std']:.2f}"
              + (f" ({result['return'] / bayes_return:.1%} of Bayes-optimal)" if bayes_return else "")
              + f" | per session {sessions}"
              + (f" | 5 episodes {' '.join(f'{v:.1f}' for v in result['consecutive_episode_returns'])}" if final else ""))

    # TRY NOT TO MODIFY: a first Ctrl-C finishes the iteration, saves a checkpoint and stops; a second aborts
    stop_requested = []

    def request_stop(signum, frame):
        if stop_requested:
            raise KeyboardInterrupt
        stop_requested.append(signum)
        print("\nstopping after this iteration" + (" and saving a checkpoint" if args.save_model else
              " (no checkpoint: run with --save-model to keep it)") + "; Ctrl-C again aborts", flush=True)

    signal.signal(signal.SIGINT, request_stop)
    start_time = time.time()
    train_time_before = evaluations[-1]["train_time"] if evaluations else 0.0
    wall_time_before = evaluations[-1]["wall_time"] if evaluations else 0.0
    start_step = global_step
    timing = {"rollout": 0.0, "encoder": 0.0, "ppo": 0.0, "eval": 0.0}
    for iteration in range(start_iteration, num_iterations + 1):
        policy_phase = iteration > encoder_iterations
        if iteration == encoder_iterations + 1:
            # ALGO LOGIC: the policy phase. A policy that learned while the beliefs were still forming ignores what
            # they hold later; a fresh one on the frozen VAE, with larger batches, learns to read them
            envs_.close()
            envs_ = envs.protocol.make_vector_env(args.env_id, args.policy_num_envs, env_kwargs)
            envs_.reset(seed=args.seed + 1)
            agent = Agent(obs_dim, action_space, args).to(device)
            optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
            modules["agent"], optimizers["policy"] = agent, optimizer
            print(f"policy phase from step {global_step:,}: the VAE is frozen; a fresh policy trains on "
                  f"{args.policy_num_envs} environments", flush=True)
        # ALGO LOGIC: storage for one iteration of whole episodes, (H, num_envs, ...)
        if iteration == start_iteration or iteration == encoder_iterations + 1:
            obs = torch.zeros((horizon, envs_.num_envs, obs_dim), device=device)
            next_obs_buf = torch.zeros((horizon, envs_.num_envs, obs_dim), device=device)
            actions = torch.zeros((horizon, envs_.num_envs, *action_space.shape), device=device,
                                  dtype=torch.long if isinstance(action_space, gym.spaces.Discrete) else torch.float32)
            logprobs = torch.zeros((horizon, envs_.num_envs), device=device)
            rewards = torch.zeros((horizon, envs_.num_envs), device=device)
            values = torch.zeros((horizon, envs_.num_envs), device=device)
            session_done = torch.zeros((horizon, envs_.num_envs), dtype=torch.bool, device=device)
            beliefs = torch.zeros((horizon, envs_.num_envs, 2 * belief_size(args)), device=device)
            policy_inputs = torch.zeros((horizon, envs_.num_envs, obs_dim + 2 * belief_size(args) + int(args.time_feature)),
                                        device=device)
        phase_start, phase_end = (encoder_iterations, num_iterations) if policy_phase else (0, encoder_iterations)
        progress = (iteration - 1.0 - phase_start) / (phase_end - phase_start)
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - 0.9 * progress)
        ent_coef = args.ent_coef * (1.0 - progress)

        # ALGO LOGIC: rollout of one whole episode in every environment
        tick = time.time()
        next_obs, _ = envs_.reset()
        state = BeliefState(envs_.num_envs, action_dim, args, device)
        detections = {"hits": 0, "fired": 0, "ends": 0}
        with torch.no_grad():
            for t in range(horizon):
                obs[t] = obs_scaling(next_obs)
                true_end = session_done[t - 1] if t > 0 else None  # the transition before this step
                mean, logvar, termination_logit, _ = state.encode(encoder, obs[t], true_end if args.oracle_sessions else None)
                if true_end is not None:
                    count_detections(detections, termination_logit, true_end)
                beliefs[t] = policy_belief(mean, logvar, args)
                policy_inputs[t] = policy_input(agent, obs[t], t, horizon, mean, logvar, args)
                action, logprob, _, value = agent.get_action_and_value(policy_inputs[t])
                actions[t], logprobs[t], values[t] = action, logprob, value
                next_obs, reward, _, _, info = envs_.step(env_action(action, action_space))
                rewards[t] = torch.as_tensor(reward, dtype=torch.float32, device=device)
                session_done[t] = torch.as_tensor(info["session_done"], device=device)
                next_obs_buf[t] = obs_scaling(next_obs)
                check_finite(iteration, reward=rewards[t], observation=next_obs_buf[t])
                state.observe(action_features(action, action_space), rewards[t], mean, logvar)
        agent.belief_rms.update(beliefs)
        for name, value in detection_rates(detections).items():  # how well the head finds the true session ends
            writer.add_scalar(f"charts/session_{name}", value, global_step)
        global_step += policy_batch_size if policy_phase else batch_size
        episode_returns = rewards.sum(0)
        writer.add_scalar("charts/episodic_return", episode_returns.mean().item(), global_step)
        writer.add_scalar("charts/episodic_length", horizon, global_step)
        timing["rollout"] += time.time() - tick

        # ALGO LOGIC: VAE update with the true session ends (training-time teacher forcing)
        tick = time.time()
        if not policy_phase:
            buffer.add(obs, action_features(actions, action_space), rewards, next_obs_buf, session_done)
        loss, terms = torch.zeros(()), {}
        for _ in range(0 if policy_phase else args.encoder_updates):
            loss, terms = vae_update(encoder, decoder, prior_net, encoder_optimizer,
                                     buffer.sample(args.encoder_batch_episodes), args, device, iteration)
        timing["encoder"] += time.time() - tick

        # ALGO LOGIC: PPO on the belief-augmented states; the horizon is the task's end, so no bootstrap
        tick = time.time()
        with torch.no_grad():
            next_values = torch.cat([values[1:], torch.zeros_like(values[:1])])
            episode_ends = torch.zeros_like(session_done)
            episode_ends[-1] = True
            ppo_rewards = scale_rewards(agent, rewards, args.gamma) if args.norm_reward else rewards
            advantages, returns = compute_gae(ppo_rewards, values, next_values, episode_ends, args.gamma, args.gae_lambda)
        env_inds = np.arange(envs_.num_envs)
        envs_per_batch = envs_.num_envs // args.num_minibatches
        clipfracs, pg_loss, v_loss, entropy_loss, approx_kl = [0.0], torch.zeros(()), torch.zeros(()), torch.zeros(()), torch.zeros(())
        for epoch in range(args.update_epochs):
            np.random.shuffle(env_inds)
            for start in range(0, envs_.num_envs, envs_per_batch):
                mb = env_inds[start : start + envs_per_batch]
                mb_inputs = policy_inputs[:, mb].reshape(-1, policy_inputs.shape[-1])
                mb_actions = actions[:, mb].reshape(-1, *action_space.shape)
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(mb_inputs, mb_actions)
                logratio = newlogprob - logprobs[:, mb].reshape(-1)
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())
                mb_advantages = advantages[:, mb].reshape(-1)
                if args.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                pg_loss = torch.max(-mb_advantages * ratio,
                                    -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)).mean()
                mb_returns, mb_values = returns[:, mb].reshape(-1), values[:, mb].reshape(-1)
                if args.clip_vloss:
                    v_clipped = mb_values + torch.clamp(newvalue - mb_values, -args.clip_coef, args.clip_coef)
                    v_loss = 0.5 * torch.max((newvalue - mb_returns) ** 2, (v_clipped - mb_returns) ** 2).mean()
                else:
                    v_loss = 0.5 * ((newvalue - mb_returns) ** 2).mean()
                entropy_loss = entropy.mean()
                ppo_loss = pg_loss - ent_coef * entropy_loss + v_loss * args.vf_coef
                optimizer.zero_grad()
                ppo_loss.backward()
                actor = [*agent.actor.parameters(), *([agent.actor_logstd] if agent.continuous else [])]  # log-std included
                actor_norm = nn.utils.clip_grad_norm_(actor, args.max_grad_norm)
                critic_norm = nn.utils.clip_grad_norm_(agent.critic.parameters(), args.max_grad_norm)
                check_finite(iteration, policy_loss=pg_loss, value_loss=v_loss, entropy=entropy_loss,
                             actor_gradient_norm=actor_norm, critic_gradient_norm=critic_norm)
                optimizer.step()
        timing["ppo"] += time.time() - tick

        # TRY NOT TO MODIFY: record losses and progress
        y_pred, y_true = values.flatten().cpu().numpy(), returns.flatten().cpu().numpy()
        explained_var = np.nan if np.var(y_true) == 0 else 1 - np.var(y_true - y_pred) / np.var(y_true)
        sps = int((global_step - start_step) / (time.time() - start_time))
        for name, value in {"charts/learning_rate": optimizer.param_groups[0]["lr"], "charts/SPS": sps,
                            "losses/value_loss": v_loss.item(), "losses/policy_loss": pg_loss.item(),
                            "losses/entropy": entropy_loss.item(), "losses/approx_kl": approx_kl.item(),
                            "losses/clipfrac": np.mean(clipfracs), "losses/explained_variance": explained_var,
                            "losses/vae": loss.item(), **{f"losses/{k}": v.item() for k, v in terms.items()},
                            **{f"time/{k}": v for k, v in timing.items()}}.items():
            writer.add_scalar(name, value, global_step)
        if iteration % args.log_every == 0 or iteration == num_iterations:
            mean_return = episode_returns.mean().item()
            print(f"iter {iteration}/{num_iterations} | step {global_step:,} | {sps:,} steps/s | return {mean_return:.2f}"
                  + (f" ({mean_return / bayes_return:.1%} of Bayes-optimal {bayes_return:.2f})" if bayes_return else "")
                  + f" | vae {loss.item():.3f}", flush=True)
        if args.eval_every and iteration % args.eval_every == 0 and iteration != num_iterations:
            write_eval(iteration)
            if args.save_model:
                save(iteration)
        if stop_requested and iteration != num_iterations:
            if args.save_model:
                save(iteration)
                print(f"stopped at iteration {iteration}: continue with --resume {checkpoint_path}")
            raise SystemExit(130)

    write_eval(num_iterations, final=True)
    if args.capture_video:
        envs.protocol.record_video(args.env_id, eval_env_kwargs, lambda n: GreedyPolicy(
            n, encoder, agent, obs_scaling, action_space, horizon, args, device), os.path.join(run_dir, "videos"), seed=args.seed)
    total = sum(timing.values())
    print("time: " + ", ".join(f"{name} {seconds:.0f}s ({seconds / total:.0%})" for name, seconds in timing.items()))
    if args.save_model:
        save(num_iterations)
        print(f"checkpoint: {checkpoint_path}")
        if args.track:  # the final checkpoint as a wandb artifact of the run
            artifact = wandb.Artifact(f"{args.exp_name}__{args.env_id.split('/')[-1]}__seed{args.seed}", type="model")
            artifact.add_file(checkpoint_path)
            wandb.log_artifact(artifact)
    envs_.close()
    writer.close()
    if args.track:
        wandb.finish()
