"""Sphinx configuration: MyST Markdown pages, an API reference from the docstrings, offline maths.

Build: ``sphinx-build -W --keep-going -n -b html docs docs/_build/html`` (warnings are errors,
``-n`` reports every cross-reference that does not resolve).

The API pages (``docs/api/*.md``) call autodoc directly, one directive per public name (no
autosummary stubs). Two hooks below keep them readable:

- signatures show each annotation as the source writes it (``optax.ScalarOrSchedule``,
  ``jax.typing.DTypeLike | MomentFormat | None``), not the unions those aliases expand to;
- a ``NamedTuple`` state record whose fields are documented by ``# comments`` in its source
  (``mu: PyTree  # first moment m, ...``) gets one attribute entry per field from them.
"""

import ast
import importlib
import inspect
import pkgutil
import re
import textwrap
import typing
from pathlib import Path
from typing import Any

import adamx

project = "adamx"
author = "the adamx authors"
copyright = "2026, the adamx authors"
release = version = adamx.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 served from the site itself: no CDN, works offline
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Signatures carry the types (as written in the source, see _source_signature); the Args
# sections carry the meaning. Long signatures break one parameter a line.
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"
autodoc_default_options = {"exclude-members": "__new__, __init__"}
python_maximum_signature_line_length = 88
python_display_short_literal_types = True
add_module_names = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = False

# No internet (CI neither): no intersphinx inventories. References into other projects cannot
# resolve, so they are let through here, by namespace, and only those; every reference into
# adamx must resolve.
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|optax|numpy|np|chex|flax|orbax|torch|keras|ml_dtypes)(\..*)?"),
    (r"py:.*", r"(collections|typing|types|dataclasses|functools|enum)\..*"),
    (r"py:.*", r"(Array|ArrayLike|DTypeLike|Params|ScalarOrSchedule|PartitionSpec|Mesh)"),
    (r"py:.*", r"(NamedSharding|Sharding|ShapeDtypeStruct|Device|GradientTransformation.*)"),
    (r"py:.*", r"(Callable|Sequence|Mapping|Iterable|Iterator|Hashable|Literal|Any|Self)"),
]


def _private_type_aliases() -> list[tuple[str, str]]:
    """adamx's module-level type aliases (``PyTree``, ``Mask``, ``Rescale``, ...): signatures
    show them by name, and they are no public names with a page to link to."""
    names = set()
    for info in pkgutil.walk_packages(adamx.__path__, "adamx."):
        for name, value in vars(importlib.import_module(info.name)).items():
            alias = value is Any or isinstance(value, typing.TypeVar)
            alias = alias or typing.get_origin(value) is not None
            if alias and not name.startswith("_") and name not in adamx.__all__:
                names.add(name)
    return [("py:class", name) for name in sorted(names)]


nitpick_ignore = _private_type_aliases()

html_theme = "furo"
html_title = f"adamx {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]


def _source_signature(obj: Any) -> tuple[str, str | None] | None:
    """``(signature, return annotation)`` of a function as its source spells them, or None."""
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(obj)))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef):
        return None

    def text(n: ast.AST | None) -> str | None:
        segment = None if n is None else ast.get_source_segment(source, n)
        if segment is None or "\n" not in segment:
            return segment
        # A signature is one line: ``Callable[\n [A, B], C\n]`` as ``Callable[[A, B], C]``.
        one = " ".join(segment.split())
        for spaced, tight in (("[ ", "["), ("( ", "("), (", ]", "]"), (", )", ")")):
            one = one.replace(spaced, tight)
        return one.replace(" ]", "]").replace(" )", ")")

    def param(a: ast.arg, default: ast.AST | None) -> str:
        annotation = _unquote(text(a.annotation))
        out = a.arg + (f": {annotation}" if annotation else "")
        if default is not None:
            out += f" = {text(default)}" if annotation else f"={text(default)}"
        return out

    args = node.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    parts = [param(a, d) for a, d in zip(positional, defaults, strict=True)]
    if args.posonlyargs:
        parts.insert(len(args.posonlyargs), "/")
    if args.vararg is not None:
        parts.append("*" + param(args.vararg, None))
    elif args.kwonlyargs:
        parts.append("*")
    parts += [param(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    if args.kwarg is not None:
        parts.append("**" + param(args.kwarg, None))
    if parts and parts[0] in ("self", "cls"):
        parts = parts[1:]
    return "(" + ", ".join(parts) + ")", text(node.returns)


def _unquote(annotation: str | None) -> str | None:
    """``"MomentFormat"`` (a forward reference) as ``MomentFormat``."""
    if annotation and annotation[0] == annotation[-1] and annotation[0] in "'\"":
        return annotation[1:-1]
    return annotation


def _fields_signature(cls: type) -> str | None:
    """``(field=default, ...)`` of a NamedTuple, its defaults as the source spells them."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        node = ast.parse(source).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return None
    if not isinstance(node, ast.ClassDef):
        return None
    parts = []
    for item in node.body:
        target = item.target if isinstance(item, ast.AnnAssign) else None
        if isinstance(target, ast.Name) and target.id in cls._fields:
            default = item.value and ast.get_source_segment(source, item.value)
            parts.append(item.target.id + (f"={default}" if default else ""))
    return "(" + ", ".join(parts) + ")" if len(parts) == len(cls._fields) else None


def _signature(app, what, name, obj, options, signature, return_annotation):
    if what in ("function", "method") and signature is not None:
        found = _source_signature(obj)
        return found and (found[0], _unquote(found[1]))
    if what == "class" and getattr(obj, "_is_protocol", False):
        return "", None  # a Protocol is not constructed: no (*args, **kwargs)
    if what == "class" and hasattr(obj, "_fields"):
        found = _fields_signature(obj)
        return found and (found, None)
    return None


def _field_comments(cls: type) -> list[tuple[str, str, str]]:
    """``(field, annotation, comment)`` for each ``field: type  # comment`` line of a class."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return []
    out = []
    for line in lines:
        head, _, comment = line.partition("  # ")
        field, colon, annotation = head.strip().partition(":")
        if colon and comment and field in getattr(cls, "_fields", ()) and "=" not in annotation:
            out.append((field, annotation.strip(), comment.strip()))
    return out


def _fields(what: str, obj: Any, lines: list[str]) -> None:
    """A NamedTuple's fields from its source comments, unless its docstring lists them."""
    if what != "class" or not hasattr(obj, "_fields") or "Attributes:" in (obj.__doc__ or ""):
        return
    fields = _field_comments(obj)
    for field, annotation, comment in fields:
        comment = comment.replace("\\", "\\\\").replace("*", r"\*").replace("|", r"\|")
        lines += ["", f".. py:attribute:: {field}", "", f"   ``{annotation}``: {comment}"]
    if fields:
        lines.append("")


def _linkable() -> dict[str, str]:
    """``{literal: role target}`` for every public name an API page documents."""
    spelled: dict[str, Any] = {}
    for n in adamx.__all__:
        spelled[n] = spelled[f"adamx.{n}"] = f"adamx.{n}"
    for n in adamx.sharding.__all__:
        spelled[n] = spelled[f"sharding.{n}"] = spelled[f"adamx.sharding.{n}"] = (
            f"adamx.sharding.{n}"
        )
    spelled["MomentRecord"] = spelled["adamx.formats.MomentRecord"] = "adamx.formats.MomentRecord"
    for module, n in [("convert", "decode_moment"), ("convert", "encode_moment")]:
        spelled[n] = spelled[f"adamx.formats.{module}.{n}"] = f"adamx.formats.{module}.{n}"
    out = {}
    for literal, target in spelled.items():
        module, _, attribute = target.rpartition(".")
        value = getattr(importlib.import_module(module), attribute)
        if not inspect.ismodule(value):
            role = "class" if inspect.isclass(value) else "func"
            out[literal] = f":py:{role}:`~{target}`"
    return out


_LINKABLE = _linkable()
_LITERAL = re.compile(r"``([A-Za-z_][A-Za-z0-9_.]*)``")


def _links(obj: Any, name: str, lines: list[str]) -> None:
    """``scale_by_moments`` (a public name as an inline literal) as a link to its entry.

    Not for the documented object itself, nor for a name that is also one of its
    parameters (``adafactor``'s ``factored``, ``add_decoupled_weight_decay``'s ``cautious``).
    """
    try:
        parameters = set(inspect.signature(obj).parameters) if callable(obj) else set()
    except (TypeError, ValueError):
        parameters = set()

    def link(match: re.Match) -> str:
        literal = match.group(1)
        target = _LINKABLE.get(literal)
        if target is None or literal in parameters or target.endswith(f"~{name}`"):
            return match.group(0)
        return target

    for i, line in enumerate(lines):
        if not line.lstrip().startswith((">>>", "...")):
            lines[i] = _LITERAL.sub(link, line)


_PROSE = re.compile(r":type: ([A-Za-z]+(?: [A-Za-z]+){2,})")


def _prose_not_type(what: str, lines: list[str]) -> None:
    """Undo napoleon's reading of a property's first line ``What it holds: ...`` as
    ``type: description`` (the Google style for attributes) when the "type" is prose."""
    if what not in ("attribute", "property", "data"):
        return
    for i, line in enumerate(lines):
        prose = _PROSE.fullmatch(line)
        if prose:
            del lines[i]
            first = next(j for j, text in enumerate(lines) if text.strip())
            lines[first] = f"{prose.group(1)}: {lines[first].lstrip()}"
            return


def _docstring(app, what, name, obj, options, lines):
    _prose_not_type(what, lines)
    _links(obj, name, lines)
    _fields(what, obj, lines)


def _fix_viewcode_backlinks(app, exception):
    """Point each source page's "[docs]" link at the entry's real id.

    viewcode links every object of a source file back to ``#<module>.<name>`` with one
    ``<module>`` per file (the first one documented from it), so in ``formats/protocol.py``
    ``MomentRecord`` (documented as ``adamx.formats.MomentRecord``) got
    ``#adamx.MomentRecord``, after ``adamx.MomentFormat``.
    """
    if exception is not None or app.builder.format != "html":
        return
    objects = app.env.domains["py"].objects
    for modname, entry in getattr(app.env, "_viewcode_modules", {}).items():
        if not entry:
            continue
        _, _, used, refname = entry
        page = Path(app.outdir, "_modules", *modname.split(".")).with_suffix(".html")
        if not page.exists():
            continue
        html = original = page.read_text(encoding="utf-8")
        for name, docname in used.items():
            wrong = f"{refname}.{name}"
            right = [
                obj.node_id
                for full, obj in objects.items()
                if full.endswith("." + name) and obj.docname == docname and not obj.aliased
            ]
            if wrong not in objects and len(right) == 1:
                html = html.replace(f'#{wrong}"', f'#{right[0]}"')
        if html != original:
            page.write_text(html, encoding="utf-8")


def setup(app):
    app.connect("autodoc-process-signature", _signature)
    app.connect("autodoc-process-docstring", _docstring)
    app.connect("build-finished", _fix_viewcode_backlinks)
