"""The workflow files the package runs with — Snakefile, workflow/ (rules, schema, profiles) and the default
config.yaml — found in the source checkout, or, in an installed package, in the copy the build bundles with it
(``benchmark/_bundle``, written by setup.py)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent
BUNDLE = PACKAGE / "_bundle"
#: what the build copies into the bundle (paths relative to the checkout)
BUNDLED = ("Snakefile", "config.yaml", "workflow")


def root() -> Path:
    """The folder that holds Snakefile, config.yaml and workflow/: the checkout, else the installed bundle."""
    return CHECKOUT if (CHECKOUT / "Snakefile").exists() and (CHECKOUT / "workflow").is_dir() else BUNDLE


def resource(relative: str) -> Path:
    return root() / relative
