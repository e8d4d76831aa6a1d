"""Policy files: one safetensors file holding the actor's weights, with JSON metadata in its header.

safetensors cannot execute code on load (unlike a pickle), and one file is easy to ship and copy.
The metadata (key ``lbagent``) records what a reader must check before trusting the weights (format,
contract version, observation and action sizes) and what a human needs to reproduce them (algorithm,
preset, seed, the exact command, the evaluation). No torch here: the daemon loads policies with numpy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lbagent.errors import UserError
from lbagent.policy import Policy
from lbagent.policy.numpy_actor import arch_fault
from lbagent.spaces import CONTRACT_VERSION, MAX_SLOTS, N_ACTIONS, OBS_DIM

FORMAT = "lbagent-policy"
FORMAT_VERSION = 1
POLICIES_DIR = Path(__file__).resolve().parent.parent / "policies"
"""Where shipped policies live: ``load_policy("default")`` reads ``POLICIES_DIR / "default.safetensors"``."""
SUFFIX = ".safetensors"
ALGORITHMS = ("dreamer", "a2c")
MAX_POLICY_BYTES = 256 << 20
"""A policy is a few MB of float32 weights; a bigger file is a wrong path, refused before it is read."""


class PolicyFileError(UserError):
    """A policy file that is missing, unreadable, truncated, or made for another contract."""


def resolve_path(name_or_path: str | os.PathLike) -> Path:
    """A shipped name (``default``, ``park``) or a path to a policy file."""
    text = str(name_or_path)
    if os.sep not in text and not text.endswith(SUFFIX):
        shipped = POLICIES_DIR / f"{text}{SUFFIX}"
        if shipped.exists():
            return shipped
        names = sorted(p.stem for p in POLICIES_DIR.glob(f"*{SUFFIX}")) if POLICIES_DIR.is_dir() else []
        raise PolicyFileError(f"no shipped policy named {text!r} (shipped: {', '.join(names) or 'none'})")
    path = Path(text)
    if not path.is_file():
        raise PolicyFileError(f"{path}: policy file not found")
    return path


def save_policy(path: str | os.PathLike, weights: dict[str, np.ndarray], metadata: dict) -> Path:
    """Write weights and metadata atomically (a crash never leaves a half-written policy)."""
    from safetensors.numpy import save_file

    if metadata.get("algorithm") not in ALGORITHMS:
        raise ValueError(f"metadata['algorithm'] must be one of {ALGORITHMS}, got {metadata.get('algorithm')!r}")
    if "arch" not in metadata:
        raise ValueError("metadata needs 'arch' (the sizes the numpy actor rebuilds the network from)")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "contract_version": CONTRACT_VERSION,
        "obs_dim": OBS_DIM,
        "n_actions": N_ACTIONS,
        "max_slots": MAX_SLOTS,
        **metadata,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    save_file(arrays, str(tmp), metadata={"lbagent": json.dumps(meta, sort_keys=True)})
    os.replace(tmp, path)
    return path


def read_policy_file(name_or_path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Weights and validated metadata, or a :class:`PolicyFileError` naming the file and the fault."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = resolve_path(name_or_path)
    size = path.stat().st_size
    if size > MAX_POLICY_BYTES:
        raise PolicyFileError(f"{path}: {size} bytes exceeds the {MAX_POLICY_BYTES}-byte limit for a policy file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PolicyFileError(f"{path}: not a readable safetensors policy file (truncated or corrupt?): {exc}") from None
    if "lbagent" not in header:
        raise PolicyFileError(f"{path}: safetensors file without lbagent metadata (not a policy file)")
    try:
        meta = json.loads(header["lbagent"])
    except json.JSONDecodeError as exc:
        raise PolicyFileError(f"{path}: policy metadata is not valid JSON: {exc}") from None
    except RecursionError:
        raise PolicyFileError(f"{path}: policy metadata is nested too deeply to be a policy's") from None
    _check_metadata(path, meta)  # the sizes in it are checked before any tensor is read
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PolicyFileError(f"{path}: not a readable safetensors policy file (truncated or corrupt?): {exc}") from None
    _check_finite(path, weights)
    return weights, meta


def _check_metadata(path: Path, meta: dict) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PolicyFileError(f"{path}: metadata format is {meta.get('format') if isinstance(meta, dict) else meta!r}, expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise PolicyFileError(f"{path}: policy file format version {meta.get('format_version')}, this lbagent reads {FORMAT_VERSION}")
    if meta.get("contract_version") != CONTRACT_VERSION:
        raise PolicyFileError(
            f"{path}: policy built for contract version {meta.get('contract_version')}, this lbagent speaks "
            f"version {CONTRACT_VERSION}; retrain it with `lbagent sim-train`"
        )
    for key, want in (("obs_dim", OBS_DIM), ("n_actions", N_ACTIONS)):
        if meta.get(key) != want:
            raise PolicyFileError(f"{path}: {key} is {meta.get(key)}, the contract has {want}")
    if meta.get("algorithm") not in ALGORITHMS:
        raise PolicyFileError(f"{path}: unknown algorithm {meta.get('algorithm')!r} (known: {', '.join(ALGORITHMS)})")
    if not isinstance(meta.get("arch"), dict):
        raise PolicyFileError(f"{path}: metadata lacks the 'arch' table")
    fault = arch_fault(meta["algorithm"], meta["arch"])
    if fault:
        raise PolicyFileError(f"{path}: {fault}")


def _check_finite(path: Path, weights: dict[str, np.ndarray]) -> None:
    """A NaN or Inf weight makes every logit NaN, whose argmax is slot 0: every task on one CPU."""
    for name in sorted(weights):
        bad = int(weights[name].size - np.count_nonzero(np.isfinite(weights[name])))
        if bad:
            raise PolicyFileError(f"{path}: tensor {name!r} holds {bad} NaN or Inf value(s) of {weights[name].size}")


def load_policy(name_or_path: str | os.PathLike, greedy: bool | None = None, reset_each_episode: bool = False) -> Policy:
    """A ready :class:`lbagent.policy.Policy` from a shipped name or a file, in numpy.

    ``greedy=None`` acts as the file says (``arch.greedy``, recorded by the trainer); a sampling
    policy draws from an RNG seeded by ``begin_trial``, so evaluations stay reproducible."""
    from lbagent.policy.numpy_actor import DreamerActor, MlpActor

    weights, meta = read_policy_file(name_or_path)
    path = resolve_path(name_or_path)
    name = Path(str(name_or_path)).stem if os.sep in str(name_or_path) else str(name_or_path)
    policy: DreamerActor | MlpActor
    try:
        if meta["algorithm"] == "dreamer":
            greedy = bool(meta["arch"].get("greedy", False)) if greedy is None else greedy
            policy = DreamerActor(weights, meta["arch"], name=name, greedy=greedy,
                                  reset_each_episode=reset_each_episode)
        else:
            policy = MlpActor(weights, meta["arch"], name=name)
        # One decision on a blank observation: shape faults surface here, not in the daemon's loop.
        policy.act(np.zeros((1, OBS_DIM), np.float32), None, np.ones((1, N_ACTIONS), bool))
        policy.begin_trial(1, 0)
    except KeyError as exc:
        raise PolicyFileError(f"{path}: missing tensor or arch field {exc} for a {meta['algorithm']} policy") from None
    except (ValueError, TypeError, IndexError) as exc:
        raise PolicyFileError(f"{path}: tensors and arch do not fit a {meta['algorithm']} policy: {exc}") from None
    policy.metadata = meta
    return policy
