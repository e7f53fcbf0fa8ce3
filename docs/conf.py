"""Sphinx configuration: MyST Markdown pages, an API reference from the docstrings, offline maths.

Build: ``sphinx-build -W --keep-going -n -b html docs docs/_build/html`` (warnings are errors,
``-n`` reports every cross-reference that does not resolve).
"""

import adamx

project = "adamx"
author = "the adamx authors"
copyright = "2026, the adamx authors"  # noqa: A001 (Sphinx's name)
release = version = adamx.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 served from the site itself: no CDN, works offline
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Offline builds: no intersphinx inventories are fetched (CI has no internet).
intersphinx_mapping: dict = {}

html_theme = "furo"
html_title = f"adamx {release}"
