"""Flat fit settings for tests: ``fit_args(iterations=..., hidden=..., prior=...)`` splits them into fit's
arguments, a TrainConfig and a SamplerConfig (starting from fit's defaults for the space)."""

from __future__ import annotations

from dataclasses import fields, replace

from posterior.fit import DATA_DEFAULTS, NOISE_DEFAULTS
from posterior.samplers.config import SamplerConfig
from posterior.training.config import TrainConfig

TRAIN = {f.name for f in fields(TrainConfig)}
SAMPLER = {f.name for f in fields(SamplerConfig)}


def fit_args(**settings):
    train = {k: settings.pop(k) for k in list(settings) if k in TRAIN}
    sampler = {k: settings.pop(k) for k in list(settings) if k in SAMPLER}
    base = DATA_DEFAULTS if settings.get("space") == "data" else NOISE_DEFAULTS
    return dict(settings, config=replace(base, **train), sampler=SamplerConfig(**sampler))
