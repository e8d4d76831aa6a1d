"""Interactive loops for the demo: 1 ms of CPU, then 3 ms asleep, over and over, timing each wake.

What a latency-sensitive task beside a batch workload feels is the time from the moment it should
wake to the moment its burst of work is done ("wake-to-done"): the sleep's overshoot, any wait in
the run queue behind batch tasks, and the 1 ms of CPU itself (so 1 ms is the floor). Each loop runs
as its own process (``python -m lbagent.bench.interactive``) started inside the workload's cgroups
before the daemon, so the daemon never sees it arrive and never manages it; on SIGTERM it prints its
latencies (seconds, JSON) and exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BURST = 0.001
"""CPU seconds of work per wake."""
SLEEP = 0.003
READY_TIMEOUT = 5.0


def loop(burst: float = BURST, sleep: float = SLEEP) -> list[float]:
    """Run until SIGTERM; the wake-to-done time of every completed burst."""
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    latencies: list[float] = []
    print("ready", flush=True)
    while not stopping:
        wake = time.monotonic() + sleep
        time.sleep(sleep)
        end = time.thread_time() + burst
        while time.thread_time() < end:
            pass
        latencies.append(time.monotonic() - wake)
    return latencies


class InteractiveLoops:
    """``n`` loops that start inside ``cgroup_dirs`` (each joins them before it runs any code)."""

    def __init__(self, n: int, cgroup_dirs: Sequence[Path]) -> None:
        fds = [os.open(d / "cgroup.procs", os.O_WRONLY) for d in cgroup_dirs]

        def join() -> None:
            for fd in fds:
                os.write(fd, b"0")

        self.procs: list[subprocess.Popen] = []
        try:
            for _ in range(n):
                self.procs.append(subprocess.Popen([sys.executable, "-m", "lbagent.bench.interactive"], preexec_fn=join,
                                                   pass_fds=tuple(fds), stdout=subprocess.PIPE, text=True))
            for p in self.procs:  # started and timing before the caller goes on
                assert p.stdout is not None
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"an interactive loop did not start (exit status {p.wait(READY_TIMEOUT)})")
        except BaseException:
            self.kill()
            raise
        finally:
            for fd in fds:
                os.close(fd)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> list[float]:
        """SIGTERM every loop; all their latencies (seconds)."""
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        out: list[float] = []
        for p in self.procs:
            text, _ = p.communicate(timeout=10)
            out += json.loads(text)
        return out

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout:
                p.stdout.close()


if __name__ == "__main__":
    json.dump(loop(), sys.stdout)
