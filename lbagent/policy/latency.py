"""Per-decision latency of a policy as the daemon calls it: one decision (B = 1) at a time, on one core."""

from __future__ import annotations

import os
import time

import numpy as np

from lbagent.spaces import MAX_SLOTS, N_ACTIONS, OBS_DIM


def measure_latency(policy, decisions: int, seed: int = 0, warmup: int = 200) -> dict:
    """p50/p99/max of ``act`` + ``observe`` in milliseconds, pinned to the CPU we are running on.

    Pinning keeps the figure about the policy, not about migrations between cores; the inputs are
    random observations with a random number of valid slots, since a numpy actor's cost does not
    depend on their values.
    """
    rng = np.random.default_rng(seed)
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {sorted(previous)[0]})
    try:
        policy.begin_trial(1, seed)
        times = np.empty(decisions)
        for i in range(warmup + decisions):
            obs = rng.normal(size=(1, OBS_DIM)).astype(np.float32)
            mask = np.zeros((1, N_ACTIONS), dtype=bool)
            mask[0, : rng.integers(1, MAX_SLOTS + 1)] = True
            start = time.perf_counter_ns()
            policy.act(obs, None, mask)
            policy.observe(np.array([-rng.exponential()]), np.array([False]))
            if i >= warmup:
                times[i - warmup] = (time.perf_counter_ns() - start) / 1e6
    finally:
        os.sched_setaffinity(0, previous)
    return {
        "policy": policy.name,
        "decisions": decisions,
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "max_ms": float(times.max()),
        "target_p99_ms": 0.5,
    }
