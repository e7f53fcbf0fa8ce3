"""The docstrings as documentation: every example runs, and every public name is in the API pages.

- Every ``>>>`` example of every module of the adamx package runs as a doctest (under the
  strict dtype promotion the test run sets), one test per module; a failure names the
  module, the example and what it printed.
- Every public name (``adamx.__all__``, ``adamx.sharding.__all__``, the public names of
  ``adamx.formats``) has exactly one autodoc entry in ``docs/api/*.md``, so a new name
  cannot be left out of the reference, nor documented twice.
"""

import collections
import doctest
import importlib
import inspect
import io
import pkgutil
import re
from pathlib import Path

import pytest

import adamx
import adamx.formats
import adamx.sharding

MODULES = ["adamx", *sorted(m.name for m in pkgutil.walk_packages(adamx.__path__, "adamx."))]
API_PAGES = Path(__file__).resolve().parents[2] / "docs" / "api"
# An autodoc entry of an API page: ``.. autofunction:: adamx.adam`` (in an eval-rst block).
ENTRY = re.compile(r"^\s*\.\. auto(?:function|class|data|module|exception)::\s+(\S+)", re.M)
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    failures = []
    for test in doctest.DocTestFinder().find(module, name):
        report = io.StringIO()
        result = runner.run(test, out=report.write, clear_globs=True)
        if result.failed:
            failures.append(f"{test.name} ({test.filename}:{test.lineno}):\n{report.getvalue()}")
    assert not failures, f"doctests of {name} failed:\n" + "\n".join(failures)


def public_names() -> set[str]:
    """Every public name, as the API pages spell it: ``adamx.X`` when ``adamx`` exports it.

    ``adamx.__all__``, ``adamx.sharding.__all__``, the public names of ``adamx.formats`` and
    the ``__all__`` of any public module under ``adamx.formats`` / ``adamx.sharding`` (e.g.
    ``adamx.formats.convert``).
    """
    names = {f"adamx.{n}" for n in adamx.__all__}
    names |= {f"adamx.sharding.{n}" for n in adamx.sharding.__all__}
    for n, obj in vars(adamx.formats).items():
        if n.startswith("_") or inspect.ismodule(obj):
            continue
        names.add(f"adamx.{n}" if getattr(adamx, n, None) is obj else f"adamx.formats.{n}")
    for package in (adamx.formats, adamx.sharding):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            if "._" not in info.name and hasattr(module, "__all__"):
                names |= {f"{info.name}.{n}" for n in module.__all__}
    return names


def resolves(name: str) -> bool:
    """``name`` is a public attribute of a public adamx module (an entry may document one)."""
    module, _, attribute = name.rpartition(".")
    if "._" in name or not module.startswith("adamx"):
        return False
    try:
        return hasattr(importlib.import_module(module), attribute)
    except ImportError:
        return False


def documented() -> list[str]:
    pages = sorted(API_PAGES.glob("*.md"))
    return [name for page in pages for name in ENTRY.findall(page.read_text())]


def test_every_public_name_is_in_the_api_pages_once():
    count = collections.Counter(documented())
    names = public_names()
    missing = sorted(names - set(count))
    twice = sorted(n for n, k in count.items() if k > 1)
    unknown = sorted(n for n in set(count) - names if not resolves(n))
    assert not missing, f"public names with no entry in docs/api/*.md (add one): {missing}"
    assert not twice, f"names with more than one entry in docs/api/*.md: {twice}"
    assert not unknown, f"entries in docs/api/*.md that are no public adamx names: {unknown}"


def test_every_public_function_has_an_example():
    functions = [(f"adamx.{n}", getattr(adamx, n)) for n in adamx.__all__]
    sharding = adamx.sharding
    functions += [(f"adamx.sharding.{n}", getattr(sharding, n)) for n in sharding.__all__]
    lacking = [n for n, f in functions if inspect.isfunction(f) and ">>>" not in (f.__doc__ or "")]
    assert not lacking, f"public functions whose docstring has no Example: {lacking}"
