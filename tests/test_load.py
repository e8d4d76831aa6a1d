"""Load on the real kernel: a short fork storm and a short soak through a real ``lbagent run``. Not
speed tests (the figures live in ``lbagent bench storm|soak``): they check what must hold at any
speed, namely no crash, every probe event seen or counted lost, flat memory, no leaked fds or links."""

from __future__ import annotations

import pytest

from lbagent.bench.storm import soak, storm

pytestmark = pytest.mark.kernel
LINKS = 4
"""The daemon's probe in its default lite mode: fork, exec, exit and the task iterator."""


def test_fork_storm_no_crash_every_event_accounted_bounded_memory():
    r = storm(rate=1000, seconds=3, policy="round_robin", probe="bpf")
    assert r["exit_code"] == 0 and r["probe"] == "bpf"
    assert r["events_seen"] + r["events_lost"] == r["events_expected"] > 2 * r["tasks"]  # warm-up included
    assert r["decisions"] * 2 <= r["events_expected"] and r["placements"].get("placed", 0) > 0
    assert r["rss_growth_pct"] < 10
    assert r["fds_end"] == r["fds_start"] and r["bpf_links_end"] == r["bpf_links_start"] == LINKS


def test_ring_buffer_overflow_under_a_storm_is_counted_never_silent():
    r = storm(rate=2000, seconds=1, policy="kernel", probe="bpf", ring_bytes=4096)
    assert r["exit_code"] == 0 and r["all_accounted"]


def test_soak_keeps_fds_and_links_flat():
    r = soak(minutes=0.1, rate=100, interval=2)
    assert r["exit_code"] == 0 and r["all_accounted"] and len(r["samples"]) == 3
    assert len(r["fds"]) == 1 and r["bpf_links"] == [LINKS]
