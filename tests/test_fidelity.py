"""``lbagent bench fidelity``: seeded batch schedules, the simulate() seam, and short real runs on the
kernel (a tiny schedule; the real measurement needs a quiet machine and minutes)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lbagent import hostinfo
from lbagent.bench import fidelity, taskgen
from lbagent.errors import UserError
from lbagent.eval.fidelity import OUTSIDE_HOG_SHARE, Workload, simulate
from lbagent.live import share

TINY = Workload("tiny", 0.5, seed=3)
CLI = [sys.executable, "-m", "lbagent.cli", "bench", "fidelity"]


def test_batch_schedule_is_seeded_at_the_asked_load_with_a_size_scale_per_command():
    a = taskgen.make_batch(5, 2000.0, 0.8, 2, fidelity.COMMANDS)
    assert a == taskgen.make_batch(5, 2000.0, 0.8, 2, fidelity.COMMANDS) != taskgen.make_batch(6, 2000.0, 0.8, 2, fidelity.COMMANDS)
    work = np.array([t.work for t in a])
    assert 0.75 < work.sum() / 2000.0 / 2 < 0.85  # 80 % of two CPUs, the 2 s cap included
    assert work.max() == 2.0 and 0.04 < work.mean() < 0.055  # about 50 ms, heavy-tailed, capped
    by = {c.name: np.median([t.work for t in a if t.comm == c.name]) for c in fidelity.COMMANDS}
    assert by["fid-cc"] < by["fid-test"] < by["fid-ld"]  # each command its own scale
    assert math.isclose(taskgen.capped_pareto_mean(1.0, 1.5, 1e12), 3.0, rel_tol=1e-5)


def test_simulate_replays_every_policy_and_hog_by_hand_computed_cases():
    tasks = [taskgen.Task(0.0, 0.05), taskgen.Task(0.0, 0.01)]
    assert np.allclose(simulate(tasks, "kernel", TINY, capacities=(1.0,)), [0.06, 0.02])  # processor sharing
    assert np.allclose(simulate(tasks, "kernel", TINY, capacities=(1.0, 1.0)), [0.05, 0.01])
    assert np.allclose(simulate(tasks, "oracle", TINY, capacities=(1.0,)), [0.06, 0.02])  # nothing over 100 ms
    # Two 100 ms tasks reach 20 ms + the lag at 2 * that; a 10 ms task arriving after it runs at
    # normal weight beside the background group (weight 2 whatever its size): 1024 / 1026 of the CPU.
    batch = [taskgen.Task(0.0, 0.1), taskgen.Task(0.0, 0.1), taskgen.Task(0.07, 0.01)]
    assert simulate(batch, "kernel", TINY, capacities=(1.0,))[2] == pytest.approx(0.03)
    assert simulate(batch, "las:20ms", TINY, capacities=(1.0,))[2] == pytest.approx(0.01 * 1026 / 1024)
    big = [taskgen.Task(0.0, 0.2), taskgen.Task(0.0, 0.01)]
    assert simulate(big, "oracle", TINY, capacities=(1.0,))[1] == pytest.approx(0.01 * 1026 / 1024)
    same = Workload("one-hog-same", 0.5, "same", seed=1)
    alone = simulate([taskgen.Task(0.0, 0.05)], "kernel", same, capacities=(1.0,))
    assert alone[0] == pytest.approx(0.10)  # the in-group hog takes half of the one CPU
    other = Workload("one-hog-other", 0.5, "other", seed=1)
    outside = simulate([taskgen.Task(0.0, 0.05)], "kernel", other, capacities=(1.0,))
    assert outside[0] == pytest.approx(0.05 / (1 - OUTSIDE_HOG_SHARE))
    assert simulate([taskgen.Task(0.0, 0.05)], "kernel", other, capacities=(1.0, 1.0))[0] == pytest.approx(0.05)  # a free CPU


def test_policy_specs():
    assert fidelity.parse_policy("las:30ms").demote_after == pytest.approx(0.03)
    assert fidelity.parse_policy("oracle").background_over == fidelity.ORACLE_OVER
    for bad in ("las", "las:0ms", "las:30", "sed"):
        with pytest.raises(UserError, match="unknown policy"):
            fidelity.parse_policy(bad)


@pytest.mark.parametrize("args, message", [
    (["--policies", "kernel,fifo"], "unknown policy 'fifo'"),
    (["--policies", "oracle"], "must include kernel"),
    (["--workloads", "load50"], "--workloads: unknown load50"),
    (["--json", "/nonexistent/dir/f.json"], "cannot write into /nonexistent/dir"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    r = subprocess.run(CLI + args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.kernel
def test_non_root_gets_one_line_and_exit_2():
    import rich.console  # noqa: F401  (loaded as root: the standard library under /root is unreadable to nobody)
    from click.testing import CliRunner

    from lbagent.cli import main

    was_root = os.geteuid() == 0
    if was_root:
        os.seteuid(65534)  # nobody (the interpreter under /root cannot be started as nobody: drop here)
    try:
        result = CliRunner().invoke(main, ["bench", "fidelity"])
    finally:
        if was_root:
            os.seteuid(0)
    assert result.exit_code == 2
    assert result.stderr == "lbagent: error: bench fidelity runs real tasks in cgroups it makes: run it as root\n"


def _leftovers(patience: float = 0.5) -> list[str]:
    """cgroups of a fidelity run, and live (not zombie) processes of its commands, still there after
    ``patience`` seconds (SIGKILLed tasks take a moment to exit)."""
    deadline = time.monotonic() + patience
    while (found := _leftovers_now()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _leftovers_now() -> list[str]:
    root = share.detect().root
    groups = [p.name for p in root.iterdir() if p.name.startswith(fidelity.GROUP_PREFIX)]
    names = {c.name for c in fidelity.COMMANDS}
    procs = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "comm").read_text().strip() in names:
                if hostinfo.read_task(int(d.name)).state != "Z":
                    procs.append(d.name)
        except OSError:  # gone meanwhile
            pass
    return groups + procs


@pytest.mark.kernel
def test_a_tiny_run_writes_the_json_schema_with_ratio_one_for_the_kernel(tmp_path):
    out = tmp_path / "fidelity.json"
    r = subprocess.run(CLI + ["--workloads", "load80", "--seconds", "2", "--repeats", "1", "--max-elsewhere", "1000",
                              "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert set(doc) == {"runs", "discarded"} and doc["discarded"] == 0
    rows = {row["policy"]: row for row in doc["runs"]}
    assert list(rows) == ["kernel", "las:30ms", "oracle"]
    for row in doc["runs"]:
        assert set(row) == {"workload", "policy", "real_ratio", "sim_ratio", "real_mean", "sim_mean", "spread"}
        assert row["workload"] == "load80" and math.isfinite(row["real_mean"]) and row["real_mean"] > 0.01
        assert math.isfinite(row["real_ratio"]) and row["spread"] is None  # one repeat: no spread
    assert rows["kernel"]["real_ratio"] == 1.0 and rows["kernel"]["sim_ratio"] == 1.0
    assert rows["kernel"]["sim_mean"] > 0.01
    assert all(math.isfinite(row["sim_ratio"]) and row["sim_mean"] > 0.01 for row in doc["runs"])
    assert "share mechanism: cgroup v1 cpu controller" in r.stderr
    assert "demoted" in r.stderr  # the las monitor moved tasks
    assert _leftovers() == []


@pytest.mark.kernel
def test_an_interrupted_run_leaves_no_cgroup_and_no_task_behind():
    assert _leftovers() == []
    timer = threading.Timer(1.2, os.kill, (os.getpid(), signal.SIGINT))  # mid-run, as a Ctrl-C would
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            fidelity.measure([Workload("hogged", 0.5, "same", seed=4)], ["las:30ms", "kernel"], repeats=1, seconds=3,
                             max_elsewhere=1e9, progress=lambda _: None)
    finally:
        timer.cancel()
    assert _leftovers() == []


@pytest.mark.kernel
def test_a_run_disturbed_by_another_process_is_discarded():
    cpu = min(hostinfo.online_cpus())
    burner = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        time.sleep(0.2)
        burned = hostinfo.read_task(burner.pid).cputime_ns / 1e9
        report = fidelity.measure([TINY], ["kernel"], repeats=1, seconds=2, max_elsewhere=0.4, max_retries=0,
                                  progress=lambda _: None)
        burned = hostinfo.read_task(burner.pid).cputime_ns / 1e9 - burned
    finally:
        burner.kill()
        burner.wait()
    assert burned > 1.0  # it really took CPU during the run
    assert report.discarded == 1 and report.runs == []
    assert report.rejected[0].elsewhere > 0.8 * burned  # the burner is what went elsewhere
    assert report.rows[0].runs == 0 and report.rows[0].real_mean is None and report.rows[0].note == "no undisturbed run"


@pytest.mark.kernel
def test_an_undisturbed_account_adds_up():
    """The run's own CPU is all counted once: what is left for elsewhere is not below zero (a
    double count would push it there) and the tasks' work is all inside the own share."""
    report = fidelity.measure([TINY], ["kernel"], repeats=1, seconds=2, max_elsewhere=1e9, progress=lambda _: None)
    (run,) = report.runs
    work = sum(t.work for t in taskgen.make_batch(TINY.seed, 2, TINY.load, len(hostinfo.online_cpus()), fidelity.COMMANDS))
    assert run.elsewhere > -0.3 and run.own > work and run.unfinished == 0 and run.lag_max < 0.05
