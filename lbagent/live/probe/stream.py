"""Drive any probe in fixed windows: the loop shared by ``lbagent probe`` and ``lbagent record``."""

from __future__ import annotations

import time
from collections.abc import Iterator

from lbagent.live.probe import Probe
from lbagent.live.probe.types import Snapshot, TaskEvent


def windows(probe: Probe, interval: float, duration: float | None = None) -> Iterator[tuple[Snapshot, list[TaskEvent]]]:
    """Yield (snapshot, events of that window) every ``interval`` s until ``duration`` s have passed
    (forever when None). Events are polled continuously, so the ring buffer never backs up."""
    start = time.monotonic()
    due = start + interval
    end = None if duration is None else start + duration
    events: list[TaskEvent] = []
    while True:
        now = time.monotonic()
        if now < due:
            events.extend(probe.poll(min(due - now, 0.05)))
            continue
        events.extend(probe.poll(0))
        yield probe.snapshot(), events
        events = []
        due += interval
        if end is not None and due > end + 1e-9:
            return


def snapshot_record(snapshot: Snapshot, t: float, kind: str) -> dict:
    """The ``lbagent probe --json`` line: runq is the window's mean, arrivals the window's count."""
    return {
        "t": round(t, 6),
        "probe": kind,
        "cpus": [
            {"cpu": c.cpu, "runq": round(c.runq, 4), "util": round(c.util, 4), "arrivals": c.arrivals}
            for c in snapshot.cpus
        ],
        "lost": snapshot.lost,
    }
