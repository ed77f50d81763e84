"""Balancing methods. Importing this package registers the built-in ones."""
from benchmark.balancers import gblend, joint, multi_loss, ogm  # noqa: F401
from benchmark.balancers.base import BALANCERS, Balancer, RunContext  # noqa: F401
