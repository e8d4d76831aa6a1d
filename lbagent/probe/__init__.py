"""Probes: the live eyes of the agent. Both kinds (CO-RE eBPF and procfs) implement :class:`Probe`,
so the daemon and the recorder never know which one runs."""

from __future__ import annotations

from typing import Protocol

from lbagent.probe.types import Snapshot, TaskEvent


class Probe(Protocol):
    kind: str
    """``"bpf"`` or ``"procfs"``: reported in logs, metrics and ``lbagent probe --json``."""

    def poll(self, timeout: float) -> list[TaskEvent]:
        """Arrivals and exits of in-scope tasks since the last call, waiting up to ``timeout`` s."""

    def snapshot(self) -> Snapshot:
        """Per-CPU state over the window since the previous snapshot (or since the probe opened)."""

    def lost(self) -> int:
        """Events dropped so far (ring buffer full, connector overrun): counted, never silent."""

    def close(self) -> None:
        """Detach everything the probe attached; safe to call twice."""
