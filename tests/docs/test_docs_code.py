"""Every ```python block in README.md and docs/**/*.md runs.

A page is a script: its python blocks, in page order, run as ONE program in a fresh interpreter
(``sys.executable``), in a temporary directory, with 8 host CPU devices (so mesh recipes run), so
a later block may use what an earlier one defined. The script keeps the page's line numbers (the
prose between blocks becomes blank lines), so a traceback's ``line N`` is line N of the page.

Fences that name another language (```bash, ```text, ```console, ```toml, ...) are not run. A fence
that hides python under another spelling (```py, ```python3, ```{code-block} python, ...) or names
no language at all fails :func:`test_fence_languages`: write ```python (it runs) or ```text (it
does not), so that no block skips the runner by accident.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import adamx

ROOT = Path(__file__).resolve().parents[2]
ADAMX_HOME = Path(adamx.__file__).resolve().parents[1]
TIMEOUT_S = 300
STDERR_TAIL = 4000

# An opening or closing code fence: its indent, its run of ``` or ~~~, its info string.
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
# MyST directives whose body is Markdown: fences inside them are the page's own blocks.
MARKDOWN_DIRECTIVES = frozenset(
    [
        "note",
        "warning",
        "tip",
        "hint",
        "important",
        "caution",
        "attention",
        "danger",
        "error",
        "seealso",
        "admonition",
        "dropdown",
        "tab-item",
        "tab-set",
        "card",
        "grid",
        "grid-item-card",
        "div",
        "topic",
        "sidebar",
        "margin",
    ]
)
# Info strings that mean python without being the one spelling the runner takes.
PYTHON_SPELLINGS = frozenset(
    ["py", "py3", "python3", "ipython", "ipython3", "pycon", "python-repl", "pyi"]
)
CODE_DIRECTIVES = frozenset(["code", "code-block", "sourcecode", "code-cell"])
RST_PYTHON = re.compile(r"^\s*\.\.\s+(code-block|code|sourcecode)::\s*(python|py)", re.MULTILINE)


@dataclass(frozen=True)
class Fence:
    """One fenced block of a page: its first line (1-based, the fence line), info and body."""

    line: int
    info: str
    body: tuple[str, ...]

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def is_python(self) -> bool:
        return self.language == "python"

    def hidden_python(self) -> bool:
        """A python block under another spelling, which the runner would not run."""
        words = self.info.split()
        if not words:
            return False
        if words[0].lower() in PYTHON_SPELLINGS or (
            words[0] != "python" and words[0].lower() == "python"
        ):
            return True
        directive = words[0].strip("{}")
        if words[0].startswith("{") and directive in CODE_DIRECTIVES:
            return len(words) == 1 or words[1].lower() in PYTHON_SPELLINGS | {"python"}
        return False


def _closes(line: str, char: str, length: int) -> bool:
    """Whether ``line`` is a closing fence for an opening run of ``length`` ``char``."""
    match = FENCE.match(line)
    return (
        bool(match)
        and match["fence"][0] == char
        and len(match["fence"]) >= length
        and not match["info"].strip()
    )


def fences(text: str) -> list[Fence]:
    """The page's fenced blocks in order (CommonMark fences; MyST admonitions looked into)."""
    lines = text.splitlines()
    found: list[Fence] = []
    admonitions: list[tuple[str, int]] = []  # the open Markdown-bodied directives' fences
    i = 0
    while i < len(lines):
        if admonitions and _closes(lines[i], *admonitions[-1]):
            admonitions.pop()
            i += 1
            continue
        match = FENCE.match(lines[i])
        if match is None or (match["fence"][0] == "`" and "`" in match["info"]):
            i += 1
            continue
        indent, run, info = len(match["indent"]), match["fence"], match["info"].strip()
        directive = info.split()[0].strip("{}") if info.startswith("{") else ""
        if directive in MARKDOWN_DIRECTIVES:
            admonitions.append((run[0], len(run)))  # its fences are found as the scan goes on
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not _closes(lines[end], run[0], len(run)):
            end += 1
        body = tuple(_strip_indent(line, indent) for line in lines[i + 1 : end])
        found.append(Fence(line=i + 1, info=info, body=body))
        i = end + 1
    return found


def _strip_indent(line: str, indent: int) -> str:
    """CommonMark: a fence indented n columns removes up to n columns from its body lines."""
    stripped = line[: len(line) - len(line.lstrip(" "))]
    return line[min(indent, len(stripped)) :]


def script(page_fences: list[Fence]) -> str:
    """The page's python blocks as one program whose line N is line N of the page."""
    out: list[str] = []
    for fence in page_fences:
        if not fence.is_python:
            continue
        out.extend([""] * (fence.line - len(out)))  # the prose and the fence line: blank
        out.extend(fence.body)
    return "\n".join(out) + "\n"


def pages() -> list[Path]:
    """README.md, every docs/**/*.md (the built site and generated pages left out) and every
    file a page pulls in with MyST's ``{include}`` (benchmarks/README.md, CHANGELOG.md): the
    site shows their blocks too."""
    docs = sorted(
        path
        for path in (ROOT / "docs").rglob("*.md")
        if not any(part.startswith(("_", ".")) or part == "generated" for part in path.parts)
    )
    found = [ROOT / "README.md", *docs]
    for page in docs:
        for target in re.findall(r"^```\{include\}\s+(\S+)", page.read_text(), re.MULTILINE):
            path = (page.parent / target).resolve()
            if path not in found:
                found.append(path)
    return found


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _has_python(path: Path) -> bool:
    return any(fence.is_python for fence in fences(path.read_text()))


PAGES = pages()
PYTHON_PAGES = [path for path in PAGES if _has_python(path)]


def _block_at(page_fences: list[Fence], line: int) -> Fence | None:
    """The python block holding page line ``line``."""
    for fence in page_fences:
        if fence.is_python and fence.line < line <= fence.line + len(fence.body):
            return fence
    return None


def _failure_report(page: Path, program: Path, page_fences: list[Fence], stderr: str) -> str:
    lines = [int(n) for n in re.findall(rf'File "{re.escape(str(program))}", line (\d+)', stderr)]
    where = f"{_page_id(page)}"
    if lines:
        block = _block_at(page_fences, lines[-1])
        start = f", the block opened at line {block.line}" if block else ""
        where = f"{_page_id(page)}:{lines[-1]}{start}"
    tail = stderr[-STDERR_TAIL:]
    return f"a python block of {where} failed (traceback lines are page lines):\n{tail}"


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_page_id)
def test_page_code_runs(page: Path, tmp_path: Path) -> None:
    """The page's python blocks run, in order, as one fresh script with 8 host CPU devices."""
    page_fences = fences(page.read_text())
    program = tmp_path / f"{page.name}.py"
    program.write_text(script(page_fences))
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "KERAS_BACKEND": "jax",
        "MPLBACKEND": "Agg",
        # the adamx this test run imports (a checkout, an editable or a wheel install)
        "PYTHONPATH": os.pathsep.join(
            [str(ADAMX_HOME), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    env.pop("JAX_NUMPY_DTYPE_PROMOTION", None)  # a reader's session: the default promotion
    try:
        result = subprocess.run(
            [sys.executable, str(program)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(
            f"the python blocks of {_page_id(page)} ran past {TIMEOUT_S} s "
            f"(keep a page to a few seconds of compute):\n{stderr[-STDERR_TAIL:]}"
        )
    if result.returncode != 0:
        pytest.fail(_failure_report(page, program, page_fences, result.stderr))


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_fence_languages(page: Path) -> None:
    """Every fence names its language, and python is spelled ```python, so none escapes the run."""
    text = page.read_text()
    problems = [
        f"line {fence.line}: ```{fence.info} is python the runner does not run: write ```python"
        for fence in fences(text)
        if fence.hidden_python()
    ]
    problems += [
        f"line {fence.line}: a fence without a language: write ```text (not run) or ```python (run)"
        for fence in fences(text)
        if not fence.info
    ]
    problems += [
        f"line {text[: match.start()].count(chr(10)) + 1}: an RST python code-block is not run: "
        "write a ```python fence"
        for match in RST_PYTHON.finditer(text)
    ]
    assert not problems, f"{_page_id(page)}:\n" + "\n".join(problems)


def test_fence_scanner() -> None:
    """The scanner: indented fences, longer closing runs, admonitions looked into, directives."""
    text = "\n".join(
        [
            "intro",
            "```python",
            "a = 1",
            "```",
            "1. a list item",
            "   ```python",
            "   b = a + 1",
            "   ````",
            "````{note}",
            "```python",
            "assert b == 2",
            "```",
            "````",
            "```{code-block} python",
            "x",
            "```",
            "~~~text",
            "```python",
            "~~~",
        ]
    )
    found = fences(text)
    assert [(f.line, f.info) for f in found] == [
        (2, "python"),
        (6, "python"),
        (10, "python"),
        (14, "{code-block} python"),
        (17, "text"),
    ]
    program = script(found).splitlines()
    assert program[2] == "a = 1" and program[6] == "b = a + 1" and program[10] == "assert b == 2"
    assert [f.hidden_python() for f in found] == [False, False, False, True, False]


def test_pages_are_found() -> None:
    """The scan sees the README and the guide pages (a broken scan would test nothing)."""
    found = {_page_id(path) for path in PYTHON_PAGES}
    expected = {"README.md", "docs/training_loops.md", "docs/low_memory.md", "benchmarks/README.md"}
    assert expected <= found, found
