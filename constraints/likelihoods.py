"""Observation likelihoods ``log r(x, y)`` for posterior sampling under a decoder prior.

- :class:`BernoulliImageLikelihood`: pixel-wise Bernoulli-style likelihood of
  non-binarized images (the MNIST VAE task).
- :class:`GaussianObservation`: ``y = A(x) + noise`` with a linear operator
  :class:`Identity`, :class:`Mask` (inpainting) or :class:`Downsample`.

Every ``log_likelihood(x, y)`` takes x (B, *event_shape) and y (B, *obs_shape)
and returns (B,), summed over all non-batch entries (observed ones only for a mask).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posterior.core.checks import format_shape

_LOG_2PI = math.log(2.0 * math.pi)


def _require_tensor(value: object, name: str, expected: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(value).__name__}")
    return value


# ====================================================================== Bernoulli
class BernoulliImageLikelihood(nn.Module):
    """``log r(x, y) = Σ_pixels [y log p + (1 − y) log(1 − p)]`` for targets y in [0, 1].

    The targets are the non-binarized pixel intensities (a "continuous Bernoulli"
    without its normalizer, as in the MNIST VAE benchmark); the decoder
    probabilities p are clamped to ``[eps, 1 − eps]`` so that p = 0 or 1 gives a
    finite value. y is not range-checked (that would cost a device sync per call).

    Args:
        eps: Clamp of the probabilities (1e-5 in the benchmark).
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        if not 0.0 < float(eps) < 0.5:
            raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
        self.eps = float(eps)

    @staticmethod
    def _check(x: Tensor, y: Tensor, x_name: str) -> None:
        _require_tensor(x, x_name, "(B, P)")
        _require_tensor(y, "y", "(B, P)")
        if x.ndim < 2:
            raise ValueError(f"{x_name} must have shape (B, P), got {tuple(x.shape)}")
        if y.shape != x.shape:
            raise ValueError(f"y must have the shape of {x_name}, {format_shape(x.shape)} (B, P), "
                             f"got {tuple(y.shape)}")

    def log_likelihood(self, probs: Tensor, y: Tensor) -> Tensor:
        """probs: (B, P) decoder means, y: (B, P) targets in [0, 1] -> (B,).

        Any trailing event shape is accepted as long as ``y.shape == probs.shape``;
        all non-batch entries are summed.
        """
        self._check(probs, y, "probs")
        p = probs.clamp(self.eps, 1.0 - self.eps)
        ll = y * torch.log(p) + (1.0 - y) * torch.log1p(-p)
        return ll.reshape(ll.shape[0], -1).sum(-1)

    def log_likelihood_logits(self, logits: Tensor, y: Tensor) -> Tensor:
        """Same value from pre-sigmoid logits: (B, P), (B, P) -> (B,).

        Clamping the logits to ``[logit(eps), logit(1 − eps)]`` equals clamping
        the probabilities (sigmoid is monotone) and avoids forming p near 1.
        """
        self._check(logits, y, "logits")
        bound = math.log((1.0 - self.eps) / self.eps)
        l = logits.clamp(-bound, bound)
        ll = y * F.logsigmoid(l) + (1.0 - y) * F.logsigmoid(-l)
        return ll.reshape(ll.shape[0], -1).sum(-1)

    def forward(self, probs: Tensor, y: Tensor) -> Tensor:
        """Alias of :meth:`log_likelihood`."""
        return self.log_likelihood(probs, y)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


# ====================================================================== operators
class ObservationOperator(nn.Module):
    """A linear map ``A`` from x (B, *event_shape) to observations (B, *obs_shape).

    ``observed(Ax)`` returns a boolean mask broadcastable to ``Ax`` of the entries
    that enter the likelihood, or ``None`` when all do.
    """

    def forward(self, x: Tensor) -> Tensor:  # (B, *event) -> (B, *obs)
        raise NotImplementedError

    def observed(self, ax: Tensor) -> Tensor | None:
        return None


class Identity(ObservationOperator):
    """``A(x) = x`` for any x of shape (B, ...)."""

    def forward(self, x: Tensor) -> Tensor:
        _require_tensor(x, "x", "(B, ...)")
        if x.ndim < 1:
            raise ValueError(f"x must have shape (B, ...), got {tuple(x.shape)}")
        return x


class Mask(ObservationOperator):
    """Inpainting: observe only the entries where ``mask`` is True.

    ``A(x) = x · mask`` keeps x's shape; y has the same shape and its unobserved
    entries are ignored (the log-likelihood sums over observed entries only).

    Args:
        mask: (*event_shape) boolean (or 0/1) tensor, e.g. (784,) or (1, 28, 28).
    """

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        m = torch.as_tensor(mask)
        if m.ndim < 1:
            raise ValueError(f"mask must have the event shape of x (at least 1-D), got {tuple(m.shape)}")
        if m.dtype != torch.bool:
            if not bool(((m == 0) | (m == 1)).all()):
                raise ValueError("mask must be boolean or hold only 0/1 values")
            m = m != 0
        self.register_buffer("mask", m.clone())

    def _check(self, x: Tensor) -> None:
        _require_tensor(x, "x", f"(B, *mask.shape) = (B, {', '.join(map(str, self.mask.shape))})")
        if tuple(x.shape[1:]) != tuple(self.mask.shape) or x.ndim != self.mask.ndim + 1:
            raise ValueError(f"x must have shape (B, *mask.shape) = "
                             f"(B, {', '.join(map(str, self.mask.shape))}), got {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return x * self.mask.to(device=x.device, dtype=x.dtype)

    def observed(self, ax: Tensor) -> Tensor:
        return self.mask

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mask.shape)}, observed={int(self.mask.sum())}"


class Downsample(ObservationOperator):
    """Average pooling by ``factor`` over the two last image axes.

    Accepts images (B, C, H, W) or (B, H, W) and returns (B, C, H/f, W/f) or
    (B, H/f, W/f). With ``image_shape`` given, also accepts flattened images
    (B, prod(image_shape)) and returns flattened (B, prod(image_shape) / f²).

    Args:
        factor: Integer pooling factor dividing H and W.
        image_shape: (C, H, W) or (H, W) of the flattened input, if any.
    """

    def __init__(self, factor: int, image_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if int(factor) != factor or int(factor) < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.factor = int(factor)
        self.image_shape: tuple[int, ...] | None = None
        if image_shape is not None:
            shape = tuple(int(s) for s in image_shape)
            if len(shape) not in (2, 3):
                raise ValueError(f"image_shape must be (C, H, W) or (H, W), got {shape}")
            self._check_hw(shape[-2:], "image_shape")
            self.image_shape = shape

    def _check_hw(self, hw: Sequence[int], name: str) -> None:
        h, w = hw
        if h % self.factor or w % self.factor:
            raise ValueError(f"{name} has H, W = ({h}, {w}), not divisible by factor {self.factor}")

    def forward(self, x: Tensor) -> Tensor:
        _require_tensor(x, "x", "(B, C, H, W)")
        if self.image_shape is not None and x.ndim == 2:
            p = math.prod(self.image_shape)
            if x.shape[1] != p:
                raise ValueError(f"x must have shape (B, prod(image_shape)) = (B, {p}) or "
                                 f"(B, *image_shape), got {tuple(x.shape)}")
            img = x.reshape(x.shape[0], *self.image_shape)
            return self._pool(img).reshape(x.shape[0], -1)
        if self.image_shape is not None and tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape (B, *image_shape) = (B, {', '.join(map(str, self.image_shape))}) "
                             f"or (B, {math.prod(self.image_shape)}), got {tuple(x.shape)}")
        if x.ndim not in (3, 4):
            raise ValueError(f"x must have shape (B, C, H, W) or (B, H, W) (or flattened with image_shape given), "
                             f"got {tuple(x.shape)}")
        self._check_hw(x.shape[-2:], "x")
        return self._pool(x)

    def _pool(self, img: Tensor) -> Tensor:
        if img.ndim == 3:
            return F.avg_pool2d(img.unsqueeze(1), self.factor).squeeze(1)
        return F.avg_pool2d(img, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, image_shape={self.image_shape}"


# ====================================================================== Gaussian
class GaussianObservation(nn.Module):
    """``y = A(x) + σ ε``: ``log r(x, y) = log N(y; A(x), σ² I)`` with full normalization.

    The sum runs over the observed entries of ``A(x)`` (all of them unless A is a
    :class:`Mask`).

    Args:
        operator: An :class:`ObservationOperator` (Identity, Mask, Downsample).
        noise_std: σ > 0.
    """

    def __init__(self, operator: ObservationOperator, noise_std: float) -> None:
        super().__init__()
        if not isinstance(operator, ObservationOperator):
            raise TypeError(f"operator must be an ObservationOperator (Identity, Mask, Downsample), "
                            f"got {type(operator).__name__}")
        if isinstance(noise_std, (bool, str)) or not isinstance(noise_std, (int, float, Tensor)) \
                or (isinstance(noise_std, Tensor) and noise_std.numel() != 1) \
                or not (math.isfinite(float(noise_std)) and float(noise_std) > 0.0):
            raise ValueError(f"noise_std must be a finite number > 0, got {noise_std!r}")
        self.operator = operator
        self.noise_std = float(noise_std)

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """x: (B, *event_shape), y: (B, *obs_shape) with obs_shape that of A(x) -> (B,)."""
        ax = self.operator(x)
        _require_tensor(y, "y", f"{format_shape(ax.shape)} (the shape of A(x))")
        if y.shape != ax.shape:
            raise ValueError(f"y must have the shape of A(x), (B, {', '.join(map(str, ax.shape[1:]))}) "
                             f"with B = {ax.shape[0]}, got {tuple(y.shape)}")
        r = (y - ax) / self.noise_std
        per = -0.5 * r.square() - (math.log(self.noise_std) + 0.5 * _LOG_2PI)
        mask = self.operator.observed(ax)
        if mask is not None:
            # Unobserved entries contribute 0 (whatever y holds there).
            per = torch.where(mask.to(per.device), per, torch.zeros((), dtype=per.dtype, device=per.device))
        return per.reshape(per.shape[0], -1).sum(-1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Alias of :meth:`log_likelihood`."""
        return self.log_likelihood(x, y)

    def sample_observation(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw y = A(x) + σ ε (unobserved entries of a Mask are 0). x: (B, *event) -> (B, *obs)."""
        ax = self.operator(x)
        eps = torch.randn(ax.shape, generator=generator, device=ax.device, dtype=ax.dtype)
        y = ax + self.noise_std * eps
        mask = self.operator.observed(ax)
        return y if mask is None else y * mask.to(device=y.device, dtype=y.dtype)

    def extra_repr(self) -> str:
        return f"noise_std={self.noise_std}"


# ====================================================================== latent posterior
