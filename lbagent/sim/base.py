"""The interface every contract-speaking vector environment implements.

``reset(seed=s)`` -> ``(obs, info)`` and ``step(actions)`` -> ``(obs, reward, terminated,
truncated, info)`` as in ``gymnasium.vector.VectorEnv``, with B = ``num_envs`` rows:

- ``obs``: (B, OBS_DIM) float32, ``spaces.encode(info["raw"])``: the decision each env needs now.
- ``reward``: (B,) float64, ``spaces.reward`` of the task-time integral since the previous decision
  (including, on the last step of an episode, the drain of all remaining tasks).
- ``terminated``: (B,) bool; an env whose episode ended is reset in the same step (autoreset
  "same step"): the returned obs is already the new episode's first decision.
- ``info["raw"]``: the :class:`lbagent.spaces.RawObservation` of ``obs`` (heuristics read it).
- ``info["action_mask"]``: (B, N_ACTIONS) bool.
- ``info["episode"]``: present when any env terminated: a list of length B holding ``None`` or an
  :class:`EpisodeStats` for each env that just finished.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpisodeStats:
    """Per-task outcomes of one finished episode (the numbers ``lbagent eval`` reports)."""

    jct: np.ndarray
    """Completion time (exit - arrival) of every task, in the env's time unit."""
    slowdown: np.ndarray
    """jct / (task work / the fastest slot's capacity): 1.0 means as fast as the host allows."""
    episode_return: float

    @property
    def mean_jct(self) -> float:
        return float(self.jct.mean()) if self.jct.size else 0.0
