"""Serve MathJax 3 with the book instead of from a CDN, so math renders without network.

MathJax comes from the PyPI package ``django-static-mathjax`` (a plain copy of MathJax
3.2.2; despite its name it needs no Django). At build time its files are copied to
``_static/mathjax``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError

BUNDLE = "mathjax/es5/tex-chtml.js"


def mathjax_static_dir() -> Path:
    """The folder that holds ``mathjax/es5/...`` inside the installed package."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "MathJax is not installed: pip install django-static-mathjax "
            "(see requirements.txt)"
        )
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    if not (static / BUNDLE).is_file():
        raise ConfigError(
            f"{static / BUNDLE} is missing: reinstall django-static-mathjax"
        )
    return static


def _configure(app: Sphinx, config: Config) -> None:
    config.html_static_path.append(str(mathjax_static_dir()))
    config.mathjax_path = BUNDLE


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _configure)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
