"""Benchmark Boltzmann targets ``p(x) ∝ exp(log_reward(x))``."""

from .classifier import ClassifierLikelihood, ImageTransform
from .funnel import Funnel
from .gaussian import GaussianTarget
from .gmm25 import GaussianMixture25
from .lgcp import LogGaussianCoxProcess
from .likelihoods import (BernoulliImageLikelihood, Downsample, GaussianObservation, Identity,
                          LatentPosteriorReward, Mask, ObservationOperator)
from .manywell import Manywell
from .registry import TARGET_NAMES, make_target
from .target import BoltzmannTarget

__all__ = [
    "BernoulliImageLikelihood",
    "BoltzmannTarget",
    "ClassifierLikelihood",
    "Downsample",
    "Funnel",
    "GaussianMixture25",
    "GaussianObservation",
    "GaussianTarget",
    "Identity",
    "ImageTransform",
    "LatentPosteriorReward",
    "LogGaussianCoxProcess",
    "Manywell",
    "Mask",
    "ObservationOperator",
    "TARGET_NAMES",
    "make_target",
]
