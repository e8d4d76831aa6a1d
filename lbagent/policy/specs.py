"""Policy specs as users write them (``sed``, ``las:30ms``, ``default``, a file): names and parsing.

No numpy here: the command line's ``--help`` quotes :data:`SPEC_HELP` without loading the stack.
"""

from __future__ import annotations

import math

from lbagent.errors import UserError

HEURISTICS: tuple[str, ...] = ("random", "round_robin", "jsq", "lwl", "sed", "po2", "kernel")
"""The placement heuristics: every one is a baseline of every evaluation."""
SHARE_HEURISTICS: dict[str, float] = {"las": 0.030, "sized": 0.030, "oracle": 0.100}
"""The share heuristics and their default threshold in seconds of CPU (``las:30ms`` is measured on
these hosts: 0.89-0.97x the kernel; ``oracle:100ms`` is host-facts' size-by-oracle rule)."""
SPEC_HELP = (
    "A heuristic (random, round_robin, jsq, lwl, sed, po2, kernel; las:T, sized:T, oracle:T with a "
    "threshold T such as 30ms, 0.1s or 2000us, oracle in the simulator only), a shipped policy name "
    "(default, park) or a policy file."
)
BASELINES: tuple[str, ...] = (*HEURISTICS, "las", "sized")
"""The rules every evaluation compares against: the placement heuristics and the deployable share
rules at their default thresholds (``oracle`` reads true sizes, so it is a ceiling, not a baseline)."""
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


class BadPolicySpec(UserError, ValueError):
    """A heuristic name with a parameter that cannot be read."""


def parse_threshold(text: str, spec: str) -> float:
    """Seconds from ``30ms`` / ``0.1s`` / ``2000us`` (a bare number is seconds)."""
    number, scale = text, 1.0
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], _UNITS[suffix]
            break
    try:
        value = float(number) * scale
    except ValueError:
        raise BadPolicySpec(f"policy {spec!r}: threshold {text!r} is not a time such as 30ms, 0.1s or 2000us") from None
    if not (math.isfinite(value) and 0 < value <= 3600):
        raise BadPolicySpec(f"policy {spec!r}: threshold {text!r} must lie in (0, 3600] seconds")
    return value


def is_heuristic(spec: str) -> bool:
    """Whether a policy spec names a heuristic (``las:30ms`` included) rather than a file."""
    return spec in HEURISTICS or spec.split(":", 1)[0] in SHARE_HEURISTICS
