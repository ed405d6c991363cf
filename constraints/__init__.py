"""Benchmark Boltzmann targets ``p(x) ∝ exp(log_reward(x))``."""

from posterior.constraints.classifier import ClassifierLikelihood, ImageTransform
from posterior.constraints.digit_classifier import SmallCNN, mnist_classifier
from posterior.constraints.funnel import Funnel
from posterior.constraints.gaussian import GaussianTarget
from posterior.constraints.gmm25 import GaussianMixture25
from posterior.constraints.lgcp import LogGaussianCoxProcess
from posterior.constraints.likelihoods import (BernoulliImageLikelihood, Downsample, GaussianObservation, Identity,
                                               Mask, ObservationOperator)
from posterior.constraints.manywell import Manywell
from posterior.constraints.registry import TARGET_NAMES, make_target
from posterior.constraints.target import BoltzmannTarget

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
    "LogGaussianCoxProcess",
    "Manywell",
    "Mask",
    "ObservationOperator",
    "TARGET_NAMES",
    "make_target",
    "mnist_classifier",
    "SmallCNN",
]
