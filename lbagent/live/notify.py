"""The systemd notify protocol (``sd_notify``): one datagram per message to ``$NOTIFY_SOCKET``.

Small enough to own rather than depend on libsystemd: a unix datagram socket, a path (or an abstract
name starting with ``@``), and ``KEY=VALUE`` lines. Without ``$NOTIFY_SOCKET`` (not run by systemd)
every call is a no-op, so the daemon runs the same in a terminal.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(env)

    def send(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines; a missing or dead socket is reported as False, never raised.

        A socket per message, as libsystemd does: messages are seconds apart, and nothing is left
        open for the daemon to close."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1")


def _watchdog_interval(env) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC``, if the watchdog is meant for us."""
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6
