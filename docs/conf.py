"""Sphinx configuration of fusenn's documentation site.

    pip install ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html

The tutorial (docs/tutorial/) and the examples (examples/) are sphinx-gallery
scripts: they run during the build, and their output and pictures go into the
pages. Generated files (docs/_build, docs/auto_*, docs/api/generated) are not
committed.
"""

import os
import sys

import fusenn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # gallery_config

import gallery_config  # noqa: E402

project = "fusenn"
author = "the fusenn developers"
copyright = "the fusenn developers, BSD 3-Clause licence"
release = version = fusenn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_design",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "**/GALLERY_HEADER.rst", "**/sg_execution_times.rst",
                    "sg_execution_times.rst"]
templates_path = ["_templates"]
default_role = "py:obj"  # `name` in docstrings links to the object when it exists

# ---- API reference ------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"  # the signatures carry no annotations; numpydoc types are text
numpydoc_show_class_members = False  # the class template lists members itself
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# ---- Markdown (the user guide) -----------------------------------------------
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# ---- gallery: the tutorial and examples/ ----------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": ["tutorial", "../examples"],
    "gallery_dirs": ["auto_tutorial", "auto_examples"],
    "filename_pattern": gallery_config.executed_pattern(),
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "gallery_config.ExampleOrder",
    "reset_argv": "gallery_config.reset_argv",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_signature": False,
    "write_computation_times": False,
    "image_srcset": [],
    "matplotlib_animations": False,
}

# ---- HTML -------------------------------------------------------------------
# pydata-sphinx-theme: the theme of NumPy, SciPy, scikit-learn and matplotlib,
# whose users come here; its top bar keeps the tutorial, guide, gallery and API
# one click apart, and the right sidebar lists the sections of long pages.
html_theme = "pydata_sphinx_theme"
html_title = f"fusenn {release}"
html_static_path = ["_static"]
html_css_files = ["fusenn.css"]
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    # the performance page's nine-column tables take the right sidebar's width
    "secondary_sidebar_items": {"**": ["page-toc", "sourcelink"], "index": [],
                                "guide/performance": []},
    "navigation_with_keys": False,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "api/index": []}
html_show_sourcelink = True
html_last_updated_fmt = None


def _skip_metadata_requests(app, what, name, obj, skip, options):
    # scikit-learn gives estimators set_<method>_request methods, documented there
    return True if name.startswith("set_") and name.endswith("_request") else None


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_requests)
