"""The simulated side of ``lbagent bench fidelity``: the workloads it runs, and the same schedules
replayed in the host dynamics, so the simulator's ratios to the kernel can be held against the host's.

:func:`simulate` is the one seam between the real bench (``lbagent/bench/fidelity.py``) and the
simulator. Today it replays a schedule in the v1 host dynamics, which know neither share classes
nor a neighbour inside or outside the workload's group: it answers ``kernel`` on hog-free
workloads and says why it cannot answer the rest (the report shows those cells as n/a).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from lbagent.errors import UserError

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


def simulate(schedule: Sequence[Task], policy: str, workload: Workload,
             capacities: tuple[float, ...] | None = None) -> np.ndarray:
    """Per-task completion times (s, schedule order) of ``schedule`` under ``policy`` in the host
    dynamics, on CPUs of ``capacities`` (default: this host's).

    Raises :class:`UserError` for what the v1 host dynamics cannot model: a share policy (they have
    no share classes) or a hog (they have no group model). Contract v2's dynamics fill this in.
    """
    from lbagent.sim.host import HostVectorEnv
    from lbagent.spaces import KERNEL

    if policy != "kernel":
        raise UserError(f"simulating {policy}: share classes need the v2 host dynamics (contract v2); v1 simulates kernel only")
    if workload.hog != "none":
        raise UserError(f"simulating {workload.name}: a hog inside or outside the workload's group needs the v2 host dynamics' group model")
    if capacities is None:
        from lbagent.hostinfo import read_cpus

        capacities = tuple(c.capacity for c in read_cpus())
    arrival = np.array([t.at for t in schedule])
    work = np.array([t.work for t in schedule])
    env = HostVectorEnv.from_trace(arrival, work, capacities)
    env.reset(seed=workload.seed)
    kernel = np.full(1, KERNEL)
    for _ in range(len(schedule) - 1):
        env.step(kernel)
    info = env.step(kernel)[4]
    return info["episode"][0].jct * float(work.mean())
