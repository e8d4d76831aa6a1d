"""The daemon's TOML configuration, validated completely before the daemon touches anything.

A typo in a config file must never turn into a daemon that silently manages the wrong tasks, so
every key is known, typed and range-checked here, and the first fault is reported as one line that
names the file, the key and the reason. ``systemd/lbagent.toml`` is the documented default.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lbagent.bounded import NotReadable, read_regular
from lbagent.errors import UserError, brief

MODES = ("affinity", "cpuset")
"""How the actuator places a task: ``sched_setaffinity`` per thread, or an lbagent-owned cpuset."""
PROBES = ("auto", "bpf", "procfs")
"""Which probe the daemon and the probe commands open; ``auto`` is bpf, else procfs."""
PROBE_MODES = ("lite", "exact")
"""What the BPF probe attaches: ``lite`` nothing on the context-switch path (run queues sampled by a
task iterator at each snapshot), ``exact`` also sched_switch/wakeup (exact run-queue integrals, about
5 % on a switch-heavy load). The procfs probe ignores it."""
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_METRICS_PORT = 9469
MAX_CONFIG_BYTES = 1 << 20
"""A config file is a few hundred bytes; anything this big is a mistake, refused before reading."""


class ConfigError(UserError):
    """A config fault, already phrased as one line for the operator."""


@dataclass(frozen=True)
class ScopeConfig:
    """Which tasks the daemon may touch; at least one field must be set (see :func:`_scope`)."""

    cgroups: tuple[str, ...] = ()
    """cgroup v2 paths relative to the unified hierarchy's root, e.g. ``/lbagent-demo``."""
    comms: tuple[str, ...] = ()
    uids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Config:
    scope: ScopeConfig = field(default_factory=ScopeConfig)
    mode: str = "affinity"
    policy: str = "default"
    """A heuristic name (``sed``, ``jsq``...), a shipped policy name, or a path to a policy file."""
    probe: str = "auto"
    probe_mode: str = "lite"
    """The BPF probe's mode (:data:`PROBE_MODES`)."""
    state_file: str = "/run/lbagent/state.json"
    """On a tmpfs by default: the state only matters while the tasks it describes are alive."""
    dry_run: bool = False
    log_level: str = "info"
    snapshot_interval: float = 0.05
    """Seconds between probe snapshots that feed the per-slot features."""
    bpf_object: str | None = None
    """The probe's BPF object (default: the one installed with lbagent)."""
    ring_buffer_bytes: int = 1 << 22
    """The BPF probe's event ring: events that find it full are dropped and counted as lost."""
    share: bool = True
    """Offer the BACKGROUND class (a low-weight group inside each task's workload cgroup) where
    the host has a cpu controller; without it, or with ``false``, policies see it masked."""
    review_m0: float = 0.010
    """CPU seconds of a managed task at its first review; the k-th comes at ``review_m0 * 2**k``."""
    max_reviews: int = 8
    """Reviews per task at most (0: decisions at arrivals only), as the simulator's ``max_reviews``."""
    metrics_address: str = f"127.0.0.1:{DEFAULT_METRICS_PORT}"
    metrics_enabled: bool = True
    source: str = "<defaults>"

    @property
    def metrics_host_port(self) -> tuple[str, int]:
        host, _, port = self.metrics_address.rpartition(":")
        return host.strip("[]"), int(port)

    def with_overrides(self, **changes: Any) -> Config:
        """Command-line flags win over the file (``--dry-run``, ``--policy``)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# Section -> key -> (expected type(s), checker or None). Checkers return an error reason or None.
def _one_of(choices: tuple[str, ...]):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {brief(v)}"


def _positive_range(lo: float, hi: float):
    return lambda v: None if lo <= v <= hi else f"must lie in [{lo}, {hi}], got {v}"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def _absolute_path(v: str) -> str | None:
    return None if v.startswith("/") else f"must be an absolute path, got {brief(v)}"


def _address(v: str) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return f"must be HOST:PORT with a port in 1..65535, got {brief(v)}"
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"host must be an IP address (e.g. 127.0.0.1), got {brief(host)}"
    return None


def _ring_size(v: int) -> str | None:
    if v < 4096 or v > 1 << 30 or v & (v - 1):
        return f"must be a power of two from 4096 to {1 << 30} bytes, got {v}"
    return None


def normal_cgroup(path: str) -> str:
    """``//a/./b/`` -> ``/a/b``: one spelling per cgroup, so ``"//"`` and ``"/."`` are seen to be the root."""
    return "/" + "/".join(part for part in path.split("/") if part not in ("", "."))


def _cgroup_list(v: list) -> str | None:
    for p in v:
        if not isinstance(p, str) or not p.startswith("/") or ".." in p.split("/") or "\0" in p:
            return f"entries must be absolute cgroup paths like '/lbagent-demo', got {brief(p)}"
        if normal_cgroup(p) == "/":
            return (f"{p!r} is the root cgroup, which holds every task on the host: name the workload's "
                    "cgroup (e.g. '/lbagent.slice')")
    return None


def _str_list(v: list) -> str | None:
    for s in v:
        if not isinstance(s, str) or not 0 < len(s) <= 15:
            return f"entries must be command names of 1 to 15 characters, got {brief(s)}"
    return None


def _uid_list(v: list) -> str | None:
    for u in v:
        if isinstance(u, bool) or not isinstance(u, int) or not 0 <= u < 2**32 - 1:
            return f"entries must be uids (integers >= 0), got {brief(u)}"
    return None


_SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "scope": {
        "cgroups": (list, _cgroup_list),
        "comms": (list, _str_list),
        "uids": (list, _uid_list),
    },
    "daemon": {
        "mode": (str, _one_of(MODES)),
        "policy": (str, _non_empty),
        "probe": (str, _one_of(PROBES)),
        "probe_mode": (str, _one_of(PROBE_MODES)),
        "state_file": (str, _absolute_path),
        "dry_run": (bool, None),
        "log_level": (str, _one_of(LOG_LEVELS)),
        "snapshot_interval": ((int, float), _positive_range(0.005, 5.0)),
        "bpf_object": (str, _absolute_path),
        "ring_buffer_bytes": (int, _ring_size),
        "share": (bool, None),
        "review_m0": ((int, float), _positive_range(0.001, 10.0)),
        "max_reviews": (int, _positive_range(0, 16)),
    },
    "metrics": {
        "enabled": (bool, None),
        "address": (str, _address),
    },
}
_FLAT_NAMES = {("metrics", "address"): "metrics_address", ("metrics", "enabled"): "metrics_enabled"}


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate TOML text into a :class:`Config`; raises :class:`ConfigError` naming the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses per nested array or inline table
        raise ConfigError(f"{source}: not a config: values nested too deeply") from None
    values: dict[str, Any] = {}
    for section, body in data.items():
        if section not in _SCHEMA:
            raise ConfigError(f"{source}: unknown section [{_label(section)}] (known: {', '.join(_SCHEMA)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: {section} must be a table [{section}], got {type(body).__name__}")
        for key, value in body.items():
            values[(_FLAT_NAMES.get((section, key)) or key) if section != "scope" else f"scope.{key}"] = (
                _checked(source, section, key, value)
            )
    scope = ScopeConfig(
        cgroups=tuple(dict.fromkeys(normal_cgroup(p) for p in values.pop("scope.cgroups", ()))),
        comms=tuple(values.pop("scope.comms", ())),
        uids=tuple(values.pop("scope.uids", ())),
    )
    if not (scope.cgroups or scope.comms or scope.uids):
        raise ConfigError(
            f"{source}: scope: set at least one of cgroups, comms, uids "
            "(an empty scope would manage every task on the host)"
        )
    for key in ("snapshot_interval", "review_m0"):
        if key in values:
            values[key] = float(values[key])
    return Config(scope=scope, source=source, **values)


def _label(name: str) -> str:
    """A section or key name as the file spells it, unless it is too odd for a one-line message."""
    return name if len(name) <= 40 and name.isprintable() else brief(name)


def _checked(source: str, section: str, key: str, value: Any) -> Any:
    known = _SCHEMA[section]
    if key not in known:
        raise ConfigError(f"{source}: {section}.{_label(key)}: unknown key (known: {', '.join(known)})")
    types, check = known[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise ConfigError(f"{source}: {section}.{key}: must be {want}, got {type(value).__name__} {brief(value)}")
    reason = check(value) if check else None
    if reason:
        raise ConfigError(f"{source}: {section}.{key}: {reason}")
    return value


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; only a regular file is read (a link to one is fine: config
    management links files into /etc), so a FIFO or ``/dev/zero`` is refused, not waited on."""
    p = Path(path)
    try:
        text = read_regular(p, MAX_CONFIG_BYTES).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except NotReadable as e:
        raise ConfigError(f"{p}: refused as a config file: it {e}") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror or e}") from None
    return parse_config(text, source=str(p))
