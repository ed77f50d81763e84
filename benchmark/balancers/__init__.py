"""Balancing methods. Importing this package imports every module in it, which registers the built-in methods:
a new built-in method is one new module here (its class, its registration and its declared parameters)."""

import importlib
import pkgutil

from benchmark.balancers.base import BALANCERS, Balancer, RunContext  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
