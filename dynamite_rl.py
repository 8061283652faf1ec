# DynaMITE-RL: Liang et al., "DynaMITE-RL: A Dynamic Model for Improved Temporal Meta-Reinforcement Learning",
# NeurIPS 2024. VariBAD's recurrent posterior plus three changes for latent contexts that move between sessions:
#   1. consistency: within a session the KL to the session's final belief may only shrink  (--consistency)
#   2. latent belief conditioning: the posterior sees the previous session's final belief, and a
#      learned latent-dynamics prior p(m' | m) is the KL target at a session's start    (--conditioning)
#   3. session reconstruction: a belief decodes only the transitions of its own session (--session-recon)
# Run `python dynamite_rl.py --help` for every flag; `python dynamite_rl.py --no-consistency` is an ablation.
import os
import random
import time
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.distributions.categorical import Categorical
from torch.distributions.normal import Normal

import envs.protocol  # registers the dynamite/ environments with gymnasium; the evaluation protocol
import envs.runs  # the run's folder, logs, checkpoints and argument checks, the same for every script
from envs.protocol import ObservationScaling, RunningMeanStd, action_features, action_size, env_action


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
    max_std: float | None = 1.0
    """Gaussian policies: the std's upper bound, a fraction of the action bounds' half-width; the log-std starts
    there at most and is projected back under it after every step (--max-std None: unbounded)"""
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
    session_clock: bool = True
    """also train a linear head on h_t to predict d_t, "this step ends the session" (not used to find ends; README)"""
    head_delay: int = 0
    """steps after a session's end at which the encoder starts the next session, and the head's target: 0 at the next
    step, where a session start shows in the state (the Gridworld's reset); 1 a step later, at the first reward of the
    new latent, where only the reward shows it (MuJoCo and ScratchItch carry on from where they are; README)"""


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
        self.clock = nn.Linear(args.gru_hidden, 1) if args.session_clock else None
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
        """After the fact (Algorithm 3): did the transition into s_t end a session? From h_{t-1} and (a_{t-1}, r_t, s_t)."""
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
        return self.net(prev_session_belief).chunk(2, -1)  # (mean, logvar)


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
            half_width = torch.as_tensor((action_space.high - action_space.low) / 2, dtype=torch.float32).flatten()
            max_logstd = (args.max_std * half_width).log() if args.max_std else torch.full_like(half_width, torch.inf)
            self.register_buffer("max_logstd", max_logstd, persistent=False)
            self.actor_logstd = nn.Parameter(torch.zeros_like(half_width).minimum(max_logstd))

    def bound_logstd(self):
        """Project the Gaussian's log-std back under its bound (--max-std), after each optimizer step."""
        if self.continuous:
            with torch.no_grad():
                self.actor_logstd.copy_(self.actor_logstd.minimum(self.max_logstd))

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


def reconstruction_mask(session_done, session_recon: bool, belief_done=None):
    """(H beliefs, H targets, B): which transitions the belief at each step reconstructs: with --session-recon those
    of its session, the beliefs' sessions split at ``belief_done`` (default: at the transitions' ``session_done``)."""
    sessions = session_index(session_done)
    if not session_recon:
        return torch.ones(sessions.shape[0], *sessions.shape, dtype=torch.bool, device=sessions.device)
    beliefs = sessions if belief_done is None else session_index(belief_done)
    return beliefs[:, None, :] == sessions[None, :, :]


def encoder_session_done(session_done, delay: int):
    """(H, B) the session ends as the encoder splits its steps: ``session_done`` ``delay`` steps later (--head-delay),
    the episode's last step still closing its last session."""
    if delay == 0:
        return session_done
    delayed = torch.zeros_like(session_done)
    delayed[delay:] = session_done[:-delay]
    delayed[-1] = session_done[-1]
    return delayed


def session_final_index(session_done):
    """(H, B) the step at which each step's session ends (its final belief)."""
    horizon = session_done.shape[0]
    steps = torch.arange(horizon, device=session_done.device)[:, None].expand_as(session_done)
    ends = torch.where(session_done.bool(), steps, torch.full_like(steps, horizon - 1))
    return torch.flip(torch.cummin(torch.flip(ends, [0]), 0).values, [0])


def kl_loss(means, logvars, session_done, prior, base, dynamics_prior=None):
    """Mean KL(q_t || target_t) over the GRU's prior (target: the latent's prior ``base``) and the H beliefs (target:
    the belief before, or at a later session's start ``dynamics_prior``, p(m' | m) of --conditioning, when given)."""
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
    """Cross-entropy of the head at steps 1..H-1 against the ends of the transitions before them, session_done[:-1]."""
    return F.binary_cross_entropy_with_logits(termination_logits[1:], session_done[:-1].float())


def reconstruction_loss(decoder, means, logvars, obs, actions, rewards, next_obs, session_done, mask, belief_steps,
                        sample: bool = True, args: Args | None = None):
    """Squared error (unit-variance Gaussian NLL) of the transitions in ``mask`` decoded from the beliefs at
    ``belief_steps`` (a sample m ~ q_t, or its mean), summed over targets as in the ELBO, averaged over beliefs."""
    mean, logvar = means[belief_steps], logvars[belief_steps]  # (K, B, D)
    latent = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
    latent = to_latent(latent, args) if args is not None else latent  # (args: the latent's kind)
    # a session's last transition lands in the next session's start state: it cannot be decoded, so it is left out.
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
        """One step: did the transition into ``obs`` end a session (the head, or ``session_end``: the true ends)? Then
        the belief after ``obs``. Returns (mean, logvar, termination logit, session end)."""
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
    """Teacher-forced pass over episodes (H, B, ...), the true session ends driving the conditioning: BeliefState's
    beliefs, one fused GRU call per stretch without a session change. Returns (means, logvars, termination logits,
    the previous session's belief of each step, the --session-clock logits or None)."""
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
    clock = encoder.clock(hiddens).squeeze(-1) if args.session_clock else None  # step t: does t end a session?
    return torch.cat(means), torch.cat(logvars), logits, torch.cat(prev_session_beliefs), clock


def vae_loss(encoder, decoder, prior_net, batch, args, device):
    """The DynaMITE-RL objective (paper eq. 6) on a batch of episodes; returns (loss, dict of terms). With all three
    components off it is VariBAD's objective plus the termination head's (and the session clock's) cross-entropy."""
    obs, actions_onehot, rewards, next_obs, session_done = batch
    ends = encoder_session_done(session_done, args.head_delay)  # the encoder's sessions (session_done at delay 0)
    means, logvars, logits, prev_beliefs, clock = encode_episodes(encoder, obs, actions_onehot, rewards, ends, args,
                                                                  device)
    horizon, num_envs = rewards.shape
    if args.decode_beliefs >= horizon:
        belief_steps = torch.arange(horizon, device=device)
    else:
        belief_steps = torch.randperm(horizon)[: args.decode_beliefs].to(device)
    mask = reconstruction_mask(session_done, args.session_recon, ends)
    dynamics_prior = prior_net(prev_beliefs) if args.conditioning else None  # p(m' | previous session's belief)
    terms = {
        "reconstruction": reconstruction_loss(decoder, means, logvars, obs, actions_onehot, rewards, next_obs,
                                              session_done, mask, belief_steps, sample=not args.decode_mean, args=args),
        "kl": kl_loss(means, logvars, ends, encoder.prior(num_envs), latent_prior(args, device), dynamics_prior),
        "termination": termination_loss(logits, ends),
    }
    termination = terms["termination"]
    if clock is not None:  # predicting the end before the transition: on a fixed schedule the GRU has to count
        terms["session_clock"] = F.binary_cross_entropy_with_logits(clock, ends.float())
        termination = termination + terms["session_clock"]
    loss = terms["reconstruction"] + args.kl_weight * terms["kl"] + args.termination_weight * termination
    if args.consistency:
        terms["consistency"] = consistency_loss(means, logvars, ends)
        loss = loss + args.consistency_weight * terms["consistency"]
    return loss, terms


def vae_update(encoder, decoder, prior_net, optimizer, batch, args, device, iteration: int):
    """One gradient step of the VAE on ``batch``, its gradient clipped to --max-grad-norm; returns (loss, terms)."""
    loss, terms = vae_loss(encoder, decoder, prior_net, batch, args, device)
    optimizer.zero_grad()
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], args.max_grad_norm)
    envs.runs.check_finite(iteration, **{f"{k} loss": v for k, v in terms.items()}, encoder_gradient_norm=grad_norm)
    optimizer.step()
    return loss, terms


class EpisodeBuffer:
    """A ring buffer of whole episodes, stored (capacity, H, ...) and sampled as (H, batch, ...); each episode keeps
    its H + 1 observations once (step t's next observation is step t + 1's), so ``next_obs`` is a view."""

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
    """The policy of the evaluation protocol (envs.protocol): greedy actions on the belief it carries on; detections:
    how its session ends compare with the true ones."""

    def __init__(self, num_envs: int, encoder, agent, obs_scaling, space, horizon: int, args: Args, device):
        self.encoder, self.agent, self.obs_scaling, self.space, self.horizon = encoder, agent, obs_scaling, space, horizon
        self.args, self.device, self.state = args, device, BeliefState(num_envs, action_size(space), args, device)
        self.true_ends, self.detections = [], envs.protocol.SessionDetection()

    @torch.no_grad()
    def act(self, obs, t: int) -> np.ndarray:
        obs = self.obs_scaling(obs)
        if t == 0:
            self.true_ends = []  # info["session_done"] of this episode's steps
        # the head finds ends within an episode (the end of the transition --head-delay steps before the last one); a
        # new episode of the consecutive protocol starts a session, and the agent sees the reset
        delay = self.args.head_delay
        true_end = self.true_ends[-1 - delay] if len(self.true_ends) > delay else \
            torch.zeros(len(obs), dtype=torch.bool, device=self.device)
        known = torch.ones(len(obs), dtype=torch.bool, device=self.device) if t == 0 else \
            true_end if self.args.oracle_sessions else None
        self.mean, self.logvar, logit, _ = self.state.encode(self.encoder, obs, known)
        if t > 0:
            self.detections.add(logit > 0, true_end)
        inputs = policy_input(self.agent, obs, t, self.horizon, self.mean, self.logvar, self.args)
        self.action = self.agent.get_action_and_value(inputs, deterministic=True)[0]
        return env_action(self.action, self.space)

    def observe(self, reward, info) -> None:
        self.state.observe(action_features(self.action, self.space),
                           torch.as_tensor(reward, dtype=torch.float32, device=self.device), self.mean, self.logvar)
        self.true_ends.append(torch.as_tensor(info["session_done"], device=self.device))


SCRIPT = os.path.basename(__file__)


if __name__ == "__main__":
    args, resume = envs.runs.parse_args(Args, SCRIPT)  # with --resume: the checkpoint's settings and state
    env_kwargs, eval_env_kwargs = envs.runs.check_args(args)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup; the settings left unset take the values of the environment's family (discrete or continuous)
    envs_ = envs.runs.make_envs(args, env_kwargs, eval_env_kwargs, SCRIPT)
    action_space = envs_.single_action_space
    obs_dim, action_dim, horizon = int(np.prod(envs_.single_observation_space.shape)), action_size(action_space), \
        envs.protocol.horizon(envs_)
    batch_size, policy_batch_size = args.num_envs * horizon, args.policy_num_envs * horizon
    # the encoder phase, then the policy phase; a checkpoint that has done them all is an error
    encoder_iterations, num_iterations = envs.runs.iterations(args, args.encoder_train_steps, batch_size,
                                                              policy_batch_size, resume)
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
    global_step, start_iteration = 0, 1
    if resume is not None:  # everything is loaded and checked before the run folder is touched
        envs.runs.restore(resume, modules, optimizers, envs_, args.resume)
        buffer.load_state_dict(resume["buffer"])
        global_step, start_iteration = resume["global_step"], resume["iteration"] + 1
    else:
        envs_.reset(seed=args.seed)
        if obs_scaling.unbounded.any():  # standardised by random-action episodes
            obs_scaling.fit(np.stack([step[0] for step in envs.protocol.random_episode(envs_, horizon)]))

    run = envs.runs.Run(args, SCRIPT, bayes_return, resume)  # its folder, TensorBoard (and wandb), eval.json, Ctrl-C

    def save(iteration: int) -> None:
        run.save(modules, optimizers, envs_, {"global_step": global_step, "iteration": iteration,
                                              "buffer": buffer.state_dict()})

    def write_eval(iteration: int, final: bool = False) -> None:
        tick = time.time()
        result = envs.protocol.evaluate(
            args.env_id, eval_env_kwargs, lambda n: GreedyPolicy(n, encoder, agent, obs_scaling, action_space, horizon, args, device),
            args.eval_episodes, consecutive=5 if final else 1, seed=args.seed + 1_000_000,
            episode_returns=final)
        timing["eval"] += time.time() - tick
        run.record(result, iteration, global_step, timing, final)

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
        detections = envs.protocol.SessionDetection()  # how well the head finds the true session ends
        with torch.no_grad():
            for t in range(horizon):
                obs[t] = obs_scaling(next_obs)
                # the end the head is asked about: of the transition --head-delay steps before the last one
                late = t - 1 - args.head_delay
                true_end = session_done[late] if late >= 0 else torch.zeros_like(session_done[0])
                mean, logvar, termination_logit, _ = state.encode(encoder, obs[t], true_end if args.oracle_sessions else None)
                if t > 0:
                    detections.add(termination_logit > 0, true_end)
                beliefs[t] = policy_belief(mean, logvar, args)
                policy_inputs[t] = policy_input(agent, obs[t], t, horizon, mean, logvar, args)
                action, logprob, _, value = agent.get_action_and_value(policy_inputs[t])
                actions[t], logprobs[t], values[t] = action, logprob, value
                next_obs, reward, _, _, info = envs_.step(env_action(action, action_space))
                rewards[t] = torch.as_tensor(reward, dtype=torch.float32, device=device)
                session_done[t] = torch.as_tensor(info["session_done"], device=device)
                next_obs_buf[t] = obs_scaling(next_obs)
                envs.runs.check_finite(iteration, reward=rewards[t], observation=next_obs_buf[t])
                state.observe(action_features(action, action_space), rewards[t], mean, logvar)
        agent.belief_rms.update(beliefs)
        global_step += policy_batch_size if policy_phase else batch_size
        episode_returns = rewards.sum(0)
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
                envs.runs.check_finite(iteration, policy_loss=pg_loss, value_loss=v_loss, entropy=entropy_loss,
                                       actor_gradient_norm=actor_norm, critic_gradient_norm=critic_norm)
                optimizer.step()
                agent.bound_logstd()
        timing["ppo"] += time.time() - tick

        # TRY NOT TO MODIFY: record losses and progress
        y_pred, y_true = values.flatten().cpu().numpy(), returns.flatten().cpu().numpy()
        explained_var = np.nan if np.var(y_true) == 0 else 1 - np.var(y_true - y_pred) / np.var(y_true)
        run.log(iteration, num_iterations, global_step, episode_returns.mean().item(), timing, {
            "charts/learning_rate": optimizer.param_groups[0]["lr"], "losses/value_loss": v_loss.item(),
            **({"charts/action_std": agent.actor_logstd.exp().mean().item()} if agent.continuous else {}),
            "losses/policy_loss": pg_loss.item(), "losses/entropy": entropy_loss.item(),
            "losses/approx_kl": approx_kl.item(), "losses/clipfrac": np.mean(clipfracs),
            "losses/explained_variance": explained_var,
            "losses/vae": loss.item(), **{f"losses/{k}": v.item() for k, v in terms.items()},
            **{f"charts/session_{k}": v for k, v in detections.rates().items()}}, f" | vae {loss.item():.3f}")
        if args.eval_every and iteration % args.eval_every == 0 and iteration != num_iterations:
            write_eval(iteration)
            if args.save_model:
                save(iteration)
        if run.stop_requested and iteration != num_iterations:  # after a Ctrl-C
            run.stop(iteration, lambda: save(iteration))

    write_eval(num_iterations, final=True)
    if args.capture_video:
        envs.protocol.record_video(args.env_id, eval_env_kwargs, lambda n: GreedyPolicy(
            n, encoder, agent, obs_scaling, action_space, horizon, args, device), os.path.join(run.dir, "videos"), seed=args.seed)
    if args.save_model:
        save(num_iterations)
    run.finish(timing)  # the time split printed; the checkpoint as a wandb artifact; the logs closed
    envs_.close()
