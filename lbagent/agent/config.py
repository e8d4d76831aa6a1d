"""Every choice of the DreamerV3 + RL² agent in one dataclass, so a run is described by one object.

Defaults follow the DreamerV3 paper (Hafner et al., 2023, "Mastering Diverse Domains through World
Models") where the paper fixes a value, and are scaled down where 2 CPU cores force it (model sizes,
batch, sequence length, train ratio). Presets in :mod:`lbagent.agent.train` override fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass
class DreamerConfig:
    # ---- world model sizes
    deter: int = 128
    """Size of the RSSM's deterministic (GRU) state h. The paper's S model uses 512; 128 keeps one
    update near 0.3 s on 2 cores, and the load-balancing observation is small (OBS_DIM = 151)."""
    stoch: int = 8
    """Number of categorical latent variables in the stochastic state z (paper: 32)."""
    classes: int = 8
    """Classes per latent variable (paper: 32). z is stoch x classes one-hot vectors."""
    units: int = 128
    """Width of every hidden MLP layer (encoder, decoder, heads, actor, critic)."""
    layers: int = 2
    """Hidden layers in the encoder, decoder, reward, continue, actor-head and critic MLPs."""
    unimix: float = 0.01
    """Mix of the uniform distribution into every categorical (latents and actor): 1 % as in the
    paper, so no log-probability is ever -inf and the KL stays finite."""
    bins: int = 255
    """Two-hot bins for the reward and critic heads, equally spaced in symlog space from -bin_range to
    bin_range (i.e. symexp-spaced in return units)."""
    bin_range: float = 20.0
    """symlog-space limit of the two-hot bins (symexp(20) ~ 5e8 covers any return here)."""

    # ---- world model loss
    kl_dyn: float = 0.5
    """Weight of the dynamics KL, KL(sg(posterior) || prior): trains the prior to predict z."""
    kl_rep: float = 0.1
    """Weight of the representation KL, KL(posterior || sg(prior)): keeps z predictable."""
    free_nats: float = 1.0
    """Free bits: each KL term is clipped below at this many nats so it cannot collapse the latent."""
    model_lr: float = 1e-4
    """Adam learning rate of the world model (paper: 1e-4)."""
    model_grad_clip: float = 1000.0
    """Global gradient-norm clip of the world model (paper: 1000)."""

    # ---- actor (RL²) and critic
    actor_hidden: int = 128
    """Size of the RL² actor's GRU state: the memory carried across the episodes of a trial."""
    gamma: float = 0.997
    """Discount per decision (paper: 1 - 1/333): a horizon of a few hundred task arrivals."""
    lam: float = 0.95
    """lambda of the lambda-returns in imagination (paper: 0.95)."""
    horizon: int = 15
    """Imagination horizon in decisions (paper: 15)."""
    imag_starts: int = 0
    """Replayed states imagination starts from per update; 0 = all batch x seq_len (the paper).
    Imagination and the actor-critic losses are most of an update's cost on a CPU, so a random subset
    buys more updates per hour."""
    actor_lr: float = 3e-5
    """Adam learning rate of the actor (paper: 3e-5)."""
    critic_lr: float = 3e-5
    """Adam learning rate of the critic (paper: 3e-5)."""
    ac_grad_clip: float = 100.0
    """Gradient-norm clip of actor and critic (paper: 100)."""
    entropy: float = 3e-4
    """Entropy bonus eta on normalized returns (paper: 3e-4)."""
    return_norm_decay: float = 0.99
    """EMA decay of the 5th and 95th percentiles of the lambda-returns (paper: 0.99)."""
    return_norm_floor: float = 1.0
    """Returns are divided by max(floor, P95 - P5): small returns are not blown up (paper: 1)."""
    slow_critic_fraction: float = 0.02
    """EMA step of the slow critic toward the critic after every update (paper: 0.02)."""
    slow_critic_reg: float = 1.0
    """Weight of the critic's cross-entropy toward the slow critic's prediction (paper: 1)."""

    # ---- data and schedule
    num_envs: int = 16
    """Vector-env rows collected in lock-step; each row runs trials of one scenario at a time."""
    batch: int = 16
    """Sequences per gradient update."""
    seq_len: int = 32
    """Length of each replayed sequence (the world model's observe window)."""
    replay_capacity: int = 200_000
    """Environment steps kept in replay (FIFO); actor hidden states are stored alongside."""
    prefill: int = 2_000
    """Environment steps collected with the (untrained) policy before the first update."""
    train_ratio: float = 32.0
    """Replayed steps per environment step: one update (batch x seq_len steps) every
    batch * seq_len / train_ratio environment steps. The paper uses 32-1024 on GPUs."""
    env_steps: int = 200_000
    """Stop after this many environment steps (one step = one decision in one env row)."""
    wall_minutes: float = 60.0
    """Stop after this much wall-clock time (checked between updates), whatever env_steps says."""
    eval_every: int = 50_000
    """Evaluate the policy on held-out seeds every this many environment steps."""
    greedy_eval: bool = False
    """Periodic evaluations act greedily (posterior mode, most likely action) instead of sampling as
    trained. (The final evaluation tries both and the policy file records the better one.)"""
    ship_best: bool = False
    """Ship the weights of the best held-out evaluation of the run (periodic or final, in its acting
    mode) instead of the last ones: a guard against late drift once the teacher has faded. The
    selection uses the trainer's own evaluation seeds, never those ``lbagent eval`` reports on."""
    eval_episodes: int = 4
    """Episodes per held-out evaluation (one per held-out seed)."""
    checkpoint_every: int = 50_000
    """Write a resumable checkpoint every this many environment steps."""
    # ---- teacher-guided start (lbagent.agent.teacher)
    teacher: str = ""
    """Heuristics that guide the start of a run, in order of preference per row (``kernel`` only
    where the mask offers it), e.g. ``"kernel,sed"``; empty: no teacher, pure DreamerV3 + RL²."""
    teacher_share: float = 0.5
    """Share of env rows the teacher drives right after prefill (prefill itself is all teacher);
    decays linearly to none at ``teacher_decay``. The rest act with the actor, so replay also holds
    the actor's own states (labelled with the teacher's action there)."""
    teacher_decay: int = 100_000
    """Environment step at which teacher-driven collection has faded out."""
    bc_start: float = 1.0
    """Initial weight of the behaviour-cloning cross-entropy toward the teacher's stored actions,
    added to the imagination actor loss (whose normalized advantages are of order 1)."""
    bc_floor: float = 0.05
    """Weight the behaviour cloning decays to and keeps: a weak anchor so imagination errors of a
    small world model cannot drag the actor far below the teacher."""
    bc_into_model: bool = False
    """Let the behaviour-cloning gradient flow into the world model's posterior and encoder too (the
    actor reads the latent, not the observation, so an untrained latent can hide what the teacher's
    choice depends on, e.g. which slot has the shortest expected delay)."""
    bc_decay: int = 200_000
    """Environment step at which the behaviour-cloning weight reaches ``bc_floor``."""

    threads: int = 1
    """torch intra-op threads. One: the ops are small, so a second thread gains little on a quiet
    host and, measured here on a busy one, made an update 5-10x slower (0.7 s vs 6-9 s)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DreamerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DreamerConfig fields: {unknown}")
        return cls(**data)

    def with_overrides(self, assignments: Sequence[str]) -> DreamerConfig:
        """A copy with ``FIELD=VALUE`` assignments applied, each value parsed as its field's type.

        So a variant of a preset is one command line (recorded in the run's metadata) rather than
        an edited source file; a wrong name or value names the assignment and what was expected.
        """
        kinds = {f.name: type(getattr(self, f.name)) for f in fields(self)}
        changes: dict[str, Any] = {}
        for item in assignments:
            name, sep, text = item.partition("=")
            name = name.strip()
            if not sep or name not in kinds:
                raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(kinds))}")
            changes[name] = _parse(kinds[name], text.strip(), item)
        return replace(self, **changes)

    @property
    def stoch_dim(self) -> int:
        return self.stoch * self.classes

    @property
    def feat_dim(self) -> int:
        """Size of the world-model state fed to heads and to the actor: [h, flattened z]."""
        return self.deter + self.stoch_dim

    @property
    def update_every(self) -> int:
        """Environment steps between two gradient updates, from the train ratio."""
        return max(1, round(self.batch * self.seq_len / self.train_ratio))


def _parse(kind: type, text: str, item: str) -> object:
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--set {item!r}: expected true or false")
        return text.lower() in ("true", "1")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"--set {item!r}: expected {_KIND_NAMES.get(kind, kind.__name__)}") from None


_KIND_NAMES = {int: "an integer", float: "a number"}
