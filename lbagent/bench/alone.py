"""Did a benchmark run alone? These VMs are shared: a run is only worth its figures when the box's
busy time over it is about the CPU time of the run's own processes (host-facts, "Scheduler facts").

A run compares :func:`box_busy_seconds` before and after with :func:`own_cpu_seconds` (which counts
every descendant the run waited for: generators, their tasks, the daemon, the interactive loops); the
difference went to someone else, and a run with more than about 0.4 CPU-s of it is rerun.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager

from lbagent import hostinfo

MAX_ELSEWHERE = 0.4
"""CPU-s other processes may take during a run before it is discarded and rerun."""


def box_busy_seconds() -> float:
    """CPU-s all CPUs have been busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / hostinfo.CLK_TCK


def own_cpu_seconds() -> float:
    """CPU-s of this process and every child (and grandchild) it has waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Disturbance:
    """CPU-s the box spent outside the run's own processes between construction and :meth:`elsewhere`."""

    def __init__(self) -> None:
        self.busy0, self.own0 = box_busy_seconds(), own_cpu_seconds()

    def own(self) -> float:
        return own_cpu_seconds() - self.own0

    def elsewhere(self) -> float:
        return box_busy_seconds() - self.busy0 - self.own()


@contextmanager
def realtime(priority: int = 1) -> Iterator[None]:
    """This thread (and threads it starts) at SCHED_FIFO, as the daemon runs; back to normal after."""
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    try:
        yield
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
