"""Security properties as tests: nothing on a load path can execute code (no pickle), the files the
daemon and the recorder write are private, and metrics stay on loopback unless told otherwise."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from lbagent.eval.trace import write_trace
from lbagent.live.config import Config, load_config
from lbagent.live.state import Placement, StateFile
from test_trace import small_trace

ROOT = Path(__file__).resolve().parent.parent
UNSAFE = {
    "pickle": re.compile(r"\b(c?pickle|dill|joblib|marshal\.loads?|shelve)\b"),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
    "np.load with allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
}


def sources() -> list[Path]:
    return sorted(p for d in ("lbagent", "sim") for p in (ROOT / d).rglob("*.py"))


def test_no_pickle_on_any_load_path():
    found = set()
    for path in sources():
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())  # comments may say "pickle"
        code = re.sub(r'"""[\s\S]*?"""', "", code)  # so may docstrings
        for kind, pattern in UNSAFE.items():
            if pattern.search(code):
                found.add((str(path.relative_to(ROOT)), kind))
    assert len(sources()) > 30  # the scan saw the code base
    assert found == set()  # training checkpoints too: data only (lbagent.agent.checkpoint)


def test_state_and_trace_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        state = StateFile(tmp_path / "run" / "state.json")
        state.placements[2] = Placement(2, 5, "x", "affinity", (1,), {2: (0, 1)})
        state.save()
        write_trace(tmp_path / "t.jsonl.gz", small_trace())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run" / "state.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "t.jsonl.gz").stat().st_mode) == 0o600


def test_metrics_bind_loopback_by_default():
    assert Config().metrics_host_port[0] == "127.0.0.1"
    shipped = load_config(ROOT / "systemd" / "lbagent.toml")
    assert shipped.metrics_host_port[0] == "127.0.0.1"
