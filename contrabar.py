# ContraBAR: Choshen & Tamar, "ContraBAR: Contrastive Bayes-Adaptive Deep RL", ICML 2023.
# A GRU history encoder h_t = f(tau_{:t}) trained by contrastive predictive coding (CPC). From h_t and the
# actions that follow, a second GRU predicts embeddings of the future observations (r, s') k = 1..K steps ahead,
# and an InfoNCE loss tells the true future from the same step of other trajectories in the batch: a sufficient
# statistic of the belief, learned without reconstructing anything. PPO acts on (s, h), the encoder detached.
# Run `python contrabar.py --help` for every flag.
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

    # Algorithm: PPO on the history-augmented state
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
    """the maximum gradient norm, applied to the actor, the critic and the encoder separately"""
    max_std: float | None = 1.0
    """Gaussian policies: the std's upper bound, a fraction of the action bounds' half-width; the log-std starts
    there at most and is projected back under it after every step (--max-std None: unbounded)"""
    policy_hidden: int = 128
    """width of the two hidden layers of the actor and of the critic"""
    norm_reward: bool | None = None
    """scale PPO's rewards by the return's running std (default: continuous only)"""
    time_feature: bool = True
    """give the actor and critic the elapsed fraction t/H of the episode"""

    # Algorithm: the contrastive history encoder (CPC)
    embed_dim: int | None = None
    """size of the state, action and reward embeddings (default: 16 discrete, 32 cont.)"""
    encoder_hidden: int = 64
    """width of the two layers between the embeddings and the GRU"""
    gru_hidden: int = 128
    """size of the GRU hidden state h, the policy's summary of the history"""
    cpc_dim: int = 64
    """size of the embeddings of future observations the InfoNCE loss compares"""
    cpc_steps: int = 8
    """K: how many steps ahead each history predicts"""
    cpc_anchors: int = 15
    """histories per episode scored at each encoder step (sampled; all if >= H)"""
    negatives: Literal["other-steps", "same-step"] = "other-steps"
    """where negatives come from (README)"""
    num_negatives: int = 15
    """negatives per query with --negatives other-steps, drawn uniformly with replacement"""
    scorer: Literal["mlp", "dot"] = "mlp"
    """how a query and a future are scored"""
    encoder_learning_rate: float = 1e-3
    """learning rate of the encoder optimizer"""
    encoder_updates: int | None = None
    """encoder steps per iteration (default: 8 discrete, 2 continuous; 0 freezes it)"""
    encoder_batch_episodes: int = 64
    """episodes per encoder step, from the buffer; negatives come from the others"""
    encoder_buffer_episodes: int = 10000
    """the encoder trains on the last this many episodes"""


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
    """h_t = f(tau_{:t}): embeddings of (a_{t-1}, r_t, s_t) -> 2 FC -> GRU."""

    def __init__(self, obs_dim: int, action_dim: int, args: Args):
        super().__init__()
        self.state_embed = nn.Sequential(nn.Linear(obs_dim, args.embed_dim), nn.ReLU())
        self.action_embed = nn.Sequential(nn.Linear(action_dim, args.embed_dim), nn.ReLU())
        self.reward_embed = nn.Sequential(nn.Linear(1, args.embed_dim), nn.ReLU())
        self.fc = nn.Sequential(
            nn.Linear(3 * args.embed_dim, args.encoder_hidden), nn.ReLU(),
            nn.Linear(args.encoder_hidden, args.encoder_hidden), nn.ReLU(),
        )
        self.gru = nn.GRU(args.encoder_hidden, args.gru_hidden)

    def forward(self, hidden, prev_actions, rewards, obs):
        """Steps (T, B, ...) from the GRU state ``hidden`` (B, gru_hidden) in one fused GRU call: inputs (a_{t-1}, r_t,
        s_t); returns the last GRU state and each step's history summary h_t (T, B, gru_hidden)."""
        parts = [self.action_embed(prev_actions), self.reward_embed(rewards), self.state_embed(obs)]
        hiddens, hidden = self.gru(self.fc(torch.cat(parts, -1)), hidden[None])
        return hidden[0], hiddens


class FuturePredictor(nn.Module):
    """The CPC heads: an action GRU rolls h_t forward over a_t, ..., a_{t+k-1} to a query for step k, and an
    observation encoder embeds what step k brought, (r_{t+k-1}, s_{t+k})."""

    def __init__(self, obs_dim: int, action_dim: int, args: Args):
        super().__init__()
        self.action_embed = nn.Sequential(nn.Linear(action_dim, args.embed_dim), nn.ReLU())
        self.action_gru = nn.GRUCell(args.embed_dim, args.gru_hidden)
        self.query = nn.Linear(args.gru_hidden, args.cpc_dim)
        self.future = mlp(obs_dim + 1, args.encoder_hidden, args.cpc_dim, out_std=1.0)
        if args.scorer == "mlp":  # one hidden layer on (query, candidate); its candidate half is the embedding's last layer
            self.scorer = nn.ModuleDict({"query": layer_init(nn.Linear(args.cpc_dim, args.cpc_dim)),
                                         "out": layer_init(nn.Linear(args.cpc_dim, 1), std=1.0)})
        else:
            self.scorer = None

    def queries(self, hidden, future_actions):
        """(K, ..., cpc_dim) queries from hidden (..., G) and the next K actions (K, ..., A)."""
        context, out = hidden.reshape(-1, hidden.shape[-1]), []
        for action in future_actions:
            context = self.action_gru(self.action_embed(action.reshape(-1, action.shape[-1])), context)
            out.append(self.query(context).reshape(*hidden.shape[:-1], -1))
        return torch.stack(out)

    def embed(self, reward, next_obs):
        return self.future(torch.cat([reward[..., None], next_obs], -1))

    def score(self, queries, candidates):
        """Logits (..., C) of queries (..., D) against candidates (..., C, D): an MLP's
        w . relu(W q + c) + b (c is already a learned linear map of what the step brought), or the dot product."""
        if self.scorer is None:
            return (candidates @ queries[..., None]).squeeze(-1)
        hidden = F.relu(self.scorer["query"](queries)[..., None, :] + candidates)
        return self.scorer["out"](hidden).squeeze(-1)


class Agent(nn.Module):
    """Actor and critic on (s, h); h is detached from the encoder."""

    def __init__(self, obs_dim: int, action_space, args: Args):
        super().__init__()
        in_dim = obs_dim + args.gru_hidden + int(args.time_feature)
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


def policy_input(obs, step: int, horizon: int, hidden, args: Args):
    """(s, [t/H], h): what the actor and critic see."""
    parts = [obs, hidden]
    if args.time_feature:
        parts.insert(1, torch.full_like(obs[:, :1], step / horizon))
    return torch.cat(parts, -1)


# ALGO LOGIC: the objective
def infonce_loss(logits, labels, valid):
    """InfoNCE: the mean cross-entropy of picking each query's positive (index ``labels``) among its candidates,
    ``logits`` (..., C), over the ``valid`` queries (...)."""
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    valid = valid.reshape(-1).float()
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def negative_candidates(targets, all_targets, args):
    """Each query's candidates (K, N, B, C, D) and the index of its positive (K, N, B). With --negatives other-steps,
    the positive first and then --num-negatives targets of uniformly drawn steps of other episodes (the authors'
    sampling: the same (r, s') at the same step of another episode is then rarely a negative); with same-step, the
    targets of every episode at the query's step, its own being the positive."""
    horizon, num_envs = all_targets.shape[:2]
    if args.negatives == "same-step":
        candidates = targets[:, :, None].expand(-1, -1, num_envs, -1, -1)  # (K, N, B, B, D): every episode's target
        return candidates, torch.arange(num_envs, device=targets.device).expand(targets.shape[:-1])
    shape = (*targets.shape[:-1], args.num_negatives)
    other_env = (torch.arange(num_envs, device=targets.device)[:, None] + torch.randint(
        1, num_envs, shape, device=targets.device)) % num_envs  # never the query's own episode
    negatives = all_targets[torch.randint(horizon, shape, device=targets.device), other_env]
    return torch.cat([targets[..., None, :], negatives], -2), torch.zeros(shape[:-1], dtype=torch.long, device=targets.device)


def cpc_loss(encoder, predictor, batch, args, device):
    """The ContraBAR objective on a batch of episodes: InfoNCE of the futures 1..K steps after sampled histories;
    returns (loss, dict of terms)."""
    obs, actions_onehot, rewards, next_obs, session_done = batch
    hiddens = encode_episodes(encoder, obs, actions_onehot, rewards, args, device)
    horizon, num_envs = rewards.shape
    if args.cpc_anchors >= horizon:
        anchors = torch.arange(horizon, device=device)
    else:
        anchors = torch.randperm(horizon)[: args.cpc_anchors].to(device)
    steps = anchors[None, :] + torch.arange(args.cpc_steps, device=device)[:, None]  # (K, N): step t + k - 1
    valid = (steps < horizon)[..., None].expand(-1, -1, num_envs)  # futures past the episode's end do not count
    steps = steps.clamp(max=horizon - 1)
    queries = predictor.queries(hiddens[anchors], actions_onehot[steps])  # (K, N, B, cpc_dim)
    all_targets = predictor.embed(rewards, next_obs)  # (H, B, cpc_dim): what every step brought
    candidates, labels = negative_candidates(all_targets[steps], all_targets, args)
    loss = infonce_loss(predictor.score(queries, candidates), labels, valid)
    return loss, {"infonce": loss}


def cpc_update(encoder, predictor, optimizer, batch, args, device, iteration: int):
    """One gradient step of the encoder on ``batch``, its gradient clipped to --max-grad-norm; returns (loss, terms)."""
    loss, terms = cpc_loss(encoder, predictor, batch, args, device)
    optimizer.zero_grad()
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], args.max_grad_norm)
    envs.runs.check_finite(iteration, **{f"{k} loss": v for k, v in terms.items()}, encoder_gradient_norm=grad_norm)
    optimizer.step()
    return loss, terms


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
class HistoryState:
    """What the encoder carries from step to step: GRU state, last action and reward."""

    def __init__(self, num_envs: int, action_dim: int, args: Args, device):
        self.hidden = torch.zeros(num_envs, args.gru_hidden, device=device)
        self.prev_action = torch.zeros(num_envs, action_dim, device=device)
        self.reward = torch.zeros(num_envs, 1, device=device)

    def encode(self, encoder: Encoder, obs):
        """One step for every environment: the history summary after observing ``obs``."""
        self.hidden = encoder(self.hidden, self.prev_action[None], self.reward[None], obs[None])[0]
        return self.hidden

    def observe(self, action_onehot, reward):
        self.prev_action, self.reward = action_onehot, reward[:, None]


def encode_episodes(encoder, obs, actions_onehot, rewards, args, device):
    """Pass over whole episodes (H, B, ...) in one fused GRU call: the history summaries after each step, (H, B,
    gru_hidden), the same as HistoryState step by step."""
    horizon, num_envs = rewards.shape
    state = HistoryState(num_envs, actions_onehot.shape[-1], args, device)
    prev_actions = torch.cat([state.prev_action[None], actions_onehot[:-1]])
    prev_rewards = torch.cat([state.reward[None], rewards[:-1, :, None]])
    return encoder(state.hidden, prev_actions, prev_rewards, obs)[1]


class EpisodeBuffer:
    """A ring buffer of whole episodes for encoder training, stored (capacity, H, ...) and sampled as (H, batch, ...).
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
    """The policy of the evaluation protocol (envs.protocol): greedy actions on the history summary it carries on."""

    def __init__(self, num_envs: int, encoder, agent, obs_scaling, space, horizon: int, args: Args, device):
        self.encoder, self.agent, self.obs_scaling, self.space, self.horizon = encoder, agent, obs_scaling, space, horizon
        self.args, self.device, self.state = args, device, HistoryState(num_envs, action_size(space), args, device)

    @torch.no_grad()
    def act(self, obs, t: int) -> np.ndarray:
        obs = self.obs_scaling(obs)
        inputs = policy_input(obs, t, self.horizon, self.state.encode(self.encoder, obs), self.args)
        self.action = self.agent.get_action_and_value(inputs, deterministic=True)[0]
        return env_action(self.action, self.space)

    def observe(self, reward, info) -> None:
        self.state.observe(action_features(self.action, self.space),
                           torch.as_tensor(reward, dtype=torch.float32, device=self.device))


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
    predictor = FuturePredictor(obs_dim, action_dim, args).to(device)
    agent = Agent(obs_dim, action_space, args).to(device)
    obs_scaling = ObservationScaling(envs_.single_observation_space).to(device)
    encoder_optimizer = optim.Adam([*encoder.parameters(), *predictor.parameters()], lr=args.encoder_learning_rate)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    modules = {"encoder": encoder, "predictor": predictor, "agent": agent, "obs_scaling": obs_scaling}
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
            # ALGO LOGIC: the policy phase. A policy that learned while the encoder was still forming ignores what
            # its summaries hold later; a fresh one on the frozen encoder, with larger batches, learns to read them
            envs_.close()
            envs_ = envs.protocol.make_vector_env(args.env_id, args.policy_num_envs, env_kwargs)
            envs_.reset(seed=args.seed + 1)
            agent = Agent(obs_dim, action_space, args).to(device)
            optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
            modules["agent"], optimizers["policy"] = agent, optimizer
            print(f"policy phase from step {global_step:,}: the encoder is frozen; a fresh policy trains on "
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
            policy_inputs = torch.zeros((horizon, envs_.num_envs, obs_dim + args.gru_hidden + int(args.time_feature)),
                                        device=device)
        phase_start, phase_end = (encoder_iterations, num_iterations) if policy_phase else (0, encoder_iterations)
        progress = (iteration - 1.0 - phase_start) / (phase_end - phase_start)
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - 0.9 * progress)
        ent_coef = args.ent_coef * (1.0 - progress)

        # ALGO LOGIC: rollout of one whole episode in every environment
        tick = time.time()
        next_obs, _ = envs_.reset()
        state = HistoryState(envs_.num_envs, action_dim, args, device)
        with torch.no_grad():
            for t in range(horizon):
                obs[t] = obs_scaling(next_obs)
                policy_inputs[t] = policy_input(obs[t], t, horizon, state.encode(encoder, obs[t]), args)
                action, logprob, _, value = agent.get_action_and_value(policy_inputs[t])
                actions[t], logprobs[t], values[t] = action, logprob, value
                next_obs, reward, _, _, info = envs_.step(env_action(action, action_space))
                rewards[t] = torch.as_tensor(reward, dtype=torch.float32, device=device)
                session_done[t] = torch.as_tensor(info["session_done"], device=device)
                next_obs_buf[t] = obs_scaling(next_obs)
                envs.runs.check_finite(iteration, reward=rewards[t], observation=next_obs_buf[t])
                state.observe(action_features(action, action_space), rewards[t])
        global_step += policy_batch_size if policy_phase else batch_size
        episode_returns = rewards.sum(0)
        timing["rollout"] += time.time() - tick

        # ALGO LOGIC: encoder update by InfoNCE on episodes from the buffer
        tick = time.time()
        if not policy_phase:
            buffer.add(obs, action_features(actions, action_space), rewards, next_obs_buf, session_done)
        loss, terms = torch.zeros(()), {}
        for _ in range(0 if policy_phase else args.encoder_updates):
            loss, terms = cpc_update(encoder, predictor, encoder_optimizer, buffer.sample(args.encoder_batch_episodes), args,
                                     device, iteration)
        timing["encoder"] += time.time() - tick

        # ALGO LOGIC: PPO on the history-augmented states; the horizon is the task's end, so no bootstrap
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
            "losses/cpc": loss.item(), **{f"losses/{k}": v.item() for k, v in terms.items()}}, f" | infonce {loss.item():.3f}")
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
