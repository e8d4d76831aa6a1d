"""Sequence replay for a lock-step vector env: one FIFO ring per env row, sampled as (T, B) windows.

Besides the transition itself, each step keeps the RL² actor's inputs at that decision (its hidden
state before acting, the previous action and reward), so imagination can start from the actor's real
memory at any replayed point (after a burn-in over the window with the current weights), and the
teacher heuristic's action at that state (the behaviour-cloning label; -1 without a teacher).
"""

from __future__ import annotations

import numpy as np
import torch

from lbagent.spaces import N_ACTIONS, OBS_DIM

FIELDS: dict[str, tuple[tuple[int, ...], type]] = {
    "obs": ((OBS_DIM,), np.float32),
    "mask": ((N_ACTIONS,), np.bool_),
    "first": ((), np.bool_),
    "trial_first": ((), np.bool_),
    "action": ((), np.int64),
    "teacher_action": ((), np.int64),
    "reward": ((), np.float32),
    "terminal": ((), np.bool_),
    "prev_action": ((), np.int64),
    "prev_reward": ((), np.float32),
    "prev_valid": ((), np.bool_),
}


class SequenceReplay:
    def __init__(self, capacity: int, num_envs: int, hidden: int, seed: int):
        self.per_env = max(1, capacity // num_envs)
        self.num_envs = num_envs
        shapes = dict(FIELDS, hidden=((hidden,), np.float32))
        self.data: dict[str, np.ndarray] = {k: np.zeros((self.per_env, num_envs, *shape), dtype) for k, (shape, dtype) in shapes.items()}
        self.pos = 0
        self.filled = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.filled * self.num_envs

    def add(self, step: dict[str, np.ndarray]) -> None:
        """Append one lock-step row: every field with leading dimension num_envs."""
        for key, arr in self.data.items():
            arr[self.pos] = step[key]
        self.pos = (self.pos + 1) % self.per_env
        self.filled = min(self.filled + 1, self.per_env)

    def sample(self, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
        """``batch`` windows of ``seq_len`` consecutive steps of one row each, time-major (T, B, ...)."""
        if self.filled < seq_len:
            raise ValueError(f"replay holds {self.filled} steps per env, fewer than seq_len={seq_len}")
        rows = self.rng.integers(0, self.num_envs, size=batch)
        starts = self.rng.integers(0, self.filled - seq_len + 1, size=batch)
        oldest = (self.pos - self.filled) % self.per_env
        t_idx = (oldest + starts[None, :] + np.arange(seq_len)[:, None]) % self.per_env  # (T, B)
        return {k: torch.from_numpy(v[t_idx, rows[None, :]]) for k, v in self.data.items()}

    def state_dict(self) -> dict:
        return {"data": self.data, "pos": self.pos, "filled": self.filled, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.data = state["data"]
        self.pos, self.filled = state["pos"], state["filled"]
        self.rng.bit_generator.state = state["rng"]
