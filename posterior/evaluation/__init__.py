"""Evaluation of trained samplers: log Z estimates against exact answers, W2, sample quality,
path-KL diagnostics, resampling and figures."""
