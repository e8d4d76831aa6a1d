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
        effective = (self.capacity * (1.0 - self.bg_share * active)).sum(axis=1)
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
        return Workload(
            cpus=cpus,
            capacity=capacity,
            bg_share=np.where(present, _draw(self.spec("background"), rng, (n, width)), 0.0),
            bg_always=np.zeros((n, width), dtype=bool),
            arrival=_draw_choice(self.spec("arrival"), ARRIVALS, rng, n),
            size=_draw_choice(self.spec("size"), SIZES, rng, n),
            tasks=_draw(self.spec("tasks"), rng, n).astype(np.int64),
            **values,
        )


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
    bg_u: np.ndarray  # (B, C) whether a CPU's neighbour is re-drawn
    bg_v: np.ndarray  # (B, C) its new state

    @classmethod
    def draw(cls, rng: np.random.Generator, batch: int, width: int) -> StepDraws:
        return cls(
            expo=rng.standard_exponential(batch),
            burst=rng.random(batch),
            size_u=rng.random(batch),
            size_z=rng.standard_normal(batch),
            pred_z=rng.standard_normal(batch),
            unknown_u=rng.random(batch),
            bg_u=rng.random((batch, width)),
            bg_v=rng.random((batch, width)),
        )

    def take(self, rows: np.ndarray) -> StepDraws:
        return StepDraws(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


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
    return unit_size * w.mean_work


def predicted_work(w: Workload, work: np.ndarray, d: StepDraws) -> tuple[np.ndarray, np.ndarray]:
    """The host predictor: the true work with log-normal error, or the prior (mean work) if unknown."""
    s = w.predict_noise
    noisy = work * np.exp(s * d.pred_z - 0.5 * s * s)
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
            elif key == "size":
                out.size[:] = _draw_choice(spec, SIZES, rng, out.rows)
            else:
                getattr(out, key)[:] = _draw(spec, rng, out.rows)
        if self.slowdown is not None:
            apply_slowdown(out, self.slowdown)
        return out
