"""Workload families of the host dynamics, as per-environment parameter arrays and vectorized samplers.

A :class:`Workload` holds one row per environment (CPU capacities, background load, arrival and
size families with their parameters), so a batch can mix scenarios and still be sampled with array
operations only. A :class:`WorkloadSpace` is the declarative form (fixed values, ranges, choices)
that the scenario files describe; it draws a fresh :class:`Workload` row at every trial start.

Units: work in seconds of a capacity-1.0 CPU, times in seconds, except the fields documented as
"time units", which are multiples of the row's ``mean_work`` (the env's ``time_unit``) so that a
scenario's dynamics are scale-free.

The families:

- ``poisson``: exponential gaps at rate ``lam``.
- ``bursty``: an interrupted Poisson process (on/off MMPP with no arrivals while off): on at rate
  ``lam * burst_factor`` for exponential periods, off for exponential periods, a fraction
  ``1 / burst_factor`` of the time on, one on/off cycle lasting ``burst_period`` time units on
  average. After an arrival the source is on, and both periods are memoryless, so a gap is an
  on-time ``g ~ Exp(lam_on)`` plus the off periods that interrupt it (``Poisson(g / mean_on)`` of
  them); no state survives between arrivals. The off total is drawn with the exact probability of
  no interruption and the exact conditional mean (exponential shape), from one uniform per row.
- ``diurnal``: a Poisson process with rate ``lam * (1 + a sin(2 pi t / period))``; the gap solves
  ``Lambda(t + g) - Lambda(t) = Exp(1)`` by Newton's method (monotone, fixed iteration count).
- ``commands`` command names (0: one anonymous stream, the version-1 model), each with its own
  scale ``exp(command_spread * z)`` (normalized to mean 1 over the commands) of the size family, so
  a per-command history (the host's predictor) knows a task's command mean but not its own size:
  the prediction is the command's mean with log-normal error ``predict_noise``. With 0 commands the
  predictor sees the task's true work with that error (an idealized history).
- ``neighbour``: where the noisy neighbour lives. ``outside`` (another group or session): while
  active it takes ``background`` of its CPU whatever the workload's weights (group fairness; a hog
  in another autogroup keeps ~93 % of its CPU whatever its nice). ``inside`` (a task of the
  workload's own group): a NORMAL-weight hog the workload's BACKGROUND tasks also yield to.
  ``neighbour_seen_as`` (``share`` or ``task``): the load the kernel's balancer counts for an active
  outside neighbour (see :data:`SEEN_AS`).
- reviews: a task's attained CPU time crossing ``review_m0 * 2**k`` seconds is a decision, at most
  ``max_reviews`` per task; BACKGROUND tasks share a child group of weight ``bg_weight`` per CPU.
- sizes have mean ``mean_work``: ``pareto`` (shape > 1), ``lognormal`` (sigma), ``bimodal`` (a
  small and a ``bimodal_ratio`` times larger mode, the large one with probability ``bimodal_prob``,
  each mode lognormal with sigma 0.2), ``uniform`` (``mean * (1 +- uniform_spread)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

ARRIVALS: tuple[str, ...] = ("poisson", "bursty", "diurnal")
NEIGHBOURS: tuple[str, ...] = ("outside", "inside")
OUTSIDE, INSIDE = range(2)
SEEN_AS: tuple[str, ...] = ("share", "task")
"""What the kernel's balancer counts for an active outside neighbour: its share (a duty-cycled
process, whose tracked load is its busy fraction) or a whole task (a busy loop: full load, whatever
share of the CPU its group actually gets)."""
MAX_COMMANDS = 8
NORMAL_WEIGHT = 1024.0
"""CFS's weight of a nice-0 task (and of a cgroup with the default cpu.weight 100 / cpu.shares 1024)."""
SIZES: tuple[str, ...] = ("pareto", "lognormal", "bimodal", "uniform")
POISSON, BURSTY, DIURNAL = range(3)
PARETO, LOGNORMAL, BIMODAL, UNIFORM = range(4)
BIMODAL_SIGMA = 0.2
CAPACITY_RANGE = (1e-3, 64.0)
"""CPU capacities any workload (scenario, trace) may give: outside it the time a task takes on one
CPU is so far from the others' that an episode's float sums lose it or reach inf."""
DIURNAL_NEWTON_STEPS = 6


@dataclass
class Workload:
    """Parameters of n environments, one row each; (n, C) arrays hold per-CPU values."""

    cpus: np.ndarray  # (n,) int, CPUs in use (the rest of the C columns are absent)
    capacity: np.ndarray  # (n, C) base capacity, 0 for absent CPUs: what the topology reports
    bg_share: np.ndarray  # (n, C) share of the CPU a noisy neighbour takes while active, [0, 0.95]
    bg_always: np.ndarray  # (n, C) bool, neighbour permanently active (the shift's slowed CPUs)
    bg_prob: np.ndarray  # (n,) stationary probability that a CPU's neighbour is active
    bg_period: np.ndarray  # (n,) mean time between neighbour re-draws, time units
    load: np.ndarray  # (n,) offered work / mean effective capacity
    arrival: np.ndarray  # (n,) int code into ARRIVALS
    burst_factor: np.ndarray  # (n,) on-rate / mean rate (bursty)
    burst_period: np.ndarray  # (n,) mean on+off cycle, time units (bursty)
    diurnal_amplitude: np.ndarray  # (n,) in [0, 1)
    diurnal_period: np.ndarray  # (n,) time units
    size: np.ndarray  # (n,) int code into SIZES
    mean_work: np.ndarray  # (n,) seconds: the env's time unit
    pareto_shape: np.ndarray  # (n,) > 1
    lognormal_sigma: np.ndarray  # (n,)
    bimodal_ratio: np.ndarray  # (n,) large mode / small mode
    bimodal_prob: np.ndarray  # (n,) probability of the large mode
    uniform_spread: np.ndarray  # (n,) in [0, 1)
    predict_noise: np.ndarray  # (n,) sigma of the host predictor's multiplicative log-normal error
    unknown_prob: np.ndarray  # (n,) probability that no history predicts a task (prior given)
    balance_interval: np.ndarray  # (n,) seconds between the kernel model's periodic balancing ticks
    util_window: np.ndarray  # (n,) time constant of util / placed averages, time units
    tasks: np.ndarray  # (n,) int, tasks per episode
    neighbour: np.ndarray  # (n,) int code into NEIGHBOURS
    neighbour_seen_as: np.ndarray  # (n,) int code into SEEN_AS
    commands: np.ndarray  # (n,) number of command names, 0..MAX_COMMANDS (0: one anonymous stream)
    command_spread: np.ndarray  # (n,) sigma of the log of a command's size scale
    cmd_scale: np.ndarray  # (n, MAX_COMMANDS) each command's size scale, mean 1 over the commands
    review_m0: np.ndarray  # (n,) seconds of attained CPU at the first review
    max_reviews: np.ndarray  # (n,) reviews per task at most (0: arrivals only)
    bg_weight: np.ndarray  # (n,) weight of the BACKGROUND group on a CPU (NORMAL tasks: 1024)

    @property
    def rows(self) -> int:
        return int(self.cpus.shape[0])

    def assign(self, rows: np.ndarray, other: Workload) -> None:
        """Overwrite ``rows`` with the rows of ``other`` (same order), e.g. at a trial start."""
        for f in fields(self):
            getattr(self, f.name)[rows] = getattr(other, f.name)

    def take(self, rows: np.ndarray) -> Workload:
        return Workload(**{f.name: getattr(self, f.name)[rows].copy() for f in fields(self)})

    def arrival_rate(self) -> np.ndarray:
        """Tasks per second that make the offered load ``load`` of the mean effective capacity."""
        active = np.where(self.bg_always, 1.0, self.bg_prob[:, None])
        taken = np.where((self.neighbour == INSIDE)[:, None], 0.5, self.bg_share)
        effective = (self.capacity * (1.0 - taken * active)).sum(axis=1)
        return self.load * effective / self.mean_work


# ------------------------------------------------------------------------------------------------
# Declarative spaces: a value is fixed, a [lo, hi] range sampled uniformly, or a choice of names.


@dataclass(frozen=True)
class Fixed:
    value: Any


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    integer: bool = False


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]


Spec = Fixed | Range | Choice

PER_ENV_FLOAT_KEYS: tuple[str, ...] = (
    "bg_prob",
    "bg_period",
    "load",
    "burst_factor",
    "burst_period",
    "diurnal_amplitude",
    "diurnal_period",
    "mean_work",
    "pareto_shape",
    "lognormal_sigma",
    "bimodal_ratio",
    "bimodal_prob",
    "uniform_spread",
    "predict_noise",
    "unknown_prob",
    "balance_interval",
    "util_window",
    "commands",
    "command_spread",
    "review_m0",
    "max_reviews",
    "bg_weight",
)
"""Scalar-per-environment parameters: each a Fixed number or a Range."""

DEFAULTS: dict[str, Spec] = {
    "cpus": Fixed(4),
    "capacity": Fixed(1.0),
    "background": Fixed(0.0),
    "bg_prob": Fixed(0.0),
    "bg_period": Fixed(50.0),
    "load": Fixed(0.7),
    "arrival": Fixed("poisson"),
    "burst_factor": Fixed(3.0),
    "burst_period": Fixed(40.0),
    "diurnal_amplitude": Fixed(0.5),
    "diurnal_period": Fixed(200.0),
    "size": Fixed("lognormal"),
    "mean_work": Fixed(0.02),
    "pareto_shape": Fixed(1.5),
    "lognormal_sigma": Fixed(1.0),
    "bimodal_ratio": Fixed(10.0),
    "bimodal_prob": Fixed(0.1),
    "uniform_spread": Fixed(0.5),
    "predict_noise": Fixed(0.3),
    "unknown_prob": Fixed(0.1),
    "balance_interval": Fixed(0.004),
    "util_window": Fixed(4.0),
    "tasks": Fixed(256),
    "neighbour": Fixed("outside"),
    "neighbour_seen_as": Fixed("share"),
    "commands": Fixed(0),
    "command_spread": Fixed(1.0),
    "review_m0": Fixed(0.010),
    "max_reviews": Fixed(0),
    "bg_weight": Fixed(2.0),
}
"""Every parameter a host scenario may set, with its default (the names scenario files use)."""

SHIFTABLE: frozenset[str] = frozenset(
    {
        "load",
        "arrival",
        "burst_factor",
        "burst_period",
        "diurnal_amplitude",
        "diurnal_period",
        "size",
        "pareto_shape",
        "lognormal_sigma",
        "bimodal_ratio",
        "bimodal_prob",
        "uniform_spread",
        "command_spread",
    }
)
"""What a mid-trial shift may change besides slowing CPUs (the time unit and CPU count stay)."""


@dataclass(frozen=True)
class Slowdown:
    """The shift's capacity change: the first ``cpus`` CPUs lose ``share`` to a permanent neighbour."""

    cpus: int
    share: float


@dataclass(frozen=True)
class WorkloadSpace:
    """A distribution over workloads; ``capacities`` (explicit per-CPU list) overrides cpus/capacity."""

    specs: Mapping[str, Spec]
    capacities: tuple[float, ...] | None = None

    def spec(self, key: str) -> Spec:
        return self.specs.get(key, DEFAULTS[key])

    @property
    def max_cpus(self) -> int:
        if self.capacities is not None:
            return len(self.capacities)
        s = self.spec("cpus")
        assert not isinstance(s, Choice)  # a numeric key: Fixed or Range, never a family choice
        return int(s.hi if isinstance(s, Range) else s.value)

    def with_overrides(self, overrides: Mapping[str, Spec]) -> WorkloadSpace:
        return replace(self, specs={**self.specs, **overrides})

    def sample(self, rng: np.random.Generator, n: int, width: int) -> Workload:
        """Draw n rows with per-CPU arrays ``width`` wide (the batch's largest CPU count)."""
        if self.capacities is not None:
            cpus = np.full(n, len(self.capacities), dtype=np.int64)
        else:
            cpus = _draw(self.spec("cpus"), rng, n).astype(np.int64)
        present = np.arange(width)[None, :] < cpus[:, None]
        if self.capacities is not None:
            capacity = np.zeros((n, width))
            capacity[:, : len(self.capacities)] = self.capacities
        else:
            capacity = np.where(present, _draw(self.spec("capacity"), rng, (n, width)), 0.0)
        values = {k: _draw(self.spec(k), rng, n).astype(np.float64) for k in PER_ENV_FLOAT_KEYS}
        values["commands"] = np.floor(values["commands"])
        values["max_reviews"] = np.floor(values["max_reviews"])
        return Workload(
            cpus=cpus,
            capacity=capacity,
            bg_share=np.where(present, _draw(self.spec("background"), rng, (n, width)), 0.0),
            bg_always=np.zeros((n, width), dtype=bool),
            arrival=_draw_choice(self.spec("arrival"), ARRIVALS, rng, n),
            size=_draw_choice(self.spec("size"), SIZES, rng, n),
            tasks=_draw(self.spec("tasks"), rng, n).astype(np.int64),
            neighbour=_draw_choice(self.spec("neighbour"), NEIGHBOURS, rng, n),
            neighbour_seen_as=_draw_choice(self.spec("neighbour_seen_as"), SEEN_AS, rng, n),
            cmd_scale=command_scales(values["commands"], values["command_spread"], rng.standard_normal((n, MAX_COMMANDS))),
            **values,
        )


def command_scales(commands: np.ndarray, spread: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Each command's size scale, log-normal with sigma ``spread`` and mean exactly 1 over the
    ``commands`` in use, so the workload's mean work stays ``mean_work`` (the time unit)."""
    used = np.arange(MAX_COMMANDS)[None, :] < np.maximum(commands, 1)[:, None]
    raw = np.where(used, np.exp(spread[:, None] * z), 0.0)
    return raw * used.sum(axis=1, keepdims=True) / raw.sum(axis=1, keepdims=True)


def _draw(spec: Spec, rng: np.random.Generator, shape) -> np.ndarray:
    if isinstance(spec, Fixed):
        return np.full(shape, spec.value, dtype=np.float64)
    if isinstance(spec, Range):
        if spec.integer:
            return rng.integers(int(spec.lo), int(spec.hi) + 1, size=shape).astype(np.float64)
        return rng.uniform(spec.lo, spec.hi, size=shape)
    raise TypeError(f"a numeric parameter cannot be a choice: {spec}")


def _draw_choice(spec: Spec, names: tuple[str, ...], rng: np.random.Generator, n: int) -> np.ndarray:
    if isinstance(spec, Fixed):
        return np.full(n, names.index(spec.value), dtype=np.int64)
    if isinstance(spec, Choice):
        codes = np.array([names.index(o) for o in spec.options], dtype=np.int64)
        return codes[rng.integers(0, codes.size, size=n)]
    raise TypeError(f"a family parameter must be a name or a choice of names: {spec}")


def apply_slowdown(w: Workload, slow: Slowdown) -> None:
    """Give the first ``slow.cpus`` CPUs of every row a permanent neighbour taking ``slow.share``."""
    k = slow.cpus
    w.bg_share[:, :k] = np.where(w.capacity[:, :k] > 0, slow.share, 0.0)
    w.bg_always[:, :k] = w.capacity[:, :k] > 0


# ------------------------------------------------------------------------------------------------
# Vectorized samplers: one draw per environment per call, in a fixed order, so that the random
# stream never depends on the actions taken (policies compare on the same arrivals and sizes).


@dataclass
class StepDraws:
    """The randomness one decision step consumes, drawn B-wide whatever the actions."""

    expo: np.ndarray  # (B,) standard exponential for the next gap
    burst: np.ndarray  # (B,) standard uniform, turned into the bursty off-time
    size_u: np.ndarray  # (B,)
    size_z: np.ndarray  # (B,)
    pred_z: np.ndarray  # (B,)
    unknown_u: np.ndarray  # (B,)
    cmd_u: np.ndarray  # (B,) standard uniform, the task's command
    bg_u: np.ndarray  # (B, C) whether a CPU's neighbour is re-drawn
    bg_v: np.ndarray  # (B, C) its new state

    @classmethod
    def for_tasks(cls, seed: int, rows: np.ndarray, episode: np.ndarray, task: np.ndarray, width: int) -> StepDraws:
        """The draws of task ``task`` of episode ``episode`` of env ``rows``: a pure function of
        those numbers and the seed, so the workload a policy sees never depends on its actions
        (reviews make the number of decisions before an arrival depend on them)."""
        u = hashed_uniforms(seed, rows, episode, task, 9 + 2 * width)
        return cls(
            expo=-np.log(u[:, 0]),
            burst=u[:, 1],
            size_u=u[:, 2],
            size_z=_box_muller(u[:, 3], u[:, 4]),
            pred_z=_box_muller(u[:, 5], u[:, 6]),  # its own angle: the predictor's error is independent of the size
            unknown_u=u[:, 7],
            cmd_u=u[:, 8],
            bg_u=u[:, 9 : 9 + width],
            bg_v=u[:, 9 + width :],
        )

    def take(self, rows: np.ndarray) -> StepDraws:
        return StepDraws(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


_MIX = np.array([0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93,
                 0xCA5A826395121157], dtype=np.uint64)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _MIX[1]
    x = (x ^ (x >> np.uint64(27))) * _MIX[2]
    return x ^ (x >> np.uint64(31))


def hashed_uniforms(seed: int, rows: np.ndarray, episode: np.ndarray, task: np.ndarray, n: int) -> np.ndarray:
    """(len(rows), n) uniforms in (0, 1), a counter-based stream (splitmix64 of the key)."""
    with np.errstate(over="ignore"):
        key = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _MIX[0]
        key = _splitmix(key ^ np.asarray(rows, dtype=np.uint64) * _MIX[3])
        key = _splitmix(key ^ np.asarray(episode, dtype=np.uint64) * _MIX[4])
        key = _splitmix(key ^ np.asarray(task, dtype=np.uint64) * _MIX[0])
        x = _splitmix(key[:, None] ^ (np.arange(1, n + 1, dtype=np.uint64)[None, :] * _MIX[3]))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53


def _box_muller(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def next_gap(w: Workload, now: np.ndarray, d: StepDraws) -> np.ndarray:
    """Seconds until the next arrival of each row, given the current time."""
    lam = w.arrival_rate()
    unit = w.mean_work
    gap = d.expo / lam
    # bursty: on-time g at rate lam*k, interrupted by Poisson(g / mean_on) off periods.
    k = np.maximum(w.burst_factor, 1.0)
    mean_on = w.burst_period * unit / k
    mean_off = w.burst_period * unit - mean_on
    on_gap = d.expo / (lam * k)
    offs = _poisson_gamma_total(on_gap / mean_on, mean_off, d.burst)
    bursty = on_gap + offs
    # diurnal: invert the integrated rate from now.
    diurnal = _diurnal_gap(lam, w.diurnal_amplitude, w.diurnal_period * unit, now, d.expo)
    return np.select([w.arrival == BURSTY, w.arrival == DIURNAL], [bursty, diurnal], gap)


def _poisson_gamma_total(mean_count: np.ndarray, mean_each: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Total of Poisson(mean_count) exponential(mean_each) periods, from one uniform per row.

    The total is 0 with probability exp(-m); otherwise it is exponential with mean
    mean_each * m / (1 - exp(-m)) matched in its first moment. Exact in the mean and in the
    probability of no interruption, which is what shapes bursts; one uniform keeps the random
    stream independent of parameters.
    """
    m = np.maximum(mean_count, 0.0)
    p0 = np.exp(-m)
    interrupted = u > p0
    # Reuse the uniform's upper part as an independent uniform for the exponential total.
    v = np.where(interrupted, (u - p0) / np.maximum(1.0 - p0, 1e-300), 0.5)
    mean_total = mean_each * m / np.maximum(1.0 - p0, 1e-300)
    return np.where(interrupted, -np.log1p(-np.minimum(v, 1.0 - 1e-16)) * mean_total, 0.0)


def _diurnal_gap(lam, amp, period, now, expo) -> np.ndarray:
    w = 2.0 * np.pi / period

    def integral(t):
        return lam * (t - amp / w * np.cos(w * t))

    target = integral(now) + expo
    g = expo / (lam * (1.0 + amp * np.sin(w * now)).clip(min=1e-3))
    g = np.maximum(g, 0.0)
    for _ in range(DIURNAL_NEWTON_STEPS):
        t = now + g
        g = g - (integral(t) - target) / (lam * (1.0 + amp * np.sin(w * t))).clip(min=lam * 1e-3)
        g = np.maximum(g, 0.0)
    return g


def task_work(w: Workload, d: StepDraws) -> np.ndarray:
    """True work (seconds at capacity 1) of the next task of each row; every family has mean 1."""
    u = np.clip(d.size_u, 1e-12, 1.0 - 1e-12)
    a = np.maximum(w.pareto_shape, 1.0 + 1e-6)
    pareto = (a - 1.0) / a * u ** (-1.0 / a)
    s = w.lognormal_sigma
    lognormal = np.exp(s * d.size_z - 0.5 * s * s)
    small = 1.0 / (1.0 + w.bimodal_prob * (w.bimodal_ratio - 1.0))
    mode = np.where(u < w.bimodal_prob, small * w.bimodal_ratio, small)
    bimodal = mode * np.exp(BIMODAL_SIGMA * d.size_z - 0.5 * BIMODAL_SIGMA**2)
    uniform = 1.0 + w.uniform_spread * (2.0 * u - 1.0)
    unit_size = np.select(
        [w.size == PARETO, w.size == LOGNORMAL, w.size == BIMODAL], [pareto, lognormal, bimodal], uniform
    )
    return unit_size * command_scale(w, d) * w.mean_work


def command_scale(w: Workload, d: StepDraws) -> np.ndarray:
    """The size scale of each task's command (1 with no commands)."""
    cmd = np.minimum((d.cmd_u * np.maximum(w.commands, 1)).astype(np.int64), MAX_COMMANDS - 1)
    return np.where(w.commands >= 1, w.cmd_scale[np.arange(cmd.size), cmd], 1.0)


def predicted_work(w: Workload, work: np.ndarray, d: StepDraws) -> tuple[np.ndarray, np.ndarray]:
    """The host predictor: the command's mean (or, with no commands, the true work) with log-normal
    error, or the prior (mean work) when no history predicts the task."""
    s = w.predict_noise
    known = np.where(w.commands >= 1, command_scale(w, d) * w.mean_work, work)
    noisy = known * np.exp(s * d.pred_z - 0.5 * s * s)
    unknown = d.unknown_u < w.unknown_prob
    return np.where(unknown, w.mean_work, noisy), unknown


@dataclass(frozen=True)
class Shift:
    """A mid-trial workload change, taking effect at the start of episode ``at_episode`` of a trial."""

    at_episode: int
    overrides: Mapping[str, Spec]
    slowdown: Slowdown | None = None

    def apply(self, base: Workload, rng: np.random.Generator) -> Workload:
        """The shifted version of ``base`` (a copy): overridden keys re-drawn, slowed CPUs applied."""
        out = base.take(np.arange(base.rows))
        for key, spec in self.overrides.items():
            if key == "arrival":
                out.arrival[:] = _draw_choice(spec, ARRIVALS, rng, out.rows)
            elif key == "command_spread":
                out.command_spread[:] = _draw(spec, rng, out.rows)
                out.cmd_scale[:] = command_scales(out.commands, out.command_spread,
                                                  rng.standard_normal((out.rows, MAX_COMMANDS)))
            elif key == "size":
                out.size[:] = _draw_choice(spec, SIZES, rng, out.rows)
            else:
                getattr(out, key)[:] = _draw(spec, rng, out.rows)
        if self.slowdown is not None:
            apply_slowdown(out, self.slowdown)
        return out
