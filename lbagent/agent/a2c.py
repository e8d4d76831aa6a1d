"""The A2C baseline: stable-baselines3's A2C with its default hyperparameters on the same simulator.

No hand-written A2C: this module only adapts the contract vector env to SB3's ``VecEnv`` API and
exports the trained network to a policy file the numpy :class:`~lbagent.policy.numpy_actor.MlpActor`
runs.

Invalid actions. SB3's A2C cannot mask its categorical policy, so the adapter maps an invalid
choice to a valid slot with :func:`~lbagent.policy.numpy_actor.remap_masked_actions` (the
(a mod n_valid)-th valid action) before stepping the simulator; the exported actor applies the same
map, so what was trained is what runs. The agent sees the consequences of the remapped action, so it
can learn which outputs are aliases of which slots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from lbagent.agent.train import EVAL_SEED, PRESETS, _progress, current_command, evaluate_actor, make_suite_env
from lbagent.policy.numpy_actor import MlpActor, remap_masked_actions
from lbagent.spaces import N_ACTIONS, gym_spaces


class ContractVecEnv(VecEnv):
    """SB3's VecEnv over a contract vector env (already vectorized and autoresetting in the same step)."""

    render_mode = None

    def __init__(self, env, num_envs: int):
        super().__init__(num_envs, *gym_spaces())
        self.env = env
        self._seed = 0
        self._actions = np.zeros(num_envs, np.int64)
        self.mask = np.ones((num_envs, N_ACTIONS), bool)
        self.finished: list = []
        """EpisodeStats of every episode finished since the last read (for logging)."""

    def reset(self):
        obs, info = self.env.reset(seed=self._seed)
        self.mask = info["action_mask"]
        return obs

    def seed(self, seed: int | None = None):
        self._seed = 0 if seed is None else int(seed)
        return [self._seed + i for i in range(self.num_envs)]

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = remap_masked_actions(np.asarray(actions).reshape(-1), self.mask)

    def step_wait(self):
        obs, reward, terminated, truncated, info = self.env.step(self._actions)
        self.mask = info["action_mask"]
        self.finished += [s for s in (info.get("episode") or ()) if s is not None]
        dones = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        return obs, np.asarray(reward, np.float32), dones, [{} for _ in range(self.num_envs)]

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name, indices=None):
        return [getattr(self, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name, value, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name, *args, indices=None, **kwargs):
        raise NotImplementedError(f"{method_name}: the contract env has no per-row methods")

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._indices(indices))

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)


def export_weights(model) -> tuple[dict[str, np.ndarray], dict]:
    """SB3 MlpPolicy actor -> the MlpActor's tensor names (pi.i.*, action.*) and arch."""
    state = model.policy.state_dict()
    linear = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith("mlp_extractor.policy_net.")},
                    key=lambda name: int(name.rsplit(".", 1)[1]))
    weights = {}
    for i, name in enumerate(linear):
        weights[f"pi.{i}.weight"] = state[f"{name}.weight"].numpy()
        weights[f"pi.{i}.bias"] = state[f"{name}.bias"].numpy()
    weights["action.weight"] = state["action_net.weight"].numpy()
    weights["action.bias"] = state["action_net.bias"].numpy()
    return weights, {"layers": len(linear), "activation": "tanh", "invalid_actions": "remap"}


class _Progress(BaseCallback):
    def __init__(self, advance):
        super().__init__()
        self.advance = advance

    def _on_step(self) -> bool:
        self.advance(self.num_timesteps)
        return True


def steps_of_run(run_dir: Path) -> int:
    """Environment steps of a finished dreamer run (from its policy file), for a like-for-like A2C."""
    from lbagent.policy.files import PolicyFileError, read_policy_file

    _, meta = read_policy_file(Path(run_dir) / "policy.safetensors")
    try:
        return int(meta["training"]["env_steps"])
    except (KeyError, TypeError, ValueError):
        raise PolicyFileError(f"{run_dir}/policy.safetensors: metadata has no training.env_steps") from None


def train_a2c(preset_name: str, seed: int, out: Path, env_steps: int | None, progress: bool = True):
    """Train SB3 A2C (defaults) for ``env_steps`` (default: the preset's) and write a policy file."""
    from stable_baselines3 import A2C

    from lbagent.policy.files import save_policy
    from lbagent.policy.heuristics import make_heuristic

    preset = PRESETS[preset_name]
    cfg = preset.config
    steps = env_steps or cfg.env_steps
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    venv = ContractVecEnv(make_suite_env(preset.train_suite, cfg.num_envs, seed), cfg.num_envs)
    model = A2C("MlpPolicy", venv, seed=seed, device="cpu")
    with _progress(progress, steps, 0) as advance:
        model.learn(total_timesteps=steps, callback=_Progress(advance))
    weights, arch = export_weights(model)
    actor = MlpActor(weights, arch, name="a2c")
    result = evaluate_actor(actor, preset.eval_suite, cfg.eval_episodes)
    baseline = evaluate_actor(make_heuristic("random", EVAL_SEED), preset.eval_suite, cfg.eval_episodes)
    final = {"kind": "eval", "env_steps": int(model.num_timesteps), "suite": preset.eval_suite,
             "episodes": cfg.eval_episodes, "seed": EVAL_SEED, "mean_jct": result["mean_jct"],
             "p99_jct": result["p99_jct"], "random_mean_jct": baseline["mean_jct"],
             "per_scenario": result["per_scenario"]}
    meta = {"algorithm": "a2c", "arch": arch, "preset": preset.name, "seed": seed, "command": current_command(),
            "train_suite": preset.train_suite, "evaluation": final,
            "training": {"env_steps": int(model.num_timesteps), "num_envs": cfg.num_envs,
                         "hyperparameters": "stable-baselines3 A2C defaults", "sb3_version": _sb3_version()}}
    path = save_policy(out / "policy.safetensors", weights, meta)
    return path, final


def _sb3_version() -> str:
    import stable_baselines3

    return stable_baselines3.__version__
