"""Check that the floors venv holds exactly the declared floors, and that the floors agree.

Every ``name>=X`` in pyproject.toml's ``[project].dependencies`` and ``examples`` extra must be
pinned as ``name==X`` in .ci/floors.txt, and ``X`` must be what is installed. Exits non-zero
with the list of mismatches otherwise (pip may not silently upgrade a floor).

    python .ci/floors_check.py [pyproject.toml] [.ci/floors.txt]
"""

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def declared_floors(pyproject: Path) -> dict[str, str]:
    """``{name: X}`` for each ``name>=X`` requirement of the runtime and examples dependencies."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["examples"]
    floors = {}
    for req in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)\s*", req)
        if match is None:
            sys.exit(f"floors: {req!r} in {pyproject} is not of the form 'name>=version'")
        floors[_name(match[1])] = match[2]
    return floors


def pinned(floors_txt: Path) -> dict[str, str]:
    """``{name: Y}`` for each ``name==Y`` line of the floors file."""
    pins = {}
    for line in floors_txt.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_name(name)] = version.strip()
    return pins


def main() -> None:
    pyproject = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "pyproject.toml"
    floors_txt = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / ".ci" / "floors.txt"
    floors, pins = declared_floors(pyproject), pinned(floors_txt)
    problems = []
    for name, version in floors.items():
        if pins.get(name) != version:
            pin = pins.get(name)
            problems.append(f"{name}: pyproject says >={version}, {floors_txt.name} pins {pin}")
    for name, version in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        status = "ok" if installed == version else "MISMATCH"
        print(f"floors: {name:18} pinned {version:10} installed {installed}  {status}")
        if installed != version:
            problems.append(f"{name}: pinned {version}, installed {installed}")
    if problems:
        sys.exit("floors: FAILED\n  " + "\n  ".join(problems))
    print(f"floors: all {len(pins)} pins installed exactly; pyproject floors agree")


if __name__ == "__main__":
    main()
