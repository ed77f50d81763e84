"""Balancing methods. Importing this package registers the built-in ones."""
from benchmark.balancers import agm, gblend, joint, mmcosine, mslr, multi_loss, ogm, pmr, pretrain, regularizers  # noqa: F401
from benchmark.balancers.base import BALANCERS, Balancer, RunContext  # noqa: F401
