"""Teacher-guided start for DreamerV3 + RL²: a classic heuristic shows the agent good trajectories.

An hour on two cores buys a few thousand gradient updates, far too few for pure RL from scratch to
reach the heuristics' level. So a heuristic (the *teacher*) helps in two ways, both fading out:

* **collection**: during prefill every env row acts as the teacher does, then a share of the rows
  that decays linearly to zero; the world model first learns on the trajectories good dispatching
  produces, instead of on the random placements of an untrained actor;
* **behaviour cloning**: every replayed step stores the teacher's action *at that state*, whoever
  acted (so the labels also cover the states the actor's own mistakes lead to, as in DAgger), and a
  cross-entropy toward it is added to the imagination actor loss with a weight that decays to a
  small floor, so the actor starts at the teacher's level and RL then improves on it.

The actor, world model, critic and imagination objective are DreamerV3's unchanged; the teacher only
chooses data and adds one decaying loss term.
"""

from __future__ import annotations

import numpy as np
import torch

from lbagent.agent.config import DreamerConfig
from lbagent.policy.heuristics import make_heuristic
from lbagent.spaces import KERNEL, RawObservation


class Teacher:
    """Per row, the first heuristic of a preference list that the row's dynamics allow.

    ``kernel`` (defer to the kernel's balancer) is allowed only where the action mask offers
    ``KERNEL``; slot heuristics are allowed everywhere. So ``"kernel,sed"`` means: the kernel on
    hosts, shortest expected delay on Park, whose dynamics have no balancer.
    """

    def __init__(self, preference: str):
        names = [n.strip() for n in preference.split(",") if n.strip()]
        if not names:
            raise ValueError("teacher: empty heuristic list")
        if names[-1] == "kernel":
            raise ValueError(f"teacher {preference!r}: the last choice must be a slot heuristic (kernel may be masked)")
        self.names = names
        self.policies = [make_heuristic(n, seed=0) for n in names]

    def act(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        batch = len(obs)
        action = np.full(batch, -1, dtype=np.int64)
        for name, policy in zip(self.names, self.policies, strict=True):
            todo = action < 0
            if not todo.any():
                break
            allowed = todo & mask[:, KERNEL] if name == "kernel" else todo
            if name == "kernel":
                action[allowed] = KERNEL
            elif allowed.any():
                action[allowed] = policy.act(obs, raw, mask)[allowed]
        return action


def teacher_rows(cfg: DreamerConfig, env_steps: int) -> int:
    """How many env rows (the first ones) the teacher drives at this point of the run: all of them
    during prefill, then ``teacher_share`` of them, decaying linearly to none at ``teacher_decay``."""
    if not cfg.teacher:
        return 0
    if env_steps < cfg.prefill:
        return cfg.num_envs
    left = max(0.0, 1.0 - env_steps / max(1, cfg.teacher_decay))
    return int(round(cfg.num_envs * cfg.teacher_share * left))


def bc_weight(cfg: DreamerConfig, env_steps: int) -> float:
    """Weight of the behaviour-cloning term: ``bc_start`` decaying linearly to ``bc_floor`` at
    ``bc_decay`` environment steps, then constant (0 when there is no teacher)."""
    if not cfg.teacher:
        return 0.0
    left = max(0.0, 1.0 - env_steps / max(1, cfg.bc_decay))
    return cfg.bc_floor + (cfg.bc_start - cfg.bc_floor) * left


def bc_loss(log_probs: torch.Tensor, teacher_action: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the actor's masked log-probabilities (N, A) toward the teacher's actions
    (N,). Rows without a label (-1) or whose label the mask forbids (log-probability -inf) are left out."""
    logp = log_probs.gather(-1, teacher_action.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    valid = (teacher_action >= 0) & torch.isfinite(logp)
    if not valid.any():
        return log_probs.sum() * 0.0
    return -logp[valid].mean()
