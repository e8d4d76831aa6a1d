"""cpuset mode on cgroup v2, where the host can give the cpuset controller to v2.

Real boxes usually run v2 with cpuset; these CI hosts keep cpuset on a v1 mount (the v1 path is
tested, as a kernel test, in test_actuate.py). Here the fixture unmounts v1 so the kernel can hand
the controller to v2, and puts it back afterwards. Where the kernel keeps the v1 hierarchy alive
the test is skipped with that reason (shown by ``-ra``): this is a host capability, not a failure
of lbagent, so it is deliberately not marked ``kernel``.
"""

from __future__ import annotations

import os

import pytest

from lbagent import hostinfo
from lbagent.live.actuate import Actuator
from livehost import CpusetV2Unavailable, cpuset_controller_on_v2
from test_actuate import _cpuset_place_and_restore, scoped  # noqa: F401  (scoped is a fixture)


def test_cpuset_mode_v2(scoped):  # noqa: F811
    act, proc, _ = scoped
    try:
        with cpuset_controller_on_v2():
            cs = Actuator("cpuset", act.scope, act.state, cgroup_name=f"lbagent-t-{os.getpid()}")
            assert cs.cpusets.version == 2 and cs.cpusets.root == hostinfo.unified_root()
            _cpuset_place_and_restore(cs, proc)
    except CpusetV2Unavailable as exc:
        pytest.skip(str(exc))
