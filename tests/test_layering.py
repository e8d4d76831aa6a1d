"""The layering of design section 8, read from the source with ``ast`` so ``make test`` catches a
breach even where import-linter (``make lint``) is not run: ``lbagent.live`` stays numpy-only,
nothing imports the CLI, and only the simulator and the agent pay for gymnasium or torch on import.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import lbagent

PACKAGE = Path(lbagent.__file__).parent
HEAVY = ("gymnasium", "torch")
LIVE_FORBIDDEN = ("lbagent.sim", "lbagent.agent", "lbagent.eval", "lbagent.bench", "lbagent.cli", *HEAVY)
ADAPTERS = {("lbagent.spaces", "gymnasium.spaces")}
"""Imports a layer may hold though it sits below the library: ``spaces.gym_spaces`` builds the
contract's gymnasium spaces for the simulator and the trainers, importing gymnasium only when
called (and for type checkers); nothing on a host calls it. import-linter has the same exception."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@functools.cache
def imports(module: str, module_level_only: bool = False) -> tuple[tuple[str, int], ...]:
    """(imported module, line) for each import of ``module``; relative imports resolved.

    ``from a import b`` counts as importing ``a`` and, when it is one of ours, the module ``a.b``.
    With ``module_level_only`` the imports that run when the module is imported: none inside a
    function (deferred until called) or under ``if TYPE_CHECKING``.
    """
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if module_level_only and isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append((base, child.lineno))
                found.extend((f"{base}.{a.name}", child.lineno) for a in child.names if f"{base}.{a.name}" in MODULES)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return tuple(found)


def _owner(name: str) -> str | None:
    """The module of ours that importing ``name`` runs (itself, or the package above a symbol)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def forbidden_chains(sources: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    """Import chains, deferred imports included, from a module under ``sources`` to a forbidden one."""
    chains = []
    for start in (m for m in MODULES if _within(m, sources)):
        seen, todo = {start}, [(start, [start])]
        while todo:
            module, chain = todo.pop()
            for name, line in imports(module):
                if (module, name) in ADAPTERS:
                    continue
                if _within(name, forbidden):
                    chains.append(" -> ".join([*chain[:-1], f"{module}:{line}", name]))
                    continue
                nxt = _owner(name) if name.startswith("lbagent") else None
                if nxt is not None and nxt not in seen:
                    seen.add(nxt)
                    todo.append((nxt, [*chain[:-1], f"{module}:{line}", nxt]))
    return sorted(set(chains))


def test_the_checks_see_real_imports():
    """The checks below pass vacuously if the walk misses imports: pin what it must find today."""
    assert {"lbagent.live.daemon", "lbagent.live.probe.bpf", "lbagent.cli", "lbagent.sim.host"} <= set(MODULES)
    at_import = {name for name, _ in imports("lbagent.live.daemon", module_level_only=True)}
    deferred = {name for name, _ in imports("lbagent.live.daemon")} - at_import
    assert {"numpy", "lbagent.live.actuate", "lbagent.spaces"} <= at_import
    assert "lbagent.live.probe" in deferred  # loaded inside the daemon's probe start, so not at import
    assert "gymnasium.spaces" in {name for name, _ in imports("lbagent.spaces")}  # what ADAPTERS lets through
    assert "gymnasium" in {name for name, _ in imports("lbagent.sim.host", module_level_only=True)}
    assert any(c.endswith("torch") for c in forbidden_chains(("lbagent.cli",), ("torch",)))


def test_live_never_imports_the_simulator_agent_evaluation_benches_cli_or_heavy_libraries():
    assert forbidden_chains(("lbagent.live",), LIVE_FORBIDDEN) == []


def test_nothing_imports_the_cli():
    outside = tuple(m for m in MODULES if not _within(m, ("lbagent.cli",)))
    found = [f"{m}:{line} imports {name}" for m in outside for name, line in imports(m) if _within(name, ("lbagent.cli",))]
    assert found == []


def test_only_the_simulator_and_the_agent_import_gymnasium_or_torch_on_import():
    found = [
        f"{m}:{line} imports {name}"
        for m in MODULES
        if not _within(m, ("lbagent.sim", "lbagent.agent"))
        for name, line in imports(m, module_level_only=True)
        if _within(name, HEAVY)
    ]
    assert found == []
