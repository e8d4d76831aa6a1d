"""The systemd unit: verified by systemd itself, scored for exposure, installed under a temp root."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lbagent.bench.demo import UNIT_RT_PRIORITY, UNIT_RTTIME_US
from lbagent.live import service

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "lbagent.service"
EXPOSURE_LIMIT = 3.6  # irqbalance's hardened unit


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lbagent.cli", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def installed(tmp_path) -> Path:
    out = _cli("service", "install", "--root", str(tmp_path))
    assert out.returncode == 0, out.stderr
    return tmp_path


@pytest.mark.kernel
def test_installed_unit_passes_systemd_analyze_verify_without_a_warning(installed):
    unit = installed / service.UNIT_PATH
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "" and out.stdout.strip() == ""


@pytest.mark.kernel
def test_exposure_is_at_most_irqbalances(installed):
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(installed / service.UNIT_PATH)],
                         capture_output=True, text=True, timeout=60)
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout).group(1))
    assert score <= EXPOSURE_LIMIT, out.stdout


def test_every_capability_is_justified_and_the_essentials_are_set():
    text = UNIT.read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    caps = settings["CapabilityBoundingSet"].split()
    assert caps == ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_NICE"]
    for cap in caps:
        assert re.search(rf"^#\s+{cap}\s+\S", text, re.M), f"{cap} has no comment line justifying it"
    assert settings["Type"] == "notify" and settings["Restart"] == "on-failure"
    assert settings["WatchdogSec"] and settings["RuntimeDirectoryPreserve"] == "restart"
    assert settings["ProtectControlGroups"] == "yes" and "ReadWritePaths=/sys/fs/cgroup" in text
    # The demo and the bench run the daemon with the unit's scheduling.
    assert settings["CPUSchedulingPolicy"] == "fifo" and int(settings["CPUSchedulingPriority"]) == UNIT_RT_PRIORITY
    assert settings["LimitRTTIME"] == ":".join(f"{u // 1_000_000}s" for u in UNIT_RTTIME_US)
    # A bound of its own on descriptors (test_faults checks it against a running daemon's count).
    assert 128 <= int(settings["LimitNOFILE"]) <= 4096


def test_install_keeps_an_edited_config_and_uninstall_removes(installed):
    unit = installed / service.UNIT_PATH
    config = installed / service.CONFIG_PATH
    assert f"ExecStart={service.lbagent_executable()} run --config /etc/lbagent/lbagent.toml" in unit.read_text()
    assert config.read_text() == (UNIT.parent / "lbagent.toml").read_text()
    config.write_text(config.read_text() + "# edited\n")
    again = _cli("service", "install", "--root", str(installed))
    assert "kept existing" in again.stdout and config.read_text().endswith("# edited\n")
    gone = _cli("service", "uninstall", "--root", str(installed), "--purge")
    assert gone.returncode == 0 and not unit.exists() and not config.exists()
