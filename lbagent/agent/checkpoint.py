"""Training checkpoints as data only: a tree of tensors and Python primitives, read back with
``torch.load(weights_only=True)``.

A pickle of the trainer would hold its env and actor objects as they are, but loading a pickle runs
whatever code the file names: resuming a checkpoint someone else made would run their code. Here the
objects are taken apart into their fields before saving (numpy arrays as tensors, numpy RNGs as
their state dicts) and rebuilt on load by filling fields into fresh instances of project classes
(``lbagent.*``, plus the gymnasium spaces the envs hold), without calling any constructor. A file
can then only supply values, never behaviour: a pickled object of any other kind is refused by
torch's weights-only reader before anything of it runs, and a class outside the allowlist is refused
by :func:`decode`. Identity is kept (an object referenced twice comes back as one object), as a
pickle would keep it, so a resumed run is bit-for-bit the uninterrupted one.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbagent.errors import UserError

TAG = "__codec__"
"""The key that marks an encoded node; a plain dict of the trainer's own never uses it."""
CLASS_MODULES = ("lbagent.", "gymnasium.spaces.")
"""Modules whose classes a checkpoint may name: the project's own data classes and the gym spaces
its envs hold. Instances are made with ``object.__new__`` and filled, so no method of theirs runs."""
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
PRIMITIVES = (type(None), bool, int, float, str, bytes)


class CheckpointError(UserError):
    """A checkpoint that is unreadable, not data only, or names a class it may not."""


def encode(value: Any, memo: dict[int, tuple[Any, Any]] | None = None) -> Any:
    """``value`` as tensors, primitives, lists, tuples and dicts (safe for ``weights_only``).

    ``memo`` maps ``id(value)`` to ``(value, node)``: holding the value keeps its id from being
    reused by a later temporary (an RNG's state dict) while the walk is under way."""
    memo = {} if memo is None else memo
    if type(value) in PRIMITIVES or isinstance(value, torch.Tensor):
        return value
    if id(value) in memo:
        return memo[id(value)][1]
    if isinstance(value, np.generic):
        node: Any = {TAG: "scalar", "data": torch.from_numpy(np.asarray(value).reshape(1))}
    elif isinstance(value, np.ndarray):
        node = {TAG: "ndarray", "data": _tensor(value)}
    elif isinstance(value, np.dtype):
        node = {TAG: "dtype", "name": value.str}
    elif isinstance(value, np.random.Generator):
        node = {TAG: "generator", "state": encode(value.bit_generator.state, memo)}
    elif isinstance(value, np.random.RandomState):
        node = {TAG: "randomstate", "state": encode(value.get_state(legacy=False), memo)}
    elif isinstance(value, list):
        node = []
        memo[id(value)] = (value, node)
        node.extend(encode(v, memo) for v in value)
    elif isinstance(value, tuple):
        node = tuple(encode(v, memo) for v in value)
    elif isinstance(value, dict):
        if TAG in value:
            raise TypeError(f"cannot checkpoint a dict with the reserved key {TAG!r}")
        node = {}
        memo[id(value)] = (value, node)
        node.update((k, encode(v, memo)) for k, v in value.items())
    else:
        node = _encode_object(value, memo)
    memo[id(value)] = (value, node)
    return node


def _tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype.kind not in "biufc" or array.dtype == np.uint64:
        raise TypeError(f"cannot checkpoint a numpy array of dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array).copy())


def _encode_object(value: Any, memo: dict[int, tuple[Any, Any]]) -> dict:
    cls = type(value)
    name = f"{cls.__module__}:{cls.__qualname__}"
    if not cls.__module__.startswith(CLASS_MODULES) or not hasattr(value, "__dict__"):
        raise TypeError(f"cannot checkpoint an object of class {name}")
    fields: dict[str, Any] = {}
    node = {TAG: "object", "class": name, "fields": fields}
    memo[id(value)] = (value, node)
    fields.update((k, encode(v, memo)) for k, v in vars(value).items())
    return node


def decode(node: Any, memo: dict[int, Any] | None = None) -> Any:
    """The values :func:`encode` took apart; ``ValueError`` for a node it would never write."""
    memo = {} if memo is None else memo
    if type(node) in PRIMITIVES or isinstance(node, torch.Tensor):
        return node
    if id(node) in memo:
        return memo[id(node)]
    if isinstance(node, list):
        value: Any = []
        memo[id(node)] = value
        value.extend(decode(v, memo) for v in node)
    elif isinstance(node, tuple):
        value = tuple(decode(v, memo) for v in node)
    elif isinstance(node, dict) and TAG not in node:
        value = {}
        memo[id(node)] = value
        value.update((k, decode(v, memo)) for k, v in node.items())
    elif isinstance(node, dict):
        value = _decode_tagged(node, memo)
    else:
        raise ValueError(f"unexpected {type(node).__name__} in a checkpoint")
    memo[id(node)] = value
    return value


def _decode_tagged(node: dict, memo: dict[int, Any]) -> Any:
    kind = node[TAG]
    if kind == "ndarray":
        return node["data"].numpy()
    if kind == "scalar":
        return node["data"].numpy()[0]
    if kind == "dtype":
        return np.dtype(str(node["name"]))
    if kind == "generator":
        state = decode(node["state"], memo)
        if state.get("bit_generator") not in BIT_GENERATORS:
            raise ValueError(f"unknown bit generator {state.get('bit_generator')!r}")
        generator = np.random.Generator(getattr(np.random, state["bit_generator"])())
        generator.bit_generator.state = state
        return generator
    if kind == "randomstate":
        legacy = np.random.RandomState()
        legacy.set_state(decode(node["state"], memo))
        return legacy
    if kind == "object":
        obj: Any = object.__new__(_allowed_class(str(node["class"])))
        memo[id(node)] = obj
        fields = decode(node["fields"], memo)
        if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields):
            raise ValueError(f"fields of {node['class']} are not a name -> value table")
        vars(obj).update(fields)
        return obj
    raise ValueError(f"unknown node kind {kind!r}")


def _allowed_class(name: str) -> type:
    module, _, qualname = name.partition(":")
    if not module.startswith(CLASS_MODULES):
        raise ValueError(f"class {name} is not one a checkpoint may name")
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part, None)
    if not isinstance(cls, type) or cls.__module__ != module:
        raise ValueError(f"no class {name}")
    return cls


def save_checkpoint(path: Path, state: dict) -> Path:
    """Write ``state`` atomically (a crash leaves the previous checkpoint in place)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(encode(state), tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> dict:
    """The state :func:`save_checkpoint` wrote, or a one-line :class:`CheckpointError`."""
    try:
        tree = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever reading an untrusted file raises is the file's fault
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {_first_line(exc)})") from None
        found = re.search(r"WeightsUnpickler error:\s*(\S.*?)(?: was not|\.|\n|$)", str(exc))
        why = found.group(1) if found else "it holds more than tensors and plain values"
        raise CheckpointError(f"{path}: refused: not a data-only checkpoint ({why})") from None
    try:
        state = decode(tree)
    except (ValueError, TypeError, KeyError, AttributeError, ImportError) as exc:
        raise CheckpointError(f"{path}: refused: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: refused: a checkpoint holds a table, not {type(state).__name__}")
    return state


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0] if text else "no detail"
