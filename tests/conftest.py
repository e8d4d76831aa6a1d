"""Shared test policy: kernel tests must run where CI demands them.

Tests marked ``kernel`` talk to the real kernel (BPF, affinity, cgroups). Off a capable host they
skip with a reason; with ``LBAGENT_REQUIRE_KERNEL_TESTS=1`` (set by ``.ci/run``) such a skip is
turned into a failure, so a broken probe can never pass CI by skipping.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_KERNEL = os.environ.get("LBAGENT_REQUIRE_KERNEL_TESTS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_KERNEL and report.skipped and item.get_closest_marker("kernel") is not None:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"kernel test skipped under LBAGENT_REQUIRE_KERNEL_TESTS=1: {reason}"
