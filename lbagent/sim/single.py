"""A single ``gymnasium.Env`` over any contract vector env with one row, for libraries that want one.

The vector envs reset in the same step an episode ends, and a trial spans several episodes, so
this wrapper keeps that flow: after ``terminated`` the returned observation is already the next
episode's first decision, and a following ``reset()`` without a seed simply hands it out again
instead of starting yet another episode (which would skip an episode of the trial and break the
common random numbers that make policies comparable). ``reset(seed=...)`` restarts from scratch.
No observation is lost at termination: the contract has no terminal state to bootstrap from.

Invalid actions (a missing slot) raise ``ValueError``; masking is the learner's job, and
``info["action_mask"]`` gives the valid ones for every decision.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from lbagent import spaces


class ContractEnv(gymnasium.Env):
    """One environment of a contract vector env (``num_envs == 1``) as a plain gymnasium Env."""

    metadata = {"render_modes": []}

    def __init__(self, vector_env) -> None:
        if vector_env.num_envs != 1:
            raise ValueError(f"ContractEnv wraps a vector env with num_envs=1, got {vector_env.num_envs}")
        self.vector_env = vector_env
        self.observation_space, self.action_space = spaces.gym_spaces()
        self._pending: tuple[np.ndarray, dict[str, Any]] | None = None
        self._mask = np.zeros(spaces.N_ACTIONS, dtype=bool)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None and self._pending is not None:
            obs, info = self._pending
        else:
            obs, info = self.vector_env.reset(seed=seed)
            obs, info = obs[0], _row(info)
        self._pending = None
        self._mask = info["action_mask"]
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.vector_env.step(np.asarray([action]))
        obs, row = obs[0], _row(info)
        if terminated[0]:
            self._pending = (obs, row)
        self._mask = row["action_mask"]
        return obs, float(reward[0]), bool(terminated[0]), bool(truncated[0]), row

    def action_masks(self) -> np.ndarray:
        """The valid actions of the current decision (the name sb3-contrib's maskable PPO looks for)."""
        return self._mask


def _row(info: dict[str, Any]) -> dict[str, Any]:
    """Row 0 of a vector info dict; the finished episode's stats go under ``episode_stats``
    (``episode`` is reserved by stable-baselines3's monitor for its own dict)."""
    out: dict[str, Any] = {
        "raw": info["raw"].take(slice(0, 1)),
        "action_mask": info["action_mask"][0],
        "trial_start": bool(info["trial_start"][0]),
        "episode_start": bool(info["episode_start"][0]),
    }
    episodes = info.get("episode")
    if episodes is not None and episodes[0] is not None:
        out["episode_stats"] = episodes[0]
    return out
