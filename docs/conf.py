"""Sphinx configuration for the glue-astrovlm documentation."""

import glue_astrovlm

project = "glue-astrovlm"
author = "glue-astrovlm developers"
copyright = "2026, glue-astrovlm developers"
release = glue_astrovlm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
numpydoc_show_class_members = False
numpydoc_validation_checks = set()
autodoc_mock_imports = []
nitpicky = False
intersphinx_mapping = {}
html_theme = "alabaster"
html_static_path = ["_static"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]
