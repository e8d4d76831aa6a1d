"""``lbagent service install|uninstall``: put the unit and the default config where systemd looks.

The unit in ``systemd/`` names a generic ``/usr/local/bin/lbagent``; the installed copy names the
``lbagent`` that runs the installer, so a venv install works without a symlink. An existing config is
an operator's edit and is kept unless ``--force``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from lbagent.errors import UserError

SOURCE = Path(__file__).resolve().parents[2] / "systemd"
UNIT_PATH = Path("etc/systemd/system/lbagent.service")
CONFIG_PATH = Path("etc/lbagent/lbagent.toml")
GENERIC_EXEC = "/usr/local/bin/lbagent"


def lbagent_executable() -> str:
    beside = Path(sys.executable).parent / "lbagent"
    found = str(beside) if beside.exists() else shutil.which("lbagent")
    if not found:
        raise UserError("cannot find the lbagent executable to put in ExecStart (is lbagent installed?)")
    return str(Path(found).resolve()) if not beside.exists() else str(beside)


def _source(name: str) -> Path:
    path = SOURCE / name
    if not path.exists():
        raise UserError(f"{path} not found: install the service from a source checkout (make install-service)")
    return path


def install(root: str | Path = "/", force: bool = False) -> list[str]:
    root = Path(root)
    unit = _source("lbagent.service").read_text().replace(GENERIC_EXEC, lbagent_executable())
    done = []
    unit_dest = root / UNIT_PATH
    unit_dest.parent.mkdir(parents=True, exist_ok=True)
    unit_dest.write_text(unit)
    unit_dest.chmod(0o644)
    done.append(f"installed {unit_dest}")
    config_dest = root / CONFIG_PATH
    if config_dest.exists() and not force:
        done.append(f"kept existing {config_dest} (--force replaces it)")
    else:
        config_dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_source("lbagent.toml"), config_dest)
        config_dest.chmod(0o644)
        done.append(f"installed {config_dest}")
    if root == Path("/"):
        done.append("next: systemctl daemon-reload && systemctl enable --now lbagent")
    return done


def uninstall(root: str | Path = "/", purge: bool = False) -> list[str]:
    root = Path(root)
    targets = [root / UNIT_PATH] + ([root / CONFIG_PATH] if purge else [])
    done = []
    for t in targets:
        if t.exists():
            t.unlink()
            done.append(f"removed {t}")
        else:
            done.append(f"not present: {t}")
    if purge and (root / CONFIG_PATH).parent.is_dir() and not any((root / CONFIG_PATH).parent.iterdir()):
        (root / CONFIG_PATH).parent.rmdir()
    return done
