"""Probes: the live eyes of the agent. Both kinds (CO-RE eBPF and procfs) implement :class:`Probe`,
so the daemon and the recorder never know which one runs.

What both report, the same way:

- An *arrival* is a process (pid == tgid) entering the scope, once: at its fork when the child
  already matches, else at the first exec that makes it match. Threads never arrive. An *exit* is
  reported only for a process that arrived, when its last thread ends, with the process's CPU time.
- The scope (:class:`Scope`) is cgroup v2 ids (a listed cgroup covers its subtree), command names
  (the kernel's 15-character ``comm``) and real uids; empty fields mean "any". Kernel threads and
  the agent's own process are never in scope.
- ``ts_ns`` is CLOCK_MONOTONIC (``time.monotonic_ns()``); ``start_ns`` is the task's start on the
  boot clock, i.e. ``/proc/PID/stat`` field 22 times ``1e9 / CLK_TCK`` (exact in ticks on procfs,
  in ns on BPF): compare ``start_ns // (1e9 / CLK_TCK)`` to field 22 to tell a reused PID.
- ``Snapshot`` covers the window since the previous call; ``CpuSample.arrivals`` counts every new
  task (threads too) woken on that CPU (BPF lite mode: forked there), in or out of scope;
  ``Snapshot.attained`` is the CPU time so far of every process that arrived and is alive.

Call ``poll`` often from one thread: the procfs probe also takes its run-queue samples there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

from lbagent.errors import UserError
from lbagent.live.config import PROBE_MODES, PROBES
from lbagent.live.probe.types import Scope, Snapshot, TaskEvent

BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")


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


class ProbeUnavailable(UserError):
    """The requested probe cannot run here; ``str()`` is a one-line reason for the user."""


log = logging.getLogger("lbagent.live.probe")


def bpf_unavailable_reason(obj_path: Path | None = None) -> str | None:
    """Why the BPF probe cannot even be tried here, or None when it can."""
    from lbagent.live.probe.bpf import DEFAULT_OBJECT

    obj_path = obj_path or DEFAULT_OBJECT
    if os.geteuid() != 0:
        return "not root (loading BPF needs CAP_BPF and CAP_PERFMON; run as root)"
    if not BTF_VMLINUX.exists():
        return f"no kernel BTF at {BTF_VMLINUX} (CO-RE needs CONFIG_DEBUG_INFO_BTF=y)"
    if not obj_path.exists():
        return f"BPF object missing: {obj_path} (build it with `make bpf`)"
    return None


def _open_bpf(scope: Scope, obj_path: Path | None, ring_bytes: int | None, mode: str) -> Probe:
    from lbagent.live.probe.bpf import BpfProbe
    from lbagent.live.probe.libbpf import LibbpfError

    reason = bpf_unavailable_reason(obj_path)
    if reason:
        raise ProbeUnavailable(f"bpf probe unavailable: {reason}")
    try:
        return BpfProbe(scope, obj_path, **({"ring_bytes": ring_bytes} if ring_bytes else {}), mode=mode)
    except LibbpfError as exc:
        raise ProbeUnavailable(f"bpf probe unavailable: load failed: {exc}") from None


def _open_procfs(scope: Scope) -> Probe:
    from lbagent.live.probe.procfs import ProcfsProbe

    try:
        return ProcfsProbe(scope)
    except PermissionError:
        raise ProbeUnavailable("procfs probe unavailable: the proc connector needs root") from None
    except OSError as exc:
        raise ProbeUnavailable(f"procfs probe unavailable: proc connector: {exc.strerror or exc}") from None


def open_probe(
    kind: str = "auto", scope: Scope | None = None, obj_path: Path | None = None, ring_bytes: int | None = None,
    mode: str = "lite",
) -> Probe:
    """Open a probe. ``auto`` tries CO-RE first and falls back to procfs, logging which and why.

    ``ring_bytes`` sizes the BPF probe's event ring (a power of two, at least a page); ``mode`` is
    the BPF probe's (:data:`PROBE_MODES`: ``lite`` keeps off the context-switch path), which the
    procfs probe ignores."""
    scope = scope or Scope()
    if mode not in PROBE_MODES:
        raise ValueError(f"unknown probe mode {mode!r} (one of {', '.join(PROBE_MODES)})")
    if kind == "bpf":
        return _open_bpf(scope, obj_path, ring_bytes, mode)
    if kind == "procfs":
        return _open_procfs(scope)
    if kind != "auto":
        raise ValueError(f"unknown probe kind {kind!r} (one of {', '.join(PROBES)})")
    try:
        probe = _open_bpf(scope, obj_path, ring_bytes, mode)
    except ProbeUnavailable as exc:
        log.warning("%s; falling back to the procfs probe", exc)
        return _open_procfs(scope)
    log.info("using the bpf probe (CO-RE, kernel BTF present, %s mode)", mode)
    return probe
