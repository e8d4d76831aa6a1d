"""The text formats the probes read: /proc/PID/stat with hostile command names, kernel cpulists,
/proc/stat, and the ring-buffer record layout shared with the BPF object."""

from __future__ import annotations

import ctypes

import pytest

from lbagent.live.probe.bpf import COMM_LEN, _Cpu, _Event, _Shared, comm_key
from lbagent.hostinfo import NS_PER_TICK, parse_cpulist, parse_stat, state_and_cpu


def _stat(comm: str, state: str = "R", cpu: int = 3) -> str:
    # Fields 3..52 of /proc/PID/stat; 9 = flags, 14/15 = utime/stime, 22 = starttime, 39 = processor.
    fields = ["0"] * 50
    fields[0], fields[6], fields[11], fields[12], fields[19], fields[36] = state, "4194560", "7", "5", "1234", str(cpu)
    return f"4242 ({comm}) " + " ".join(fields) + "\n"


@pytest.mark.parametrize("comm", ["sh", "my prog", "a) R 1 (b", "((("])
def test_parse_stat_survives_any_command_name(comm):
    info = parse_stat(_stat(comm))
    assert (info.pid, info.comm, info.state, info.cpu) == (4242, comm, "R", 3)
    assert info.cputime_ns == 12 * NS_PER_TICK and info.start_ns == 1234 * NS_PER_TICK
    assert info.flags == 4194560


@pytest.mark.parametrize("comm", ["sh", "a) R 1 (b"])
def test_fast_scan_readsstate_and_cpu(tmp_path, comm):
    path = tmp_path / "stat"
    path.write_text(_stat(comm, state="S", cpu=7))
    assert state_and_cpu(str(path)) == (b"S", 7)
    assert state_and_cpu(str(tmp_path / "gone")) is None


@pytest.mark.parametrize("text, cpus", [("0", [0]), ("0-3\n", [0, 1, 2, 3]), ("0-1,4,6-7", [0, 1, 4, 6, 7])])
def test_parse_cpu_list(text, cpus):
    assert parse_cpulist(text) == frozenset(cpus)


def test_comm_key_matches_the_kernels_truncation():
    assert comm_key("a" * 20) == b"a" * (COMM_LEN - 1)
    assert comm_key("make") == b"make"


def test_mirrored_layouts_have_the_c_sizes():
    """Sizes from bpf/lbprobe.bpf.h: lb_event 72 bytes, lb_cpu one 64-byte cache line, and the
    shared block a 64-byte head before the per-CPU array (the loader also checks .bss at open)."""
    assert ctypes.sizeof(_Event) == 72
    assert ctypes.sizeof(_Cpu) == 64
    assert _Shared.cpus.offset == 64
