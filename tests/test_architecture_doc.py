"""docs/architecture.md is the first map a newcomer reads: it must name every module of src/fbrs, under the
heading of its package, and nothing that does not exist (issue 15). Adding, moving or removing a module
without updating the map fails here."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
DOC = REPO / "docs" / "architecture.md"


def _package_sections() -> dict[str, str]:
    """`fbrs/app/` -> the text under its `### \\`fbrs/app/\\`` heading of the module map."""
    text = DOC.read_text(encoding="utf-8")
    module_map = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    sections = {}
    for block in re.split(r"^### ", module_map, flags=re.MULTILINE)[1:]:
        heading, _, body = block.partition("\n")
        sections[heading.strip().strip("`")] = body
    return sections


def _packages() -> dict[str, set[str]]:
    """`fbrs/app/` -> the module files directly in it and in its non-package folders (app/routes/...)."""
    packages: dict[str, set[str]] = {}
    for path in sorted((SRC / "fbrs").rglob("*.py")):
        relative = path.relative_to(SRC)
        folder = relative.parent
        # A sub-folder is its own section when the map gives it one (models/sam/, inference/brs/).
        packages.setdefault(f"{folder.as_posix()}/", set()).add(path.name)
    return packages


def test_every_module_is_on_the_map() -> None:
    sections = _package_sections()
    missing = []
    for package, files in _packages().items():
        section = sections.get(package)
        if section is None:
            parent = f"{Path(package).parent.as_posix()}/"
            section = sections.get(parent)
            prefix = f"{Path(package).name}/"
            names = {f"{prefix}{name}" for name in files}
        else:
            names = files
        if section is None:
            missing.append(f"{package} (no section)")
            continue
        missing += [f"{package}{name}" for name in sorted(names) if f"`{name}`" not in section]
    assert missing == [], f"docs/architecture.md does not name: {missing}"


def test_the_map_names_only_real_modules() -> None:
    stale = []
    for package, body in _package_sections().items():
        for name in re.findall(r"`([\w/]+\.py)`", body):
            if not (SRC / package / name).is_file():
                stale.append(f"{package}{name}")
        if not (SRC / package).is_dir():
            stale.append(package)
    # Paths named in the data-path diagram and the contracts must exist too.
    for path in re.findall(r"\b((?:app|inference|models|baselines|evaluation|training|onnx|serve)/[\w/]+\.py)\b",
                           DOC.read_text(encoding="utf-8")):
        if not (SRC / "fbrs" / path).is_file():
            stale.append(path)
    assert stale == [], f"docs/architecture.md names modules that do not exist: {sorted(set(stale))}"
