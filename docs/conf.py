"""Sphinx configuration: builds offline, warnings are errors (``make docs``)."""

from __future__ import annotations

from typing import Any

from sphinx.util import logging

_logger = logging.getLogger(__name__)

project = "trioserve"
author = "the trioserve developers"
copyright = "2026, the trioserve developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
exclude_patterns = ["_build"]

html_theme = "furo"
html_title = "trioserve"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Types beside the documented parameters only, not a bare list of every one.
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
default_role = "py:obj"

# Offline: the mapping files are not fetched, so references to Trio and the standard
# library render as plain text rather than failing the build.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
nitpicky = False
napoleon_custom_sections = [
    ("Options and class attributes", "params_style"),
    ("Class attributes", "params_style"),
    "Resource handling",
    "Error handling",
]


def _check_api_reference(app: Any, env: Any) -> None:
    """Warn (an error under ``--fail-on-warning``) for a public name the reference lacks."""
    import trioserve
    import trioserve.testing

    documented = env.get_domain("py").objects
    for module in (trioserve, trioserve.testing):
        for name in module.__all__:
            if f"{module.__name__}.{name}" not in documented:
                _logger.warning(
                    "%s.%s is public but not in the API reference", module.__name__, name
                )


def setup(app: Any) -> None:
    """Sphinx extension hook: check the API reference when the build is consistent."""
    app.connect("env-check-consistency", _check_api_reference)
