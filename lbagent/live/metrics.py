"""Prometheus text metrics of the daemon, served on loopback, and a reader for ``lbagent status``.

A handful of counters, gauges and one histogram do not justify a client library: this module
renders the text exposition format itself and serves it from a daemon thread, so a slow scraper
never delays a placement. The server holds at most :data:`MAX_CONNECTIONS` connections, each for at
most :data:`IDLE_TIMEOUT` seconds of silence: idle clients cannot take the file descriptors the
daemon needs to place and restore tasks (one thread and one descriptor each, unbounded, did).
"""

from __future__ import annotations

import errno
import math
import socket
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_CONNECTIONS = 8
"""Connections served at once; one more is closed as soon as it is accepted. A scrape takes
milliseconds, so eight is room for several scrapers and ``lbagent status`` together."""
IDLE_TIMEOUT = 5.0
"""Seconds a connection may stay silent (no request line, no header) before it is closed."""
ACCEPT_BACKOFF = 0.1
"""Seconds the server waits after an accept fails for want of descriptors, instead of spinning."""

LATENCY_BUCKETS = (
    20e-6, 50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6,
    1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3, 1.0,
)  # fmt: skip
"""Seconds; dense around the 2 ms target so a p99 read from the buckets is meaningful."""


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        i = 0
        while i < len(self.buckets) and value > self.buckets[i]:
            i += 1
        self.counts[i] += 1
        self.total += value
        self.n += 1


class Metrics:
    """Everything the daemon reports. Writers are the daemon's main thread; the server only reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self.gauges: dict[str, Callable[[], dict[tuple[tuple[str, str], ...], float]]] = {}
        self.latency = Histogram()
        self.help: dict[str, str] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self.counters[name]
            series[key] = series.get(key, 0.0) + amount

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self.latency.observe(seconds)

    def gauge(self, name: str, read: Callable[[], dict[tuple[tuple[str, str], ...], float] | float]) -> None:
        """A value read at scrape time (counts kept elsewhere, e.g. by the actuator or the probe)."""
        self.gauges[name] = lambda: read_value if isinstance(read_value := read(), dict) else {(): read_value}

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            counters = {k: dict(v) for k, v in self.counters.items()}
            h = Histogram(self.latency.buckets, list(self.latency.counts), self.latency.total, self.latency.n)
        for name, series in sorted(counters.items()):
            lines += _series(name, "counter", self.help.get(name, ""), series)
        for name, read in sorted(self.gauges.items()):
            lines += _series(name, "gauge", self.help.get(name, ""), read())
        name = "lbagent_decision_latency_seconds"
        lines.append(f"# HELP {name} {self.help.get(name, 'arrival (kernel timestamp) to completed placement')}")
        lines.append(f"# TYPE {name} histogram")
        running = 0
        for bound, count in zip(h.buckets + (math.inf,), h.counts, strict=True):
            running += count
            le = "+Inf" if bound == math.inf else repr(bound)
            lines.append(f'{name}_bucket{{le="{le}"}} {running}')
        lines.append(f"{name}_sum {h.total!r}")
        lines.append(f"{name}_count {h.n}")
        return "\n".join(lines) + "\n"


def _series(name: str, kind: str, help_text: str, series: dict) -> list[str]:
    out = [f"# HELP {name} {help_text or name}", f"# TYPE {name} {kind}"]
    for key, value in sorted(series.items()):
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
        out.append(f"{name}{{{labels}}} {value!r}" if labels else f"{name} {value!r}")
    return out


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """``GET /metrics`` on a thread; binds where it is told (the config defaults to 127.0.0.1)."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        render = metrics.render

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass  # scrapes are not news

        Handler.timeout = IDLE_TIMEOUT  # set on each connection's socket by StreamRequestHandler
        self.httpd = _BoundedServer((host, port), Handler)
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _BoundedServer(ThreadingHTTPServer):
    """A threading HTTP server with at most :data:`MAX_CONNECTIONS` handler threads."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, tuple]:
        try:
            return super().get_request()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                time.sleep(ACCEPT_BACKOFF)  # the listening socket stays readable: do not spin on it
            raise  # socketserver drops a failed accept and polls again

    def verify_request(self, request, client_address) -> bool:
        """Over the cap: refused, and socketserver closes the connection at once."""
        return self.slots.acquire(blocking=False)

    def process_request(self, request, client_address) -> None:
        try:
            super().process_request(request, client_address)  # starts the handler thread
        except BaseException:
            self.slots.release()  # no thread, so nobody else gives the slot back
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        """A client that hung up mid-answer: nothing to report (socketserver would print a traceback)."""


# ------------------------------------------------------------------------------------ reading


def scrape(address: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as r:
        return r.read().decode()


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Prometheus text -> {metric: {labels: value}}; enough for our own exposition."""
    out: dict[str, dict] = defaultdict(dict)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = tuple(
            (k, v.strip('"')) for k, _, v in (p.partition("=") for p in rest.rstrip("}").split(",") if p)
        )
        out[name][labels] = float(value)
    return dict(out)


def summed_by(parsed: dict, name: str, label: str) -> dict[str, float]:
    """A parsed metric summed per value of one of its labels (decisions carry kind, action and class)."""
    out: dict[str, float] = {}
    for labels, v in parsed.get(name, {}).items():
        key = dict(labels).get(label, "")
        out[key] = out.get(key, 0.0) + v
    return out


def histogram_quantile(parsed: dict, q: float, name: str = "lbagent_decision_latency_seconds") -> float:
    """A quantile from cumulative buckets, interpolated linearly inside its bucket (as Prometheus does)."""
    buckets = sorted(
        (math.inf if dict(k)["le"] == "+Inf" else float(dict(k)["le"]), v)
        for k, v in parsed.get(f"{name}_bucket", {}).items()
    )
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    rank = q * buckets[-1][1]
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == math.inf:
                return lo_bound
            return lo_bound + (bound - lo_bound) * (rank - lo_count) / max(count - lo_count, 1e-12)
        lo_bound, lo_count = bound, count
    return lo_bound
