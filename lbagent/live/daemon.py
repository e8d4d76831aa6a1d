"""The live agent: probe events in, one policy decision per arriving task and per review, changes out.

Per arrival the daemon builds the contract's :class:`~lbagent.spaces.RawObservation` from the latest
probe snapshot (runnable tasks and utilization per slot), its own record of the tasks it manages
(placements in the window, work left, BACKGROUND tasks per slot), and the task's predicted work (the
CPU time of earlier tasks with the same command name), asks the policy, and hands a slot to the
actuator (``KERNEL`` leaves the mask alone) and a class to the share classes. A REVIEW comes when a
managed task's attained CPU time crosses its next milestone (:mod:`lbagent.live.reviews`): the
policy may then change the task's class only. The reward the policy learns from is the contract's:
minus the integral of the number of managed tasks in the system, from the kernel's arrival and exit
timestamps.

It never imports torch, the simulator or the training stack: a host only needs numpy and the probe.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lbagent import spaces
from lbagent.errors import UserError
from lbagent.hostinfo import read_cpus, state_and_cpu
from lbagent.live import cgroups, share
from lbagent.live.actuate import Actuator
from lbagent.live.classes import ShareClasses
from lbagent.live.classes import recover as recover_shares
from lbagent.live.config import Config, ConfigError, load_config
from lbagent.live.fdreserve import FdReserve
from lbagent.live.metrics import Metrics, MetricsServer
from lbagent.live.notify import Notifier
from lbagent.live.probe.types import EventKind, Scope, Snapshot, TaskEvent
from lbagent.live.reviews import ReviewClock
from lbagent.live.state import StateFile, StateFileError
from lbagent.policy import Policy, resolve_policy

log = logging.getLogger("lbagent.live.daemon")
HISTORY_PER_COMM = 32
MAX_COMMS = 4096
PRUNE_INTERVAL = 5.0
"""Seconds between sweeps for managed tasks whose exit event was lost (ring buffer full)."""
SCOPE_WATCH_INTERVAL = 1.0
"""Seconds between looks for scope cgroups that appeared, or were removed and made again."""
DEFAULT_TASK_WORK = 0.05
"""Seconds: the prior for a task whose command has never been seen exit (flagged task_unknown)."""
MAX_WINDOW_PLACEMENTS = 4096
"""Placements remembered for the ``placed`` feature: a bound on memory under an arrival storm."""


# --------------------------------------------------------------------------------- logging
class JsonLines(logging.Formatter):
    """One JSON object per line: machine-readable logs for journald and for tests."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 6), "level": record.levelname.lower(), "logger": record.name}
        entry["msg"] = record.getMessage()
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str) -> None:
    root = logging.getLogger("lbagent")
    if not any(isinstance(h.formatter, JsonLines) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLines())
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level.upper())


def _info(msg: str, **fields) -> None:
    log.info(msg, extra={"fields": fields})


def _warn(msg: str, **fields) -> None:
    log.warning(msg, extra={"fields": fields})


# --------------------------------------------------------------------------------- bookkeeping
@dataclass
class LiveTask:
    tgid: int
    comm: str
    arrival_ns: int
    slot: int | None
    """The slot the daemon put it on, or None when the kernel decides (``KERNEL`` or not applied)."""
    work: float
    background: bool = False
    """The class the policy last gave it (the move itself happens on the share worker)."""
    reviews: int = 0
    """Milestones behind it."""
    seen_slot: int | None = None
    """The slot of the CPU it ran on at its last review (where the kernel decides its place)."""
    read_ns: int = 0
    attained_ns: int = 0
    """Its attained CPU time at its last read, and when that was (0: not read yet)."""

    @property
    def where(self) -> int | None:
        return self.slot if self.slot is not None else self.seen_slot


class WorkHistory:
    """Predicted work of a new task: the mean CPU time of the last tasks with its command name."""

    def __init__(self) -> None:
        self.by_comm: dict[str, deque[float]] = {}
        self.overall = DEFAULT_TASK_WORK

    def predict(self, comm: str) -> tuple[float, bool]:
        seen = self.by_comm.get(comm)
        return (sum(seen) / len(seen), False) if seen else (self.overall, True)

    def record(self, comm: str, seconds: float) -> None:
        if comm not in self.by_comm and len(self.by_comm) >= MAX_COMMS:
            del self.by_comm[next(iter(self.by_comm))]  # forget the command seen first: memory stays bounded
        self.by_comm.setdefault(comm, deque(maxlen=HISTORY_PER_COMM)).append(seconds)
        self.overall += 0.05 * (seconds - self.overall)


class SojournClock:
    """The integral of the number of managed tasks in the system, between two decisions."""

    def __init__(self) -> None:
        self.n = 0
        self.last_ns: int | None = None
        self.acc = 0.0

    def advance(self, t_ns: int) -> None:
        if self.last_ns is not None and t_ns > self.last_ns:
            self.acc += self.n * (t_ns - self.last_ns) / 1e9
        self.last_ns = t_ns if self.last_ns is None else max(self.last_ns, t_ns)

    def arrive(self, t_ns: int) -> None:
        self.advance(t_ns)
        self.n += 1

    def leave(self, t_ns: int) -> None:
        self.advance(t_ns)
        self.n = max(0, self.n - 1)

    def take(self, t_ns: int) -> float:
        self.advance(t_ns)
        acc, self.acc = self.acc, 0.0
        return acc


class HostView:
    """Turns a snapshot plus the daemon's own records into one RawObservation (B = 1).

    It keeps the recent placements itself: the ``placed`` feature counts those inside the
    snapshot's window, and only this view knows the window."""

    def __init__(self) -> None:
        self.layout = spaces.build_slots(read_cpus())
        self.slot_masks = [frozenset(s.cpus) for s in self.layout.slots]
        self.slot_of_cpu = self.layout.slot_of_cpu()
        self.slot_mask, self.capacity = self.layout.mask[None], self.layout.capacities[None]
        self._per_snapshot: tuple[Snapshot | None, np.ndarray, np.ndarray] = (None, np.zeros(0), np.zeros(0))
        self._placements: deque[tuple[int, int]] = deque(maxlen=MAX_WINDOW_PLACEMENTS)
        """(decision time ns, slot), oldest first."""

    def record_placement(self, t_ns: int, slot: int) -> None:
        """A task was sent to ``slot`` at ``t_ns``: it counts in ``placed`` while inside the window."""
        self._placements.append((t_ns, slot))

    def cpu_state(self, snap: Snapshot) -> tuple[np.ndarray, np.ndarray]:
        """Runnable tasks and utilization per slot; computed once per snapshot, not per decision."""
        if self._per_snapshot[0] is not snap:
            m = spaces.MAX_SLOTS
            runnable, util, count = np.zeros(m), np.zeros(m), np.zeros(m)
            for c in snap.cpus:
                s = self.slot_of_cpu.get(c.cpu)
                if s is not None:
                    runnable[s] += c.runq
                    util[s] += c.util
                    count[s] += 1
            util = np.where(count > 0, util / np.maximum(count, 1), 0.0)
            self._per_snapshot = (snap, runnable[None], util[None])
        return self._per_snapshot[1], self._per_snapshot[2]

    def raw(
        self,
        snap: Snapshot,
        live: dict[int, LiveTask],
        now_ns: int,
        task_work: float,
        unknown: bool,
        since_last: float,
        share_allowed: bool = False,
        reviewed: tuple[LiveTask, float] | None = None,
    ) -> spaces.RawObservation:
        """``reviewed``: the task under REVIEW and its attained CPU seconds (None: an arrival)."""
        m = spaces.MAX_SLOTS
        runnable, util = self.cpu_state(snap)
        recent = self._placements
        while recent and now_ns - recent[0][0] > max(snap.window_ns, 1):
            recent.popleft()  # placements older than the window no longer count
        placed = np.zeros(m)
        for _, s in recent:
            placed[s] += 1
        work_left, background = np.zeros(m), np.zeros(m)
        for t in live.values():
            if t.slot is not None:
                work_left[t.slot] += max(t.work - (now_ns - t.arrival_ns) / 1e9, 0.0)
            if t.background and t.where is not None:
                background[t.where] += 1  # a demoted task is CPU-bound: counted as runnable where it ran
        task, attained = reviewed if reviewed is not None else (None, 0.0)
        where = task.where if task is not None else None
        return spaces.RawObservation(
            slot_mask=self.slot_mask,
            capacity=self.capacity,
            runnable=runnable,
            util=util,
            placed=placed[None],
            work_left=work_left[None],
            task_work=np.array([task_work]),
            task_unknown=np.array([unknown]),
            since_last=np.array([since_last]),
            share_allowed=share_allowed,
            review=np.array([task is not None]),
            attained=np.array([attained]),
            current_slot=np.array([-1 if where is None else where]),
            background_now=np.array([task is not None and task.background]),
            runnable_bg=background[None],
        )


# --------------------------------------------------------------------------------- the daemon
class Daemon:
    """Owns the probe, policy, actuator and metrics; ``run`` loops until ``stop`` is requested."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        overrides: dict | None = None,
        policy: Policy | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config, self.config_path, self.overrides = config, config_path, overrides or {}
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.view = HostView()
        self.history = WorkHistory()
        self.clock = SojournClock()
        self.live: dict[int, LiveTask] = {}
        self.stop_requested = self.reload_requested = False
        self.last_decision_ns: int | None = None
        self.decisions: Counter[str] = Counter()
        """Decisions made, by kind (arrival, review)."""
        # Everything that can fail on bad input happens before anything on the host is touched.
        self.probe_scope = resolve_scope(config)
        self.policy = policy or resolve_policy(config.policy)
        self.policy.begin_trial(1, 0)
        self.reserve = FdReserve()  # so that restoring at the end cannot fail for want of descriptors
        self.server = self._bind_metrics(config)
        try:
            state = StateFile(config.state_file)
            if not config.dry_run:
                state.lock()
            self.actuator = Actuator(config.mode, self.probe_scope, state, dry_run=config.dry_run)
            self.probe = self._open_probe(config, self.probe_scope)
        except BaseException:
            if self.server is not None:
                self.server.close()
            self.reserve.release()
            raise
        self.classes = self._open_classes(config, state)
        self.reviews = ReviewClock(config.review_m0, config.max_reviews if self.classes else 0)
        if self.probe_scope.missing:
            _warn("scope cgroup does not exist yet: watching for it", cgroups=list(self.probe_scope.missing))
        self._register_metrics()
        self.snap = self.probe.snapshot()
        self.next_snapshot = time.monotonic() + config.snapshot_interval
        self.next_watchdog = self.next_prune = self.next_scope_watch = time.monotonic()

    # ---------------------------------------------------------------- start-up
    def _bind_metrics(self, config: Config) -> MetricsServer | None:
        if not config.metrics_enabled:
            return None
        host, port = config.metrics_host_port
        try:
            return MetricsServer(self.metrics, host, port)
        except OSError as e:
            raise UserError(f"{config.source}: metrics.address {config.metrics_address}: cannot bind: {e.strerror or e}") from None

    def _open_probe(self, config: Config, scope: Scope):
        from lbagent.live.probe import ProbeUnavailable, open_probe

        try:
            probe = open_probe(config.probe, scope, Path(config.bpf_object) if config.bpf_object else None,
                               config.ring_buffer_bytes, mode=config.probe_mode)
        except ProbeUnavailable as e:
            raise UserError(str(e)) from None
        _info("probe open", probe=probe.kind, mode=config.probe_mode, scope=str(config.scope))
        return probe

    def _open_classes(self, config: Config, state: StateFile) -> ShareClasses | None:
        """The share lever, when asked for and the host has a cpu controller; else BACKGROUND stays
        masked (and reviews, which can only change a class, are not made)."""
        if not config.share:
            return None
        try:
            controller = share.detect()
        except share.ShareError as e:
            _warn("share classes unavailable: policies see BACKGROUND masked", reason=e.strerror)
            return None
        _info("share classes", how=controller.describe())
        return ShareClasses(controller, state, self.actuator.check, dry_run=config.dry_run)

    def recover(self) -> None:
        """Undo what a previous daemon left behind: from its state file, or by a safe scan."""
        state = self.actuator.state
        if self.config.dry_run:
            if os.path.lexists(state.path):
                _warn("dry run: leaving the state file and the tasks it records as they are", state_file=str(state.path))
            return
        try:
            previous = StateFile.load(state.path)
        except StateFileError as e:
            aside = state.move_aside()
            rescued = self.actuator.safe_scan(self.view.slot_masks)
            log.error(f"{e}; moved it to {aside} and freed {rescued} task(s) by a safe scan",
                      extra={"fields": {"rescued": rescued}})
            return
        if previous.placements:
            outcomes = {p.tgid: self.actuator.restore(p) for p in previous.placements.values()}
            _info("restored tasks of a previous run", outcomes=outcomes)
        if previous.shares or previous.share_groups:
            try:
                controller = self.classes.controller if self.classes else share.detect()
            except share.ShareError as e:
                log.error(f"a previous run left share classes, but this host has no cpu controller now: {e.strerror}")
            else:
                _info("restored share classes of a previous run",
                      outcomes=dict(recover_shares(controller, self.actuator.check, previous)))
        state.remove()

    def _register_metrics(self) -> None:
        m, a = self.metrics, self.actuator
        m.help.update(
            lbagent_decisions_total="decisions by kind (arrival, review), chosen slot (slotN or kernel) and class",
            lbagent_share_moves_total="class changes by class asked and outcome (moved, unchanged, refused:rule, error:kind)",
            lbagent_reviews_pending="managed tasks waiting for their next review",
            lbagent_placements_total="placement outcomes (placed, dry_run, refused:reason, error:kind)",
            lbagent_errors_total="failed kernel calls by errno kind (ESRCH, EINVAL, EPERM, other)",
            lbagent_refusals_total="placements the safety rules refused, by rule",
            lbagent_probe_events_total="probe events received, by kind (arrival, exit; threads included)",
            lbagent_probe_lost_events_total="probe events dropped (ring buffer full, connector overrun)",
            lbagent_managed_tasks="managed tasks alive now",
            lbagent_reloads_total="SIGHUP reloads by result",
        )
        m.gauge("lbagent_errors_total", lambda: {(("kind", k),): float(v) for k, v in a.errors.items()})
        m.gauge("lbagent_refusals_total", lambda: {(("rule", k),): float(v) for k, v in a.refusals.items()})
        m.gauge("lbagent_probe_lost_events_total", lambda: float(self.probe.lost()))
        m.gauge("lbagent_managed_tasks", lambda: float(len(self.live)))
        m.gauge("lbagent_reviews_pending", lambda: float(len(self.reviews)))
        if self.classes is not None:
            classes = self.classes
            m.gauge("lbagent_share_moves_total", lambda: {(("class", c), ("outcome", o)): float(n)
                                                          for (c, o), n in list(classes.outcomes.items())})
        m.gauge("lbagent_info", lambda: {(("policy", self.config.policy), ("probe", self.probe.kind), ("probe_mode", self.config.probe_mode),
                                           ("mode", self.config.mode), ("dry_run", str(self.config.dry_run).lower()),
                                           ("share", self.classes.controller.describe() if self.classes else "off")): 1.0})

    # ---------------------------------------------------------------- the loop
    def run(self) -> int:
        self.recover()
        self.notifier.ready(f"managing {self.config.scope} with {self.config.policy} via {self.probe.kind}")
        _info("ready", policy=self.config.policy, probe=self.probe.kind, mode=self.config.mode,
              dry_run=self.config.dry_run, slots=[list(s) for s in self.view.slot_masks],
              metrics=self.server and ":".join(map(str, self.server.address)))
        try:
            while not self.stop_requested:
                if self.reload_requested:
                    self.reload_requested = False
                    self.reload()
                self.step(0.05)
        finally:
            self.shutdown()
        return 0

    def step(self, timeout: float) -> None:
        due = self.reviews.next_due_ns()
        if due is not None:  # whole ms, rounded up: a probe's wait truncates to ms, and 0 would spin
            timeout = min(timeout, max(0, math.ceil((due - time.monotonic_ns()) / 1e6)) / 1e3)
        events = self.probe.poll(timeout)
        if events:
            self.handle(events)
        self.review_due()
        now = time.monotonic()
        if now >= self.next_snapshot:
            self.snap = self.probe.snapshot()
            self.next_snapshot = now + self.config.snapshot_interval
            self.review_snapshot()
        if now >= self.next_prune:
            self.prune()
            self.next_prune = now + PRUNE_INTERVAL
        if self.config.scope.cgroups and now >= self.next_scope_watch:
            self.watch_scope()
            self.next_scope_watch = now + SCOPE_WATCH_INTERVAL
        if self.notifier.watchdog_interval and now >= self.next_watchdog:
            self.notifier.watchdog()
            self.next_watchdog = now + self.notifier.watchdog_interval

    def handle(self, events: list[TaskEvent]) -> None:
        requests: dict[int, tuple[frozenset[int], int]] = {}
        for ev in sorted(events, key=lambda e: e.ts_ns):
            self.metrics.inc("lbagent_probe_events_total", kind=ev.kind.value)
            if ev.pid != ev.tgid:
                continue  # a thread: it inherits its creator's mask, and restore covers every thread
            if ev.kind == EventKind.ARRIVAL:
                if ev.tgid in self.live:
                    continue  # the exec after a fork: one decision per task
                slot = self.decide(ev)
                if slot is not None:
                    requests[ev.tgid] = (self.view.slot_masks[slot], ev.ts_ns)
            else:
                task = self.live.pop(ev.tgid, None)
                requests.pop(ev.tgid, None)
                if ev.runtime_ns > 0:
                    self.history.record(ev.comm, ev.runtime_ns / 1e9)
                if task is not None:
                    self.clock.leave(ev.ts_ns)
                    self._forget(ev.tgid)
        if requests:
            tgids = list(requests)
            outcomes = self.actuator.place_many([(t, requests[t][0]) for t in tgids])
            done = time.monotonic_ns()
            for tgid, outcome in zip(tgids, outcomes, strict=True):
                self.metrics.inc("lbagent_placements_total", outcome=outcome.value)
                if outcome.applied:
                    self.metrics.observe_latency((done - requests[tgid][1]) / 1e9)
                elif outcome.unmanaged:
                    del self.live[tgid]  # not ours to manage (out of scope, kernel thread...): not counted either
                    self.clock.leave(done)  # (a class asked for it meets the same rules on the share worker)
                else:
                    self.live[tgid].slot = None
                if self.config.dry_run or log.isEnabledFor(logging.DEBUG):
                    log.log(logging.INFO if self.config.dry_run else logging.DEBUG, "placement",
                            extra={"fields": {"tgid": tgid, "cpus": sorted(requests[tgid][0]), "outcome": outcome.value}})

    def prune(self) -> None:
        """Forget managed tasks that are gone without an exit event (lost events must not leak memory)."""
        now = time.monotonic_ns()
        for tgid in [t for t in self.live if not os.path.exists(f"/proc/{t}")]:
            del self.live[tgid]
            self.clock.leave(now)
            self._forget(tgid)

    def _forget(self, tgid: int) -> None:
        self.actuator.forget(tgid)
        if self.classes is not None:
            self.classes.forget(tgid)

    def _ask(self, t_ns: int, kind: str, work: float, unknown: bool,
             reviewed: tuple[LiveTask, float] | None = None) -> tuple[int, bool]:
        """One policy decision (the reward since the previous one goes first): (slot, background)."""
        if self.last_decision_ns is not None:
            self.policy.observe(spaces.reward(np.array([self.clock.take(t_ns)])), np.array([False]))
        else:
            self.clock.take(t_ns)
        since = 0.0 if self.last_decision_ns is None else (t_ns - self.last_decision_ns) / 1e9
        raw = self.view.raw(self.snap, self.live, t_ns, work, unknown, max(since, 0.0),
                            share_allowed=self.classes is not None, reviewed=reviewed)
        mask = spaces.action_mask(raw)
        action = int(spaces.validate_actions(self.policy.act(spaces.encode(raw), raw, mask), mask)[0])
        self.last_decision_ns = max(t_ns, self.last_decision_ns or t_ns)
        self.decisions[kind] += 1
        slot, cls = (int(x) for x in spaces.split_action(action))
        background = cls == spaces.BACKGROUND
        label = "kernel" if slot == spaces.KERNEL else f"slot{slot}"
        self.metrics.inc("lbagent_decisions_total", 1.0, kind=kind, action=label, **{"class": "background" if background else "normal"})
        return slot, background

    def decide(self, ev: TaskEvent) -> int | None:
        """One decision for an arriving task: the slot to place it on (None for KERNEL); its
        class goes to the share worker."""
        self.clock.arrive(ev.ts_ns)
        work, unknown = self.history.predict(ev.comm)
        action, background = self._ask(ev.ts_ns, "arrival", work, unknown)
        slot = None if action == spaces.KERNEL else action
        task = self.live[ev.tgid] = LiveTask(ev.tgid, ev.comm, ev.ts_ns, slot, work, background)
        if slot is not None:
            self.view.record_placement(ev.ts_ns, slot)
        if self.classes is not None:
            if background or self.classes.active:  # a child of a demoted task is born BACKGROUND
                self.classes.request(ev.tgid, background)
            self.reviews.watch(ev.tgid, time.monotonic_ns(), 0, 0)
        if log.isEnabledFor(logging.DEBUG) or (self.config.dry_run and slot is None):
            log.log(logging.INFO if self.config.dry_run else logging.DEBUG, "decision",
                    extra={"fields": {"tgid": ev.tgid, "comm": ev.comm, "kind": "arrival", "slot": slot,
                                      "background": task.background, "work": round(work, 4), "unknown": unknown}})
        return slot

    def review_due(self) -> None:
        """Read the tasks whose next milestone may have come; a crossing is a REVIEW decision."""
        now = time.monotonic_ns()
        for tgid in self.reviews.due(now):
            task = self.live.get(tgid)
            attained = share.process_attained_ns(tgid) if task is not None else None
            if task is None or attained is None:
                continue  # exited: its exit event settles it
            earned = self.reviews.crossed(attained, task.reviews)
            if earned > task.reviews:
                task.reviews = earned
                self.review(task, attained, now)
            share_of_cpu = (attained - task.attained_ns) / (now - task.read_ns) if task.read_ns and now > task.read_ns else 1.0
            task.read_ns, task.attained_ns = now, attained
            self.reviews.watch(tgid, now, attained, task.reviews, share_of_cpu)

    def review_snapshot(self) -> None:
        """The probe's snapshot carries every managed task's attained time (all threads): a task the
        schedule would read too late (it runs on more than one CPU) is reviewed from it."""
        if not self.reviews.max_reviews:
            return
        for tgid, attained in self.snap.attained.items():
            task = self.live.get(tgid)
            if task is not None and (earned := self.reviews.crossed(attained, task.reviews)) > task.reviews:
                task.reviews = earned
                self.review(task, attained, self.snap.t_ns)

    def review(self, task: LiveTask, attained_ns: int, now_ns: int) -> None:
        """A REVIEW: the policy may change the task's class (its slot part must be KERNEL: keep it)."""
        found = state_and_cpu(f"/proc/{task.tgid}/stat")
        if found is not None:
            task.seen_slot = self.view.slot_of_cpu.get(found[1])
        _, background = self._ask(now_ns, "review", task.work, False, (task, attained_ns / 1e9))
        if background != task.background and self.classes is not None:
            task.background = background
            self.classes.request(task.tgid, background)
        if log.isEnabledFor(logging.DEBUG) or self.config.dry_run:
            log.log(logging.INFO if self.config.dry_run else logging.DEBUG, "decision",
                    extra={"fields": {"tgid": task.tgid, "comm": task.comm, "kind": "review", "reviews": task.reviews,
                                      "attained": round(attained_ns / 1e9, 4), "background": task.background}})

    def watch_scope(self) -> None:
        """Pick up scope cgroups that appeared (systemd makes a slice when its first unit starts) or
        were made again under a new id; until then they hold no task, and the log says so."""
        old = self.probe_scope
        try:
            scope = resolve_scope(self.config)
            if scope != old:
                self._use_scope(scope, self._open_probe(self.config, scope))
        except UserError as e:
            _warn("scope cgroups changed but the probe cannot follow: keeping the old scope", reason=str(e))
            return
        if scope != old:
            _info("scope cgroups changed", appeared=sorted(set(old.missing) - set(scope.missing)),
                  missing=sorted(scope.missing))

    def _use_scope(self, scope: Scope, probe) -> None:
        """Switch to a probe opened on the new scope first, so a failure to open keeps the old one."""
        old, self.probe = self.probe, probe
        old.close()
        self.probe_scope = self.actuator.scope = scope

    # ---------------------------------------------------------------- signals
    def reload(self) -> None:
        """SIGHUP: new config and policy, same state. A bad file keeps the old one and says why.

        Everything that can fail comes before the first change: reading the file, the new policy,
        the new scope's probe and, from a dry run to a live one, the state file's lock (without it
        two daemons would share one record and a crash would strand the tasks of one of them)."""
        self.notifier.reloading()
        probe = None
        going_live = False
        try:
            new = load_config(self.config_path).with_overrides(**self.overrides) if self.config_path else self.config
            fixed = [k for k in ("mode", "state_file", "probe", "probe_mode", "bpf_object", "ring_buffer_bytes", "metrics_address",
                                 "metrics_enabled", "share", "review_m0", "max_reviews")
                     if getattr(new, k) != getattr(self.config, k)]
            if fixed:
                raise UserError(f"{', '.join(fixed)} cannot change on reload (restart the daemon)")
            scope = resolve_scope(new)
            policy = resolve_policy(new.policy)
            policy.begin_trial(1, 0)
            if scope != self.probe_scope:
                probe = self._open_probe(new, scope)
            going_live = self.config.dry_run and not new.dry_run
            if going_live:
                self.actuator.state.lock()
        except Exception as e:  # a running daemon outlives any bad file; a bug keeps its traceback in the log
            if probe is not None:
                probe.close()
            self.metrics.inc("lbagent_reloads_total", result="rejected")
            user = isinstance(e, UserError)
            log.warning("reload rejected, keeping the running config and policy", exc_info=not user,
                        extra={"fields": {"reason": str(e) if user else f"{type(e).__name__}: {e}"}})
            self.notifier.ready()
            return
        if probe is not None:
            self._use_scope(scope, probe)
        self.policy, self.config = policy, new
        self.actuator.dry_run = new.dry_run
        if self.classes is not None:
            self.classes.dry_run = new.dry_run
        logging.getLogger("lbagent").setLevel(new.log_level.upper())
        if going_live:
            self.recover()  # a daemon that crashed before this one went live left tasks to restore
        self.metrics.inc("lbagent_reloads_total", result="applied")
        _info("reloaded", policy=new.policy, scope=str(new.scope), dry_run=new.dry_run)
        self.notifier.ready()

    def shutdown(self) -> None:
        self.notifier.stopping()
        if self.server is not None:
            self.server.close()  # first: no new connection may take the descriptors released next
        self.reserve.release()
        shares = self.classes.close() if self.classes is not None else {}
        outcomes = self.actuator.restore_all()
        _info("stopped: restored every changed task", outcomes=dict(outcomes), shares=dict(shares), decisions=dict(self.decisions))
        self.probe.close()


def resolve_scope(config: Config) -> Scope:
    """The one scope of probe and actuator; a cgroup that does not exist yet is watched for."""
    return cgroups.resolve_scope(config.scope, config.source)


DEFAULT_CONFIG = "/etc/lbagent/lbagent.toml"


def run(config_path: str | None, *, dry_run: bool = False, policy: str | None = None) -> int:
    """``lbagent run``: load and check everything, then loop until SIGTERM/SIGINT; SIGHUP reloads."""
    path = config_path or DEFAULT_CONFIG
    if not config_path and not Path(path).exists():
        raise ConfigError(f"no config given and {DEFAULT_CONFIG} does not exist (pass --config FILE)")
    overrides = {"dry_run": True if dry_run else None, "policy": policy}
    config = load_config(path).with_overrides(**overrides)
    setup_logging(config.log_level)
    daemon = Daemon(config, config_path=path, overrides=overrides)

    def on_stop(signum, frame) -> None:
        daemon.stop_requested = True

    def on_hup(signum, frame) -> None:
        daemon.reload_requested = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    return daemon.run()
