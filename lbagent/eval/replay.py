"""``lbagent replay``: a recorded host workload through the simulator's host dynamics, per policy.

The trace gives what the simulator cannot invent: when tasks arrived, how much CPU each really
needed (its runtime at exit) and how many CPUs of which capacity the host had. Every policy meets
exactly the same tasks; episodes differ only in the host predictor's noise (seeded), so the table
compares placement decisions and nothing else. Tasks without a usable size (still running when
the recording stopped, or a runtime of 0 that the procfs probe could not read) are left out, and
counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lbagent import spaces
from lbagent.errors import UserError
from lbagent.eval.evaluate import (
    EvalReport,
    PolicyResult,
    ProgressHook,
    add_ratios,
    run_trials,
    summarize,
)
from lbagent.eval.trace import Trace
from lbagent.policy import resolve_policy
from lbagent.policy.heuristics import UnsupportedPolicy
from lbagent.policy.specs import BASELINES
from lbagent.sim.host import MAX_TASK_TABLE, TaskTableFull

SCENARIO = "trace"


@dataclass(frozen=True)
class ReplayJobs:
    arrival: np.ndarray
    work: np.ndarray
    capacities: tuple[float, ...]
    unfinished: int
    unsized: int
    source: str = "trace"
    """Where the tasks came from (the trace's path), for messages."""


def replay_jobs(trace: Trace, name: str = "trace") -> ReplayJobs:
    """The trace's finished tasks as simulator input, times shifted so the first arrival is at 0."""
    times, sizes, unfinished = trace.jobs()
    sized = sizes > 0
    if not sized.any():
        raise UserError(f"{name}: no task both arrived and exited with a known CPU time, nothing to replay")
    capacities = tuple(float(c) for c in trace.capacities)
    if len(capacities) > spaces.MAX_SLOTS:
        raise UserError(f"{name}: {len(capacities)} CPUs, the simulator models at most {spaces.MAX_SLOTS}")
    times = times[sized]
    instants, together = np.unique(times, return_counts=True)
    if together.max() > MAX_TASK_TABLE:
        raise UserError(f"{name}: {together.max()} tasks arrive at t = {instants[together.argmax()]:g} s, the "
                        f"simulator holds at most {MAX_TASK_TABLE} tasks at once")
    return ReplayJobs(times - times[0], sizes[sized], capacities, unfinished, int((~sized).sum()), name)


def replay(jobs: ReplayJobs, specs: Sequence[str], episodes: int, seed: int, title: str,
           on_episode: ProgressHook | None = None) -> EvalReport:
    """Each policy in ``specs`` (plus every heuristic as the ratio's reference) on the trace."""
    from lbagent.sim.host import HostVectorEnv

    def make_env(num_envs: int, env_seed: int):
        return HostVectorEnv.from_trace(jobs.arrival, jobs.work, jobs.capacities, num_envs=num_envs, seed=env_seed)

    def run(spec: str):
        try:
            stats = run_trials(resolve_policy(spec, seed), make_env, episodes, 1, seed, on_episode)
        except UnsupportedPolicy as exc:
            return PolicyResult(spec, None, None, None, note=str(exc))
        except TaskTableFull:
            raise UserError(f"{jobs.source}: under {spec}, more than {MAX_TASK_TABLE} tasks are in the simulator "
                            f"at once (the trace overloads its CPUs)") from None
        return summarize(spec, {SCENARIO: [ep for row in stats for ep in row]})

    results = [run(spec) for spec in specs]
    reference = [r for r in results if r.policy in BASELINES]
    reference += [run(h) for h in BASELINES if h not in specs]
    add_ratios(results, reference)
    return EvalReport(title, episodes, seed, results)
