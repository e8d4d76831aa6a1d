"""The simulated side of ``lbagent bench fidelity``: the workloads it runs, and the same schedules
replayed in the host dynamics, so the simulator's ratios to the kernel can be held against the host's.

:func:`simulate` is the one seam between the real bench (``lbagent/bench/fidelity.py``) and the
simulator: the same schedule, the same rule, the host dynamics of contract v2 (share classes, a hog
inside or outside the workload's group).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from lbagent.bench.taskgen import Task

Hog = Literal["none", "same", "other"]


@dataclass(frozen=True)
class Workload:
    """A seeded batch workload of the fidelity bench."""

    name: str
    load: float
    """Mean CPU demand of the tasks, as a share of the CPUs the workload has (without the hog's one)."""
    hog: Hog = "none"
    """A busy loop beside the tasks: ``same`` inside the workload's cgroup at normal weight,
    ``other`` in a sibling cgroup at default weight."""
    seed: int = 0

    def cpus_for_tasks(self, cpus: int) -> int:
        """CPUs the load is measured against: a hog takes one (else 80 % plus a hog overloads 2 CPUs)."""
        return cpus - 1 if self.hog != "none" and cpus > 1 else cpus


WORKLOADS = (
    Workload("load80", 0.80, seed=80),
    Workload("load95", 0.95, seed=95),
    Workload("load80-hog-same", 0.80, "same", seed=81),
    Workload("load80-hog-other", 0.80, "other", seed=82),
)
POLICIES = ("kernel", "las:30ms", "oracle")
"""What the bench compares: the kernel alone, demotion after 30 ms of attained CPU, and the oracle
that puts every task over 100 ms of work into the background class at spawn."""


DEMOTION_LAG = 0.010
"""CPU-s a demoted task keeps running at normal weight past its threshold on the host (the bench's
poll interval plus the cgroup move, which waits for an RCU grace period): calibrated, see docs."""
OUTSIDE_HOG_SHARE = 0.75
"""Share of its CPU a hog in another group takes from the workload (group fairness between two
groups of equal weight): calibrated, see docs."""


def simulate(schedule: Sequence[Task], policy: str, workload: Workload,
             capacities: tuple[float, ...] | None = None) -> np.ndarray:
    """Per-task completion times (s, schedule order) of ``schedule`` under ``policy`` in the host
    dynamics, on CPUs of ``capacities`` (default: this host's).

    ``las:T`` becomes one review at T (plus :data:`DEMOTION_LAG`) that demotes; ``oracle`` puts
    tasks over the bench's 100 ms into BACKGROUND at arrival. A hog sits on the first CPU: ``same``
    as a NORMAL-weight task of the workload's group, ``other`` as a neighbour outside it that takes
    :data:`OUTSIDE_HOG_SHARE` of its CPU and that the kernel's balancer counts as a whole task (a
    busy loop's tracked load is full, whatever share its group gets).
    """
    from lbagent.bench.fidelity import parse_policy
    from lbagent.policy.heuristics import make_heuristic
    from lbagent.sim.host import HostVectorEnv

    if capacities is None:
        from lbagent.hostinfo import read_cpus

        capacities = tuple(c.capacity for c in read_cpus())
    rule = parse_policy(policy)
    arrival = np.array([t.at for t in schedule])
    work = np.array([t.work for t in schedule])
    options: dict[str, Any] = {"hog_cpus": 0 if workload.hog == "none" else 1}
    if workload.hog == "same":
        options["neighbour"] = "inside"
    elif workload.hog == "other":
        options.update(neighbour="outside", background=OUTSIDE_HOG_SHARE, neighbour_seen_as="task")
    if rule.demote_after:
        m0 = rule.demote_after + DEMOTION_LAG
        options.update(review_m0=m0, max_reviews=1)
        decide = make_heuristic(f"las:{m0!r}s")
    elif rule.background_over:
        decide = make_heuristic(f"oracle:{rule.background_over!r}s")
    else:
        decide = make_heuristic("kernel")
    env = HostVectorEnv.from_trace(arrival, work, capacities, **options)
    obs, info = env.reset(seed=workload.seed)
    while True:
        obs, _, done, _, info = env.step(decide.act(obs, info["raw"], info["action_mask"]))
        if done[0]:
            return info["episode"][0].jct * float(work.mean())
