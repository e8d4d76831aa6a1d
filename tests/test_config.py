"""Config validation: every fault is one line naming file, key and reason, before anything is touched."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from lbagent.live.config import ConfigError, load_config, parse_config

DEFAULT = Path(__file__).resolve().parent.parent / "systemd" / "lbagent.toml"
SCOPE = '[scope]\ncgroups = ["/x"]\n'


def test_documented_default_loads():
    c = load_config(DEFAULT)
    assert c.scope.cgroups == ("/lbagent.slice",) and c.mode == "affinity" and c.probe == "auto"
    assert c.probe_mode == "lite"
    assert c.metrics_host_port == ("127.0.0.1", 9469)
    assert c.state_file == "/run/lbagent/state.json" and c.dry_run is False


def test_minimal_config_and_overrides():
    c = parse_config('[scope]\ncomms = ["burn"]\nuids = [1000]\n[daemon]\nsnapshot_interval = 1\n')
    assert c.probe_mode == "lite"
    assert parse_config(SCOPE + "[daemon]\nprobe_mode = 'exact'\n").probe_mode == "exact"
    assert c.scope.comms == ("burn",) and c.scope.uids == (1000,) and c.snapshot_interval == 1.0
    assert c.with_overrides(dry_run=True, policy=None).dry_run is True
    assert c.with_overrides(policy="sed").policy == "sed"


@pytest.mark.parametrize(
    "text, message",
    [
        (SCOPE + "[daemon]\nmdoe = 'cpuset'\n", "daemon.mdoe: unknown key"),
        (SCOPE + "[deamon]\n", r"unknown section \[deamon\]"),
        (SCOPE + "[daemon]\nmode = 'pin'\n", "daemon.mode: must be one of affinity, cpuset, got 'pin'"),
        (SCOPE + "[daemon]\ndry_run = 'yes'\n", "daemon.dry_run: must be bool, got str"),
        (SCOPE + "[daemon]\nsnapshot_interval = true\n", "daemon.snapshot_interval: must be int or float"),
        (SCOPE + "[daemon]\nsnapshot_interval = 0\n", r"daemon.snapshot_interval: must lie in \[0.005, 5.0\]"),
        (SCOPE + "[daemon]\nstate_file = 'rel/state.json'\n", "daemon.state_file: must be an absolute path"),
        (SCOPE + "[daemon]\nprobe = 'bcc'\n", "daemon.probe: must be one of auto, bpf, procfs"),
        (SCOPE + "[daemon]\nprobe_mode = 'full'\n", "daemon.probe_mode: must be one of lite, exact, got 'full'"),
        (SCOPE + "[metrics]\naddress = 'localhost:80'\n", "metrics.address: host must be an IP address"),
        (SCOPE + "[metrics]\naddress = '127.0.0.1:99999'\n", "metrics.address: must be HOST:PORT"),
        ('[scope]\ncgroups = ["relative"]\n', "scope.cgroups: entries must be absolute cgroup paths"),
        ('[scope]\ncomms = ["a-command-name-longer-than-15"]\n', "scope.comms: entries must be command names"),
        ("[scope]\nuids = [-1]\n", "scope.uids: entries must be uids"),
        ("[scope]\ncgroups = '/x'\n", "scope.cgroups: must be list, got str"),
        ("[scope]\n", "scope: set at least one of cgroups, comms, uids"),
        ("scope = 3\n", "scope must be a table"),
        ("[scope\n", "not valid TOML"),
    ],
)
def test_errors_name_key_and_reason(text, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_config(text, source="f.toml")
    assert str(e.value).startswith("f.toml: ") and "\n" not in str(e.value)


def test_unreadable_and_huge_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="refused as a config file: it is 2097152 bytes, over the 1048576 byte limit"):
        load_config(big)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)
    with pytest.raises(ConfigError, match="refused as a config file: it is a directory, not a regular file"):
        load_config(tmp_path)


def test_cli_exits_2_with_one_line_and_touches_nothing(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(SCOPE + f"[daemon]\nmode = 'pin'\nstate_file = '{tmp_path}/state.json'\n")
    out = subprocess.run([sys.executable, "-m", "lbagent.cli", "run", "--config", str(bad)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip() == f"lbagent: error: {bad}: daemon.mode: must be one of affinity, cpuset, got 'pin'"
    assert list(tmp_path.iterdir()) == [bad]


def test_every_probe_option_and_the_actuator_offer_the_configs_choices(tmp_path):
    """One vocabulary: what a config may say is what every ``--probe`` accepts and what the
    actuator runs, so a choice added in one place cannot be refused (or missed) by another."""
    import click

    from lbagent.cli import main
    from lbagent.live.actuate import Actuator, ActuatorError
    from lbagent.live.config import MODES, PROBES, ScopeConfig
    from lbagent.live.state import StateFile

    def commands(group: click.Group):
        for cmd in group.commands.values():
            yield from commands(cmd) if isinstance(cmd, click.Group) else [cmd]

    probe_options = [p for c in commands(main) for p in c.params if p.name in ("probe", "kind") and "--probe" in p.opts]
    assert len(probe_options) >= 6
    assert all(tuple(p.type.choices) == PROBES for p in probe_options)
    with pytest.raises(ActuatorError, match=f"known: {', '.join(MODES)}"):
        Actuator("pin", ScopeConfig(comms=("x",)), StateFile(tmp_path / "state.json"))


@pytest.mark.parametrize("root", ["/", "//", "/.", "/./", "///.//"])
def test_the_root_cgroup_in_any_spelling_is_refused_as_a_scope(root):
    with pytest.raises(ConfigError, match=f"scope.cgroups: '{re.escape(root)}' is the root cgroup, which holds every task"):
        parse_config(f'[scope]\ncgroups = ["/work", "{root}"]\n', source="f.toml")


def test_cgroup_paths_have_one_spelling():
    c = parse_config('[scope]\ncgroups = ["//lbagent.slice/", "/lbagent.slice", "/a/./b//c"]\n')
    assert c.scope.cgroups == ("/lbagent.slice", "/a/b/c")


def deep(kind: str) -> str:
    """TOML whose values nest far deeper than any config (the parser recurses once per level)."""
    n = 100_000
    return SCOPE + ("[daemon]\npolicy = " + "[" * n + "]" * n if kind == "array" else "x = " + "{a = " * n + "1" + "}" * n) + "\n"


STRANGE_CONFIG = {
    "fifo": (lambda p: os.mkfifo(p), "refused as a config file: it is a FIFO, not a regular file"),
    "/dev/zero": (lambda p: p.symlink_to("/dev/zero"), "refused as a config file: it is a character device, not a regular file"),
    "nested arrays": (lambda p: p.write_text(deep("array")), "not a config: values nested too deeply"),
    "nested inline tables": (lambda p: p.write_text(deep("table")), "not a config: values nested too deeply"),
}


def capped_memory() -> None:
    """A reader gone wrong on /dev/zero grows by hundreds of MB/s: stop it at 3 GiB on a shared host."""
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


@pytest.mark.parametrize("case", STRANGE_CONFIG)
def test_strange_config_files_exit_2_at_once_with_one_line(tmp_path, case):
    make, reason = STRANGE_CONFIG[case]
    path = tmp_path / "lbagent.toml"
    make(path)
    out = subprocess.run([sys.executable, "-m", "lbagent.cli", "run", "--config", str(path)],
                         capture_output=True, text=True, timeout=30, preexec_fn=capped_memory)
    assert out.returncode == 2 and out.stderr == f"lbagent: error: {path}: {reason}\n"
