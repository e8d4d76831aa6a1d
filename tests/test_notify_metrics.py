"""The sd_notify protocol over a real unix datagram socket, and the Prometheus endpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from lbagent.live.metrics import Metrics, MetricsServer, histogram_quantile, parse, scrape
from lbagent.live.notify import Notifier
from lbagent.live.status import render, summary


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_ready_watchdog_and_stopping_reach_the_socket(listener):
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_interval == 2.0
    assert n.ready("managing x")
    assert sock.recv(4096).decode().split("\n") == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=managing x"]
    assert n.watchdog() and sock.recv(4096) == b"WATCHDOG=1"
    assert n.stopping() and sock.recv(4096) == b"STOPPING=1"


def test_a_notifier_holds_no_socket_between_messages(listener):
    """Nothing to close at shutdown: each message opens and closes its own socket."""
    _, path = listener
    open_fds = len(os.listdir("/proc/self/fd"))
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.ready() and n.watchdog()
    assert len(os.listdir("/proc/self/fd")) == open_fds


def test_abstract_socket_names():
    name = f"lbagent-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096).startswith(b"READY=1\n")
    finally:
        sock.close()


def test_without_systemd_it_is_a_no_op_and_a_dead_socket_is_not_fatal(tmp_path):
    assert Notifier({}).ready() is False
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready() is False
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_metrics_render_parse_and_quantiles():
    m = Metrics()
    m.inc("lbagent_decisions_total", action="slot1")
    m.inc("lbagent_decisions_total", action="slot1")
    m.inc("lbagent_decisions_total", action="kernel")
    m.gauge("lbagent_errors_total", lambda: {(("kind", "ESRCH"),): 3.0})
    m.gauge("lbagent_probe_lost_events_total", lambda: 5.0)
    for _ in range(98):
        m.observe_latency(0.0004)  # in the (300 us, 500 us] bucket
    m.observe_latency(0.0025)
    m.observe_latency(0.0025)
    p = parse(m.render())
    assert p["lbagent_decisions_total"] == {(("action", "kernel"),): 1.0, (("action", "slot1"),): 2.0}
    assert p["lbagent_probe_lost_events_total"] == {(): 5.0}
    assert p["lbagent_decision_latency_seconds_count"] == {(): 100.0}
    assert 300e-6 < histogram_quantile(p, 0.5) <= 500e-6
    assert 2e-3 < histogram_quantile(p, 0.99) <= 3e-3
    s = summary(m.render())
    assert s["errors"] == {"ESRCH": 3.0} and s["lost_probe_events"] == 5.0


def test_server_binds_loopback_and_status_reads_it():
    m = Metrics()
    m.inc("lbagent_decisions_total", action="slot0")
    server = MetricsServer(m, "127.0.0.1", 0)
    try:
        host, port = server.address
        assert host == "127.0.0.1"
        text = scrape(f"{host}:{port}")
        assert 'lbagent_decisions_total{action="slot0"} 1.0' in text
        assert "decisions: slot0 1" in render(text)
    finally:
        server.close()


def test_status_without_a_daemon_is_one_line_and_exit_2():
    from lbagent.bench.daemon import free_port

    address = f"127.0.0.1:{free_port()}"
    out = subprocess.run([sys.executable, "-m", "lbagent.cli", "status", "--address", address],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.startswith(f"lbagent: error: no lbagent daemon answering at {address}: ")
    assert len(out.stderr.strip().splitlines()) == 1


def test_server_closes_connections_over_the_cap_at_once_and_idle_ones_after_the_timeout():
    import time

    from lbagent.live.metrics import IDLE_TIMEOUT, MAX_CONNECTIONS

    m = Metrics()
    m.inc("lbagent_decisions_total", action="kernel")
    server = MetricsServer(m, "127.0.0.1", 0)
    address = f"{server.address[0]}:{server.address[1]}"
    try:
        idle = [socket.create_connection(server.address, timeout=IDLE_TIMEOUT + 3) for _ in range(MAX_CONNECTIONS)]
        time.sleep(0.3)  # every one of them holds a handler thread now
        extra = socket.create_connection(server.address, timeout=2)
        start = time.monotonic()
        assert extra.recv(1) == b"" and time.monotonic() - start < 1.0  # closed at once, not queued
        extra.close()
        with pytest.raises(OSError):
            scrape(address, timeout=1.0)
        assert all(c.recv(1) == b"" for c in idle)  # each closed by the server when its silence ran out
        assert time.monotonic() - start <= IDLE_TIMEOUT + 1.5
        assert 'lbagent_decisions_total{action="kernel"} 1.0' in scrape(address)
        for c in idle:
            c.close()
    finally:
        server.close()
