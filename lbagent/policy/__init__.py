"""Policies: everything the daemon needs to decide, without torch.

Every policy (heuristic, exported learned actor, A2C export) speaks this protocol over a batch of
B decisions, so the simulator's vector envs, ``lbagent eval`` and the daemon (B = 1) drive them alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the command line imports this package for its help texts, without numpy
    import numpy as np

    from lbagent.spaces import RawObservation


class Policy(Protocol):
    @property
    def name(self) -> str:
        """What tables and logs call it: the heuristic's or shipped policy's name, or the file's path."""

    @property
    def metadata(self) -> Mapping[str, Any]:
        """Where the policy came from: a policy file's recorded metadata (``algorithm``, ``preset``,
        ``seed``, ``command``, ``evaluation``...); a heuristic says only ``algorithm: heuristic``."""

    def begin_trial(self, batch: int, seed: int) -> None:
        """Start a trial: forget all per-environment memory (RL² hidden state, round-robin index)."""

    def act(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        """Choose one action per row: obs (B, OBS_DIM) from ``encode(raw)``, mask (B, N_ACTIONS)."""

    def observe(self, reward: np.ndarray, episode_start: np.ndarray) -> None:
        """Feedback after the step: per-row reward and whether that row's next decision opens an episode."""


def resolve_policy(spec: str, seed: int = 0) -> Policy:
    """What every ``--policy`` and the config's ``policy`` accept: a heuristic name, a shipped
    policy name or a policy file (numpy only). A bad one is a UserError naming it.

    ``seed`` seeds a randomized heuristic; learned policies are seeded by ``begin_trial``."""
    from lbagent.policy.files import load_policy
    from lbagent.policy.heuristics import make_heuristic
    from lbagent.policy.specs import is_heuristic

    return make_heuristic(spec, seed) if is_heuristic(spec) else load_policy(spec)
