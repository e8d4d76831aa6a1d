"""Every safety rule of the actuator, on the real kernel: real tasks, real masks, real cgroups."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lbagent import hostinfo
from lbagent.hostinfo import read_task
from lbagent.live import cgroups
from lbagent.live.actuate import Actuator, Outcome
from lbagent.live.config import ScopeConfig
from lbagent.live.probe.types import Scope
from lbagent.live.state import StateFile
from livehost import masks, spawn_in, stop, v1_cpuset, v2_cgroup

pytestmark = pytest.mark.kernel
ALL = hostinfo.online_cpus()
CPU0, CPU1 = frozenset({0}), frozenset({1})


@pytest.fixture
def scoped(tmp_path):
    """An in-scope cgroup, a sleeper with 3 extra threads inside it, and an actuator for that scope."""
    with v2_cgroup("lbagent-t-act") as (path, d):
        proc = spawn_in(d, threads=3)
        state = StateFile(tmp_path / "state.json")
        yield Actuator("affinity", cgroups.resolve_scope(ScopeConfig(cgroups=(path,)), "test"), state), proc, d
        stop(proc)


def test_place_sets_every_thread_and_records_originals_first(scoped):
    act, proc, _ = scoped
    before = masks(proc.pid)
    assert len(before) == 4 and all(m == ALL for m in before.values())
    assert act.place_many([(proc.pid, CPU1)]) == ["placed"]
    assert set(masks(proc.pid).values()) == {CPU1}
    saved = json.loads(act.state.path.read_text())
    (entry,) = saved["placements"]
    assert entry["tgid"] == proc.pid and entry["start"] == read_task(proc.pid).start
    assert {int(t) for t in entry["originals"]} == set(before)
    assert stat.S_IMODE(act.state.path.stat().st_mode) == 0o600
    assert act.restore_all() == {"restored": 1}
    assert set(masks(proc.pid).values()) == {ALL}
    assert not act.state.path.exists()


def test_kernel_threads_pid1_and_self_are_never_touched(tmp_path):
    anyone = Scope(comms=frozenset({"kthreadd", "ksoftirqd/0", "init", "systemd", "python", "pytest"}))
    act = Actuator("affinity", anyone, StateFile(tmp_path / "s.json"))
    ksoftirqd = next(int(p) for p in os.listdir("/proc") if p.isdigit() and read_task(int(p)).comm == "ksoftirqd/0")
    before = {pid: masks(pid) for pid in (2, ksoftirqd, 1, os.getpid())}
    outcomes = act.place_many([(2, CPU1), (ksoftirqd, CPU1), (1, CPU1), (os.getpid(), CPU1)])
    assert outcomes == [Outcome.REFUSED_KTHREAD, Outcome.REFUSED_NO_SETAFFINITY, Outcome.REFUSED_PID1, Outcome.REFUSED_SELF]
    assert all(o.unmanaged and not o.applied for o in outcomes)  # the daemon stops counting such tasks
    assert act.refusals == {"kthread": 1, "no_setaffinity": 1, "pid1": 1, "self": 1}
    assert {pid: masks(pid) for pid in before} == before
    assert act.state.placements == {} and not act.state.path.exists()


def test_out_of_scope_task_is_refused_even_when_asked(scoped):
    act, proc, _ = scoped
    outsider = spawn_in(None)
    try:
        assert act.place_many([(outsider.pid, CPU1), (proc.pid, CPU0)]) == ["refused:out_of_scope", "placed"]
        assert set(masks(outsider.pid).values()) == {ALL}
        by_comm = Actuator("affinity", Scope(comms=frozenset({"nosuchcomm"})), act.state)
        assert by_comm.place_many([(proc.pid, CPU1)]) == ["refused:out_of_scope"]
        by_uid = Actuator("affinity", Scope(uids=frozenset({4242})), act.state)
        assert by_uid.place_many([(proc.pid, CPU1)]) == ["refused:out_of_scope"]
    finally:
        stop(outsider)
        act.restore_all()


def test_mask_is_clipped_to_the_tasks_cpuset(scoped):
    """A task confined to CPU 1 by a (v1) cpuset is never given CPU 0, nor moved off its cpuset."""
    act, proc, _ = scoped
    with v1_cpuset("lbagent-t-clip", "1", proc.pid):
        assert set(masks(proc.pid).values()) == {CPU1}
        [outside] = act.place_many([(proc.pid, CPU0)])
        assert outside is Outcome.REFUSED_OUTSIDE_CPUSET and not outside.unmanaged  # still ours, left to the kernel
        assert act.place_many([(proc.pid, ALL)]) == ["placed"]
        assert act.state.placements[proc.pid].applied == (1,)
        assert set(masks(proc.pid).values()) == {CPU1}


def test_cpu_taken_out_of_service_gives_einval_counted_not_raised(scoped):
    """CPU 1 leaves the task's cpuset between the actuator's look and its change (here: within the
    1 s the effective CPUs are cached): the kernel refuses with EINVAL, counted, nothing raised."""
    act, proc, _ = scoped
    with v1_cpuset("lbagent-t-offline", "0-1", proc.pid) as cs:
        assert act.place_many([(proc.pid, CPU0)]) == ["placed"]
        (cs / "cpuset.cpus").write_text("0")  # CPU 1 out of service for this task
        assert act.place_many([(proc.pid, CPU1)]) == ["error:EINVAL"]
        assert act.errors["EINVAL"] == 4 and set(masks(proc.pid).values()) == {CPU0}  # one per thread
        assert act.restore_all() == {"restored": 1}  # the original (all CPUs), clipped by the kernel
        assert set(masks(proc.pid).values()) == {CPU0}
        (cs / "cpuset.cpus").write_text("0-1")  # CPU 1 back in service: the original returns whole
        assert set(masks(proc.pid).values()) == {ALL}


def test_cpu_leaving_the_cpuset_after_placement_is_still_restored(scoped):
    """Placed on CPU 1, then CPU 1 leaves the task's cpuset: the kernel narrows the mask to what is
    left (our mask, clipped, not someone else's). Restore must still undo it, so that when CPU 1
    returns the kernel does not bring our pin back with it (it keeps the requested mask, 6.2+)."""
    act, proc, _ = scoped
    with v1_cpuset("lbagent-t-shrink", "0-1", proc.pid) as cs:
        assert act.place_many([(proc.pid, CPU1)]) == ["placed"]
        (cs / "cpuset.cpus").write_text("0")
        assert set(masks(proc.pid).values()) == {CPU0}
        assert act.restore_all() == {"restored": 1} and act.refusals["changed_elsewhere"] == 0
        (cs / "cpuset.cpus").write_text("0-1")
        assert set(masks(proc.pid).values()) == {ALL}


def test_reused_pid_is_never_touched(scoped):
    act, proc, _ = scoped
    act.place_many([(proc.pid, CPU1)])
    placement = act.state.placements[proc.pid]
    placement.start += 1  # as if the PID now belonged to a task that started at another moment
    assert act.restore(placement) == "reused_pid"
    assert set(masks(proc.pid).values()) == {CPU1}
    assert act.refusals["reused_pid"] == 1


def test_exited_task_counts_esrch_and_never_raises(scoped):
    act, proc, _ = scoped
    gone = subprocess.Popen(["true"])
    gone.wait()
    outcomes = act.place_many([(gone.pid, CPU1), (proc.pid, CPU1)])
    assert outcomes == [Outcome.ERROR_ESRCH, Outcome.PLACED] and [o.applied for o in outcomes] == [False, True]
    assert not outcomes[0].unmanaged and act.errors == {"ESRCH": 1}


def test_eperm_is_counted_not_raised():
    """Without CAP_SYS_NICE, changing another user's task fails with EPERM: counted, and we go on."""
    target = spawn_in(None)
    script = textwrap.dedent(f"""
        import os, tempfile
        from lbagent.live.actuate import Actuator
        from lbagent.live.probe.types import Scope
        from lbagent.live.state import StateFile
        os.setgid(65534); os.setuid(65534)
        act = Actuator("affinity", Scope(uids=frozenset({{0}})), StateFile(tempfile.mkdtemp() + "/s.json"))
        print([o.value for o in act.place_many([({target.pid}, frozenset({{1}}))])], dict(act.errors))
    """)
    try:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "['error:EPERM'] {'EPERM': 1}"
        assert set(masks(target.pid).values()) == {ALL}
    finally:
        stop(target)


def test_restore_leaves_a_mask_someone_else_changed(scoped):
    act, proc, _ = scoped
    act.place_many([(proc.pid, CPU1)])
    os.sched_setaffinity(proc.pid, CPU0)  # the operator re-pinned the main thread meanwhile
    act.restore_all()
    after = masks(proc.pid)
    assert after[proc.pid] == CPU0
    assert all(m == ALL for t, m in after.items() if t != proc.pid)
    assert act.refusals["changed_elsewhere"] == 1


def test_dry_run_changes_nothing(scoped):
    act, proc, _ = scoped
    dry = Actuator("affinity", act.scope, act.state, dry_run=True)
    assert dry.place_many([(proc.pid, CPU1)]) == ["dry_run"]
    assert set(masks(proc.pid).values()) == {ALL} and not act.state.path.exists()


def test_safe_scan_frees_tasks_pinned_to_a_slot(scoped):
    act, proc, _ = scoped
    os.sched_setaffinity(proc.pid, CPU1)
    for t in masks(proc.pid):
        os.sched_setaffinity(t, CPU1)
    assert act.safe_scan([CPU0, CPU1]) == 1
    assert set(masks(proc.pid).values()) == {ALL}


def _cpuset_place_and_restore(act: Actuator, proc) -> None:
    original = Path(f"/proc/{proc.pid}/cpuset").read_text().strip()
    assert act.place_many([(proc.pid, CPU1)]) == ["placed"]
    leaf = act.cpusets.leaf((1,))
    assert Path(f"/proc/{proc.pid}/cpuset").read_text().strip() == "/" + str(leaf.relative_to(act.cpusets.root))
    assert set(masks(proc.pid).values()) == {CPU1}
    assert act.restore_all() == {"restored": 1}
    assert Path(f"/proc/{proc.pid}/cpuset").read_text().strip() == original
    assert set(masks(proc.pid).values()) == {ALL}
    assert not act.cpusets.base.exists()


def test_cpuset_mode_v1(scoped):
    act, proc, _ = scoped
    cs = Actuator("cpuset", act.scope, act.state, cgroup_name=f"lbagent-t-{os.getpid()}")
    assert cs.cpusets.version == 1
    _cpuset_place_and_restore(cs, proc)
