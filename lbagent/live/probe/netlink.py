"""A non-blocking netlink multicast listener: what the proc connector and taskstats share."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator


class MulticastListener:
    """Owns a netlink socket; :meth:`datagrams` empties its queue without blocking, counting each
    overrun (the kernel dropped messages because the buffer was full) instead of failing."""

    def __init__(self, protocol: int, groups: int, rcvbuf: int = 1 << 23):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, groups))
        except OSError:
            self.sock.close()
            raise
        self.overruns = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def datagrams(self) -> Iterator[bytes]:
        while True:
            try:
                yield self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
