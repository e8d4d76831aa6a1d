"""The documentation stays true to the tree it ships in.

A newcomer learns where things live from two places: the module map of ``docs/design.md`` and the
layout table of ``README.md``. A rename that forgets them sends readers to files that are gone, and
a pointer to a file beside the checkout (``../shared``) sends them somewhere a clone does not have.
These tests fail on either, so a move of modules has to carry its documentation along.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
README = ROOT / "README.md"

# A repository path as the docs write it: in backticks, relative, one word with a slash in it.
REPO_PATH = re.compile(r"`([^`\s/][^`\s]*/[^`\s]*)`")
HEADING = re.compile(r"^(#+)\s+(.*)$")


def section(path: Path, title: str) -> str:
    """The text under the first heading that contains ``title``, up to the next heading of its level."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        m = HEADING.match(line)
        if m and title in m.group(2):
            level = len(m.group(1))
            body = []
            for later in lines[i + 1 :]:
                n = HEADING.match(later)
                if n and len(n.group(1)) <= level:
                    break
                body.append(later)
            return "\n".join(body)
    raise AssertionError(f"{path.relative_to(ROOT)} has no heading containing {title!r}")


def repo_paths(text: str) -> list[str]:
    return [p for p in REPO_PATH.findall(text) if "://" not in p]


def missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not (ROOT / p).exists()]


def test_no_doc_points_outside_the_repository() -> None:
    docs = [README, *sorted((ROOT / "docs").glob("*.md"))]
    offenders = [
        f"{doc.relative_to(ROOT)}:{n}"
        for doc in docs
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        if "../shared" in line
    ]
    assert offenders == []


def test_every_path_in_the_module_map_exists() -> None:
    paths = repo_paths(section(DESIGN, "Module map"))
    assert len(paths) >= 60, f"the module map lists only {len(paths)} paths: is its table still there?"
    assert missing(paths) == []


def test_the_module_map_names_every_module() -> None:
    """Every Python module under lbagent/ is listed (a package's __init__.py by its directory)."""
    listed = set(repo_paths(section(DESIGN, "Module map")))
    modules = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "lbagent").rglob("*.py")
        if "__pycache__" not in p.parts
    )
    unlisted = [
        m for m in modules
        if m not in listed and not (m.endswith("/__init__.py") and m[: -len("__init__.py")] in listed)
    ]
    assert unlisted == []


def test_every_path_in_the_readme_layout_exists() -> None:
    paths = repo_paths(section(README, "Layout"))
    assert len(paths) >= 10, f"the layout table lists only {len(paths)} paths: is it still there?"
    assert missing(paths) == []
