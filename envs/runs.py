"""What every algorithm script of the library shares that is not its algorithm: the settings that depend on the
environment family, checking the command line, the run's folder with its logs and evaluation record, checkpoints
and resume, and Ctrl-C. A script reads as CleanRL's do; this module keeps the bookkeeping out of its way.

A checkpoint holds tensors and plain data only (it is loaded with ``weights_only=True``): the modules' and
optimizers' states, every random generator (torch, numpy, Python, CUDA, each environment's), the settings and the
script's progress, so that a resumed run continues exactly where the checkpoint was written.
"""

import dataclasses
import json
import math
import os
import random
import resource
import signal
import time
from dataclasses import asdict

import gymnasium as gym
import numpy as np
import torch
import tyro
from torch.utils.tensorboard import SummaryWriter

from envs import protocol

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
          **{name: (lambda v: v > 0, "> 0") for name in ("learning_rate", "encoder_learning_rate", "clip_coef",
                                                         "max_grad_norm", "dirichlet_alpha", "max_std")},
          **{name: (lambda v: v >= 0, "an integer >= 0") for name in ("eval_every", "encoder_updates",
                                                                       "encoder_train_steps", "small_batch_steps",
                                                                       "head_delay")}}
CHECKPOINT_FORMAT = 1
# what --resume may change; every other setting is the checkpoint's, so that a resumed run continues the run it names
RESUMABLE = ("total_timesteps", "eval_every", "log_every", "num_threads", "cuda", "track", "wandb_project_name",
             "wandb_entity", "wandb_group", "capture_video")


def parse_args(args_class, script: str):
    """The command line as ``args_class``; with --resume, parsed again with the checkpoint's settings as defaults, of
    which only those in RESUMABLE may change. Returns (args, checkpoint or None)."""
    args = tyro.cli(args_class)
    if not args.resume:
        return args, None
    checkpoint = load_checkpoint(args.resume, "cpu", script)
    return resume_args(tyro.cli(args_class, default=args_class(**checkpoint["args"])), checkpoint), checkpoint


def check_args(args) -> tuple[dict, dict]:
    """Fail before anything is written, with one line naming the flag, its value and what is allowed. Returns the
    environment's settings for training and for evaluation."""
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
    try:
        env_kwargs = protocol.parse_env_settings(args.env_id, args.env_kwargs)
        return env_kwargs, {**env_kwargs, **protocol.parse_env_settings(args.env_id, args.eval_env_kwargs,
                                                                        "--eval-env-kwargs")}
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def make_envs(args, env_kwargs: dict, eval_env_kwargs: dict, script: str) -> gym.vector.VectorEnv:
    """The training environments (``args.num_envs`` in lock-step), after checking that the evaluation's can be made
    too and that the actions are Discrete or Box; then :func:`fill_family_defaults`."""
    try:
        envs_ = protocol.make_vector_env(args.env_id, args.num_envs, env_kwargs)
        protocol.make_vector_env(args.env_id, 1, eval_env_kwargs).close()  # checked before training, not after
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if not isinstance(envs_.single_action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        raise SystemExit(f"error: {args.env_id} has {envs_.single_action_space}; {script} handles Discrete and Box "
                         "actions")
    fill_family_defaults(args, envs_)
    return envs_


def fill_family_defaults(args, envs_) -> None:
    """Settings left unset (None) take their environment family's value (discrete or continuous actions); the state
    decoder is on where the environment says that its dynamics change with the latent."""
    family = "discrete" if isinstance(envs_.single_action_space, gym.spaces.Discrete) else "continuous"
    for name, value in {**FAMILY_DEFAULTS[family], **ENV_DEFAULTS.get(args.env_id, {})}.items():
        if getattr(args, name, False) is None:  # (a setting this algorithm does not have is skipped)
            setattr(args, name, value)
    if getattr(args, "state_decoder", False) is None:
        args.state_decoder = protocol.latent_changes_dynamics(args.env_id)


def iterations(args, first_steps: int, batch_size: int, second_batch_size: int, checkpoint: dict | None = None):
    """(iterations of the first phase, all iterations) of a run of ``args.total_timesteps`` whose first ``first_steps``
    (0: all) are collected ``batch_size`` at a time and the rest ``second_batch_size`` at a time; a checkpoint to
    resume that has done them all is an error."""
    if 0 < first_steps < args.total_timesteps:
        first = max(1, first_steps // batch_size)
        total = first + max(1, (args.total_timesteps - first * batch_size) // second_batch_size)
    else:
        first = total = max(1, args.total_timesteps // batch_size)
    if checkpoint is not None and checkpoint["iteration"] >= total:
        raise SystemExit(f"error: --resume {args.resume!r}: the run has finished its {total} iterations; a larger "
                         "--total-timesteps extends it")
    return first, total


def check_finite(iteration: int, **values) -> None:
    """Stop the run where a loss, gradient norm, reward or observation is NaN or infinite, before anything is saved."""
    for name, value in values.items():
        if not bool(torch.isfinite(torch.as_tensor(value)).all()):
            raise SystemExit(f"error: the {name.replace('_', ' ')} is not finite at iteration {iteration}: the run "
                             "stops here (its last checkpoint, if any, is from before)")


def save_checkpoint(path: str, script: str, modules: dict, optimizers: dict, args, envs_, progress: dict) -> None:
    """Everything needed to continue the run exactly, as tensors and plain data, written atomically (a kill leaves
    the previous checkpoint or this one). ``progress``: step, iteration, evaluations, an encoder's buffer."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    torch.save({"header": {"script": script, "format": CHECKPOINT_FORMAT, "env_id": args.env_id}, "args": asdict(args),
                "modules": {name: module.state_dict() for name, module in modules.items()},
                "optimizers": {name: optimizer.state_dict() for name, optimizer in optimizers.items()},
                "rng": {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                        "envs": protocol.generator_states(envs_)}, **progress}, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def load_checkpoint(path: str, device, script: str | None = None) -> dict:
    """The checkpoint at ``path``, loaded as data (weights_only: a file that would run code is refused), written by
    ``script`` (None: by any script of the library); one line on what is wrong otherwise."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise SystemExit(f"error: checkpoint {path!r}: " + ("the file is empty" if os.path.isfile(path)
                                                            else "no such checkpoint file"))
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


def resume_args(args, checkpoint: dict):
    """``args`` parsed with the checkpoint's settings as defaults: only those in RESUMABLE may differ (printed)."""
    saved = checkpoint["args"]
    missing = [name for name in asdict(args) if name not in saved]
    if missing:
        raise SystemExit(f"error: --resume {args.resume!r} was written by an older version of the script, which had no "
                         f"{', '.join('--' + n.replace('_', '-') for n in missing)}: this version cannot continue it")
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
    protocol.set_generator_states(envs_, rng["envs"])


class Run:
    """A run's folder (TensorBoard log, eval.json, checkpoint.pt, videos/), wandb, and Ctrl-C: a first one sets
    ``stop_requested`` (the loop finishes its iteration and calls :meth:`stop`), a second aborts."""

    def __init__(self, args, script: str, bayes_return: float | None, checkpoint: dict | None = None):
        self.args, self.script, self.bayes_return = args, script, bayes_return
        self.evaluations = checkpoint["evaluations"] if checkpoint is not None else []
        global_step = self.start_step = checkpoint["global_step"] if checkpoint is not None else 0
        name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
        self.dir = os.path.dirname(os.path.abspath(args.resume)) if args.resume else args.run_dir or os.path.join("runs", name)
        self.checkpoint_path, self.eval_path = os.path.join(self.dir, "checkpoint.pt"), os.path.join(self.dir, "eval.json")
        os.makedirs(self.dir, exist_ok=True)
        if args.track:
            import wandb

            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, group=args.wandb_group,
                       sync_tensorboard=True, config=vars(args), name=os.path.basename(self.dir), dir=self.dir,
                       save_code=True)
        # on resume, TensorBoard hides what a killed run logged after its checkpoint, which the resumed run logs again
        self.writer = SummaryWriter(self.dir, purge_step=global_step + 1 if checkpoint is not None else None)
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in
                                                                                    vars(args).items()))
        if checkpoint is not None:
            print(f"resumed {self.dir} at iteration {checkpoint['iteration'] + 1}, step {global_step}")
        self.stop_requested = []
        signal.signal(signal.SIGINT, self._request_stop)
        self.start_time = time.time()
        self.train_time_before = self.evaluations[-1]["train_time"] if self.evaluations else 0.0
        self.wall_time_before = self.evaluations[-1]["wall_time"] if self.evaluations else 0.0

    def _request_stop(self, signum, frame):
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested.append(signum)
        print("\nstopping after this iteration" + (" and saving a checkpoint" if self.args.save_model else
              " (no checkpoint: run with --save-model to keep it)") + "; Ctrl-C again aborts", flush=True)

    def record(self, result: dict, iteration: int, global_step: int, timing: dict, final: bool = False) -> None:
        """Add one evaluation of envs.protocol.evaluate to the run's record: TensorBoard, eval.json (written
        atomically, all evaluations so far) and one printed line."""
        result.update(iteration=iteration, global_step=global_step,
                      train_time=self.train_time_before + sum(v for k, v in timing.items() if k != "eval"),
                      wall_time=self.wall_time_before + time.time() - self.start_time,
                      peak_memory_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # resident set
        if self.bayes_return:  # (a reference of 0, e.g. with every reward 0, has no fraction)
            result["fraction_of_bayes_optimal"] = result["return"] / self.bayes_return
        self.evaluations.append(result)
        self.writer.add_scalar("eval/return", result["return"], global_step)
        self.writer.add_scalar("charts/peak_memory_mib", result["peak_memory_mib"], global_step)
        for s, value in enumerate(result["return_per_session"]):
            self.writer.add_scalar(f"eval/return_per_session/{s}", value, global_step)
        for e, value in enumerate(result["consecutive_episode_returns"]):
            self.writer.add_scalar(f"eval/consecutive_episode_return/{e}", value, global_step)
        for name, value in result.get("session_detection", {}).items():
            self.writer.add_scalar(f"eval/session_{name}", value, global_step)
        with open(f"{self.eval_path}.tmp", "w") as f:
            json.dump({"args": vars(self.args), "bayes_optimal_return": self.bayes_return, "finished": final,
                       "time": {k: round(v, 2) for k, v in timing.items()}, "evaluations": self.evaluations}, f, indent=1)
        os.replace(f"{self.eval_path}.tmp", self.eval_path)
        sessions = " ".join(f"{v:.2f}" for v in result["return_per_session"])
        print(f"eval  iter {iteration}: return {result['return']:.2f} ± {result['return_std']:.2f}"
              + (f" ({result['return'] / self.bayes_return:.1%} of Bayes-optimal)" if self.bayes_return else "")
              + f" | per session {sessions}"
              + (f" | 5 episodes {' '.join(f'{v:.1f}' for v in result['consecutive_episode_returns'])}" if final else "")
              + (" | head's recall " + " ".join(f"{rates['recall']:.2f}" for rates in result["consecutive_session_detection"])
                 if final and "consecutive_session_detection" in result else ""))

    def log(self, iteration: int, num_iterations: int, global_step: int, mean_return: float, timing: dict,
            scalars: dict, extra: str = "") -> None:
        """One iteration's ``scalars`` to TensorBoard, with the mean training return, env steps per second and the time
        split; every --log-every iterations (and at the last) a progress line, ``extra`` appended."""
        sps = int((global_step - self.start_step) / (time.time() - self.start_time))
        for name, value in {"charts/episodic_return": mean_return, "charts/SPS": sps, **scalars,
                            **{f"time/{k}": v for k, v in timing.items()}}.items():
            self.writer.add_scalar(name, value, global_step)
        if iteration % self.args.log_every == 0 or iteration == num_iterations:
            bayes = self.bayes_return
            print(f"iter {iteration}/{num_iterations} | step {global_step:,} | {sps:,} steps/s | return {mean_return:.2f}"
                  + (f" ({mean_return / bayes:.1%} of Bayes-optimal {bayes:.2f})" if bayes else "") + extra, flush=True)

    def save(self, modules: dict, optimizers: dict, envs_, progress: dict) -> None:
        """A checkpoint of the run (``progress``: global_step, iteration, an encoder's buffer; the evaluations are
        added); what was logged up to it is flushed, so that it survives a kill."""
        self.writer.flush()
        save_checkpoint(self.checkpoint_path, self.script, modules, optimizers, self.args, envs_,
                        {**progress, "evaluations": self.evaluations})

    def stop(self, iteration: int, save) -> None:
        """After a Ctrl-C: ``save()`` a checkpoint with --save-model, then exit with 130."""
        if self.args.save_model:
            save()
            print(f"stopped at iteration {iteration}: continue with --resume {self.checkpoint_path}")
        raise SystemExit(130)

    def finish(self, timing: dict) -> None:
        """The time split printed; the final checkpoint (if saved) as a wandb artifact; the logs closed."""
        total = sum(timing.values())
        print("time: " + ", ".join(f"{name} {seconds:.0f}s ({seconds / total:.0%})" for name, seconds in timing.items()))
        if self.args.save_model:
            print(f"checkpoint: {self.checkpoint_path}")
        if self.args.track:
            import wandb

            if self.args.save_model:  # the final checkpoint as a wandb artifact of the run
                artifact = wandb.Artifact(f"{self.args.exp_name}__{self.args.env_id.split('/')[-1]}__seed"
                                          f"{self.args.seed}", type="model")
                artifact.add_file(self.checkpoint_path)
                wandb.log_artifact(artifact)
        self.writer.close()
        if self.args.track:
            wandb.finish()
