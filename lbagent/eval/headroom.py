"""``lbagent experiment headroom``: how much better than the best heuristic can placement or share get at all?

A target such as "0.95x the best heuristic" is only meaningful if some rule reaches it.
This runs informed rules on a suite's held-out episodes, next to every heuristic, under the same
protocol as ``lbagent eval``. Two of them are oracles that read the simulator's exact state (true
task sizes, each running task's exact remaining work, capacity net of the neighbour), which no
host can know; the others use only the contract's observation. With ``hints`` a slot action is a
movable starting point instead of a pin, to ask whether a "place, then let the kernel balance"
action would pay. If none of these gets close to a target, a learned policy that sees less is not
expected to either, and the report says so with figures instead of a guess.

The rules follow textbook size-aware dispatching: the marginal cost of a job under processor
sharing (its own time plus the slowdown it causes each co-runner, min(x, r_i) for remaining work
r_i), least-work for big jobs only, and SITA (size-interval task assignment, big jobs isolated on
the slowest CPUs; Harchol-Balter, "Performance Modeling and Design of Computer Systems", 2013).

Share (contract v2): ``las`` at every review milestone from 10 ms to 320 ms, ``sized`` at two
thresholds and the ``oracle`` (true remaining work) at four. The report's notes say how far the
best *fixed* rule (any las or sized threshold, chosen in hindsight on these very episodes) is from
the best oracle: the gap a policy that adapts its threshold to the workload can win.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lbagent.eval.evaluate import EvalReport, PolicyResult, add_ratios, evaluate_policy, run_suite, summarize
from lbagent.policy.heuristics import argmin_valid, earliest_finish, safe_capacity
from lbagent.policy.specs import BASELINES
from lbagent.spaces import KERNEL, RawObservation

BIG = 2.0
"""A task is "big" when its predicted work exceeds this many mean works (about the top 12 % of a
log-normal size with sigma 1, which carry about 40 % of the work)."""
SITA_BIG = 3.0
SITA_CPUS = 2
"""SITA's big-task pool: the slowest CPUs, this many."""
LAS_THRESHOLDS = ("10ms", "20ms", "40ms", "80ms", "160ms", "320ms")
"""The review milestones of m0 = 10 ms: a las threshold between two of them acts at the next one."""
SIZED_THRESHOLDS = ("40ms", "160ms")
ORACLE_THRESHOLDS = ("25ms", "50ms", "100ms", "200ms")


def _kernel_slot(raw: RawObservation) -> np.ndarray:
    """The slot the kernel model would pick (fewest tasks per capacity, ties to the bigger CPU);
    the neighbour is not in ``runnable``, so this is the observation-only version of its choice."""
    return argmin_valid(raw.runnable / safe_capacity(raw) - 1e-9 * raw.capacity, raw.slot_mask)


def _big(raw: RawObservation, factor: float) -> np.ndarray:
    return raw.task_work > factor * np.asarray(raw.time_unit)


def _slowest(raw: RawObservation, count: int) -> np.ndarray:
    """Mask of the ``count`` lowest-capacity slots of each row (ties to the higher index)."""
    key = np.where(raw.slot_mask, -raw.capacity, -np.inf)
    rank = np.argsort(np.argsort(key, axis=1, kind="stable"), axis=1)
    return raw.slot_mask & (rank < count)


def _exact_marginal_cost(raw: RawObservation) -> np.ndarray:
    """Oracle: per slot, the completion time the arriving task adds to the system if nothing else
    arrived, (x + sum_i min(x, r_i)) / capacity, from the true size x and exact remaining works r_i."""
    x = raw.extras["true_work"]
    cpu, remaining = raw.extras["task_cpu"], raw.extras["task_remaining"]
    rows, cols = np.nonzero(cpu >= 0)
    shared = np.zeros(raw.slot_mask.shape)
    np.add.at(shared, (rows, cpu[rows, cols]), np.minimum(x[rows], remaining[rows, cols]))
    capacity = np.zeros(raw.slot_mask.shape)
    capacity[:, : raw.extras["capacity_now"].shape[1]] = raw.extras["capacity_now"]
    cost = (x[:, None] + shared) / np.maximum(capacity, 1e-12)
    return argmin_valid(cost, raw.slot_mask & (capacity > 0))


def _defer_when_kernel_agrees(rule: Callable[[RawObservation], np.ndarray]) -> Callable[[RawObservation], np.ndarray]:
    """The rule's slot, but ``KERNEL`` where the kernel model would pick the same CPU, so the task
    keeps the balancer's later help instead of being pinned."""
    def act(raw: RawObservation) -> np.ndarray:
        slot = rule(raw)
        return np.where(slot == _kernel_slot(raw), KERNEL, slot)
    return act


def _big_by_expected_delay(raw: RawObservation) -> np.ndarray:
    return np.where(_big(raw, BIG), argmin_valid(earliest_finish(raw), raw.slot_mask), KERNEL)


def _sita(raw: RawObservation) -> np.ndarray:
    pool = _slowest(raw, SITA_CPUS)
    return np.where(_big(raw, SITA_BIG), argmin_valid(earliest_finish(raw), pool), KERNEL)


@dataclass(frozen=True)
class Rule:
    """A stateless placement rule in the evaluator's policy protocol."""

    name: str
    choose: Callable[[RawObservation], np.ndarray]

    @property
    def metadata(self) -> Mapping[str, Any]:
        """A rule of this study, not a heuristic a user can name: the table tells them apart."""
        return {"algorithm": "headroom rule", "name": self.name}

    def begin_trial(self, batch: int, seed: int) -> None:
        pass

    def observe(self, reward: np.ndarray, episode_start: np.ndarray) -> None:
        pass

    def act(self, obs: np.ndarray, raw: RawObservation, mask: np.ndarray) -> np.ndarray:
        """Placement rules answer arrivals; a review keeps its task where it is, NORMAL."""
        return np.where(raw.review, KERNEL, self.choose(raw)).astype(np.int64)


RULES: tuple[Rule, ...] = (
    Rule("kernel pick, pinned", _kernel_slot),
    Rule("big by SED, rest kernel", _big_by_expected_delay),
    Rule("SITA, rest kernel", _sita),
    Rule("oracle marginal cost", _exact_marginal_cost),
    Rule("oracle marginal, else kernel", _defer_when_kernel_agrees(_exact_marginal_cost)),
)
"""Names stay short for the table; the functions' docstrings and the constants above say what each does."""


def share_specs() -> list[str]:
    """The share rules the experiment runs besides the baselines' defaults."""
    return ([f"las:{t}" for t in LAS_THRESHOLDS] + [f"sized:{t}" for t in SIZED_THRESHOLDS]
            + [f"oracle:{t}" for t in ORACLE_THRESHOLDS])


def headroom(suite, episodes: int, seed: int, hints: bool = False) -> EvalReport:
    """Every rule and every baseline on the same episodes; ratios to the best baseline (whose
    slot actions are always pins, as the contract defines them)."""
    reference = [evaluate_policy(name, suite, episodes, seed) for name in BASELINES]
    options = {"pin_placements": not hints, "exact_state": True}
    rules = [summarize(rule.name + (" [hint]" if hints else ""),
                       run_suite(rule, suite, episodes, seed, host_options=options)) for rule in RULES]
    shares = [evaluate_policy(spec, suite, episodes, seed) for spec in share_specs()]
    results = rules + shares + reference
    add_ratios(results, reference)
    return EvalReport(suite.name, episodes, seed, results, notes=share_gap(results))


def share_gap(results: list[PolicyResult]) -> list[str]:
    """How far the kernel, the best fixed share rule and the oracle are apart (empty without figures)."""
    def best(prefixes: tuple[str, ...]) -> PolicyResult | None:
        found = [r for r in results if r.mean_jct is not None and r.policy.split(":")[0] in prefixes]
        return min(found, key=lambda r: r.mean_jct or 0.0, default=None)

    kernel = next((r for r in results if r.policy == "kernel" and r.mean_jct), None)
    fixed, oracle = best(("las", "sized")), best(("oracle",))
    if kernel is None or fixed is None or oracle is None:
        return []
    assert kernel.mean_jct and fixed.mean_jct and oracle.mean_jct
    gap = fixed.mean_jct / oracle.mean_jct - 1.0
    verdict = ("a policy that adapts its threshold has room to win" if gap >= 0.05 else
               "under 5 %: a fixed threshold is nearly as good as knowing sizes, little left to learn")
    return [
        f"oracle ({oracle.policy}) {oracle.mean_jct / kernel.mean_jct:.3f}x the kernel; "
        f"best fixed rule ({fixed.policy}) {fixed.mean_jct / kernel.mean_jct:.3f}x the kernel",
        f"the best fixed rule is {100 * gap:.1f} % worse than the oracle: {verdict}",
    ]
