"""Sphinx configuration: MyST Markdown pages, autodoc API pages, the furo theme.

Build with ``nox -s docs`` (or ``sphinx-build -W --keep-going -b html docs docs/_build/html``).
Works offline: no intersphinx, no downloads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import funcgrad

project = "funcgrad"
author = "the funcgrad authors"
copyright = "the funcgrad authors"
release = funcgrad.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "funcgrad_docs",  # docs/_ext/funcgrad_docs.py: API coverage check, optional pages
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "README.md", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# Google-style docstrings.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields: NamedTuple fields are documented once

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_class_signature = "separated"
add_module_names = True
python_use_unqualified_type_names = True

# The math in the optimizers' docstrings is rendered by MathJax from a CDN when a page is opened
# in a browser; nothing is downloaded while building.
html_theme = "furo"
html_title = f"funcgrad {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
pygments_style = "sphinx"
pygments_dark_style = "monokai"
