"""CPU time of every exiting task, from the kernel's taskstats multicast (no BPF needed).

Why: the proc connector says *that* a process exited, not how much CPU it used, and by the time we
read ``/proc/PID/stat`` its parent has usually reaped it. Taskstats sends, from inside ``do_exit``,
a record per exiting task to listeners registered for the CPUs it exits on; its
``cpu_run_virtual_total`` is the scheduler's own ``sum_exec_runtime`` in ns.

pyroute2 resolves the generic-netlink family and encodes/decodes the messages; the socket is ours,
non-blocking, so ``select`` sees every queued record (see :mod:`lbagent.live.probe.procfs`).
"""

from __future__ import annotations

import errno
import os
import select
import struct
from collections import OrderedDict

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.taskstats import TASKSTATS_CMD_GET, TaskStats, taskstatsmsg, tcmd

from lbagent.live.probe.netlink import MulticastListener

NETLINK_GENERIC = 16
MAX_PENDING = 65536
"""Exit records kept until the matching connector event asks for them; the oldest go first."""


def _family_id() -> int:
    lookup = TaskStats()
    try:
        lookup.bind()
        return lookup.prid
    finally:
        lookup.close()


class TaskExitStats(MulticastListener):
    """Listens for exit records on ``cpus``; :meth:`runtime_ns` answers by pid. Root only."""

    def __init__(self, cpus: list[int]):
        self.family = _family_id()
        self.mask = ",".join(str(c) for c in cpus)
        super().__init__(NETLINK_GENERIC, 0)
        try:
            self._command("TASKSTATS_CMD_ATTR_REGISTER_CPUMASK", wait_ack=True)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self._runtime: OrderedDict[int, int] = OrderedDict()

    def _command(self, attr: str, wait_ack: bool) -> None:
        msg = tcmd()
        msg["cmd"], msg["version"] = TASKSTATS_CMD_GET, 1
        msg["attrs"] = [[attr, self.mask]]
        msg["header"]["type"] = self.family
        msg["header"]["flags"] = NLM_F_REQUEST | (NLM_F_ACK if wait_ack else 0)
        msg["header"]["pid"] = self.sock.getsockname()[0]
        msg.encode()
        self.sock.send(msg.data)
        if not wait_ack:
            return
        if not select.select([self.sock], [], [], 1.0)[0]:
            raise OSError(errno.ETIMEDOUT, "taskstats: no answer to the listener registration")
        data = self.sock.recv(1 << 16)
        if struct.unpack_from("H", data, 4)[0] == NLMSG_ERROR and struct.unpack_from("i", data, 16)[0]:
            code = -struct.unpack_from("i", data, 16)[0]
            raise OSError(code, f"taskstats listener registration: {os.strerror(code)}")

    def drain(self) -> None:
        """Take in every record queued now."""
        for data in self.datagrams():
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("IH", data, offset)
                if kind == self.family:
                    self._take(data[offset : offset + length])
                offset += max(length, 16)

    def _take(self, raw: bytes) -> None:
        msg = taskstatsmsg(raw)
        msg.decode()
        for name, value in msg["attrs"]:
            if name == "TASKSTATS_TYPE_AGGR_PID":
                stats = value.get_attr("TASKSTATS_TYPE_STATS")
                self._runtime[value.get_attr("TASKSTATS_TYPE_PID")] = stats["cpu_run_virtual_total"]
        while len(self._runtime) > MAX_PENDING:
            self._runtime.popitem(last=False)

    def runtime_ns(self, pid: int) -> int | None:
        """The task's CPU time at exit (forgotten once asked), or None when no record came."""
        if pid not in self._runtime:
            self.drain()
        return self._runtime.pop(pid, None)

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        try:
            self._command("TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK", wait_ack=False)
        finally:
            self.sock.close()
