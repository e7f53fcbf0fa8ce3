"""What the built wheel and sdist hold (run by .ci/wheel-smoke): exactly the package.

    python .ci/dist_contents.py DIST_DIR

The wheel: every module of adamx/ (the repository's adamx/**/*.py, no more, no fewer), py.typed,
the licence, and the dist-info metadata; nothing from tests/, docs/, examples/ or benchmarks/,
no compiled files. Its metadata requires only the runtime dependencies unconditionally (the
extras' requirements carry an ``extra ==`` marker). The sdist: the same modules, py.typed,
pyproject.toml, LICENSE, README.md and CHANGELOG.md (what a build from it needs and what it
ships), and nothing from tests/, docs/, examples/ or benchmarks/.
"""

import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNTIME = {"jax", "jaxlib", "optax", "chex", "numpy"}
NEVER = ("tests/", "docs/", "examples/", "benchmarks/", ".ci/", "__pycache__", ".pyc")


def sources() -> set[str]:
    """The package's files as the repository holds them, relative to the repository root."""
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "adamx").rglob("*.py")}
    return modules | {"adamx/py.typed"}


def check_wheel(path: Path, want: set[str]) -> list[str]:
    names = set(zipfile.ZipFile(path).namelist())
    info = sorted(n for n in names if ".dist-info/" in n)
    problems = [f"wheel: lacks {n}" for n in sorted(want - names)]
    problems += [f"wheel: holds {n}" for n in sorted(names - want - set(info))]
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in info):
        problems.append("wheel: lacks the licence (*.dist-info/licenses/LICENSE)")
    meta_name = next(n for n in info if n.endswith("/METADATA"))
    meta = Parser().parsestr(zipfile.ZipFile(path).read(meta_name).decode())
    unconditional = {
        r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        for r in meta.get_all("Requires-Dist", [])
        if "extra ==" not in r
    }
    if unconditional != RUNTIME:
        problems.append(f"wheel: requires {sorted(unconditional)}, want exactly {sorted(RUNTIME)}")
    if meta.get("License-Expression") != "Apache-2.0":
        problems.append(f"wheel: License-Expression is {meta.get('License-Expression')!r}")
    print(f"wheel {path.name}: {len(names)} files, requires {sorted(unconditional)}")
    return problems


def check_sdist(path: Path, want: set[str]) -> list[str]:
    with tarfile.open(path) as tar:
        root = tar.getnames()[0].split("/")[0]
        names = {n.removeprefix(root + "/") for n in tar.getnames() if tar.getmember(n).isfile()}
    need = want | {"pyproject.toml", "LICENSE", "README.md", "CHANGELOG.md", "PKG-INFO"}
    problems = [f"sdist: lacks {n}" for n in sorted(need - names)]
    problems += [f"sdist: holds {n}" for n in sorted(names) if n.startswith(NEVER) or "/." in n]
    print(f"sdist {path.name}: {len(names)} files")
    return problems


def main(dist: Path) -> int:
    want = sources()
    (wheel,), (sdist,) = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    problems = check_wheel(wheel, want) + check_sdist(sdist, want)
    for p in problems:
        print(f"dist_contents: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
