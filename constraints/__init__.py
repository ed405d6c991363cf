"""Benchmark Boltzmann targets ``p(x) ∝ exp(log_reward(x))``."""

from .funnel import Funnel
from .gaussian import GaussianTarget
from .gmm25 import GaussianMixture25
from .lgcp import LogGaussianCoxProcess
from .manywell import Manywell
from .registry import TARGET_NAMES, make_target
from .target import BoltzmannTarget

__all__ = [
    "BoltzmannTarget",
    "Funnel",
    "GaussianMixture25",
    "GaussianTarget",
    "LogGaussianCoxProcess",
    "Manywell",
    "TARGET_NAMES",
    "make_target",
]
