"""Policies: everything the daemon needs to decide, without torch.

Every policy (heuristic, exported learned actor, A2C export) speaks this protocol over a batch of
B decisions, so the simulator's vector envs, ``lbagent eval`` and the daemon (B = 1) drive them alike.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from lbagent.spaces import RawObservation


class Policy(Protocol):
    name: str

    def begin_trial(self, batch: int, seed: int) -> None:
        """Start a trial: forget all per-environment memory (RL² hidden state, round-robin index)."""

    def act(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        """Choose one action per row: obs (B, OBS_DIM) from ``encode(raw)``, mask (B, N_ACTIONS)."""

    def observe(self, reward: np.ndarray, episode_start: np.ndarray) -> None:
        """Feedback after the step: per-row reward and whether that row's next decision opens an episode."""
