"""PIS-style policy networks: Fourier time embedding, state embedding, joint MLP.

Shapes follow the path-integral-sampler architecture used by the diffusion-sampler
papers: hidden width 64, a Fourier time embedding with 64 harmonics (frequencies
linspace(0.1, 100) and a learned phase), the state embedded by one linear layer and
added to the time embedding, a joint MLP whose last layer is zero-initialized.

Everything that depends on time only (the time embedding, the Langevin scale) is
computed once per grid with :meth:`PISPolicy.time_features` and reused by every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posterior.samplers.activation_replay import ReplayedMLP


class FourierMLP(nn.Module):
    """MLP on Fourier features [sin(c t + phase), cos(c t + phase)] of a scalar time.

    Args:
        harmonics: number of frequencies c = linspace(0.1, 100, harmonics).
        hidden: width of the hidden layers.
        out_dim: output width.
        linear_layers: number of Linear layers (>= 2), GELU between them.
    """

    def __init__(self, harmonics: int, hidden: int, out_dim: int, linear_layers: int = 2) -> None:
        super().__init__()
        if linear_layers < 2:
            raise ValueError(f"linear_layers must be >= 2, got {linear_layers}")
        self.register_buffer("frequencies", torch.linspace(0.1, 100.0, harmonics))
        self.phase = nn.Parameter(torch.randn(harmonics))
        layers: list[nn.Module] = [nn.Linear(2 * harmonics, hidden)]
        for _ in range(linear_layers - 2):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        layers += [nn.GELU(), nn.Linear(hidden, out_dim)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, t: Tensor) -> Tensor:
        """t: (N,) -> (N, out_dim)."""
        angle = t[:, None] * self.frequencies + self.phase
        return self.mlp(torch.cat([angle.sin(), angle.cos()], dim=-1))


@dataclass
class TimeFeatures:
    """Per-grid quantities shared by every trajectory of a batch.

    Attributes:
        hidden_bias: (N, hidden) state-embedding bias plus time embedding at each step's time.
        langevin_scale: (N, d) or (N, 1) scale of the clipped score, or None.
        weights: per Linear of the MLP (state embedding first), its transposed weight
            (in, out) and bias (or None for the state embedding, whose bias is in
            ``hidden_bias``), fetched once per batch for the step loop.
    """

    hidden_bias: Tensor
    langevin_scale: Tensor | None
    weights: tuple[tuple[Tensor, Tensor | None], ...] = ()

    def detached(self) -> "TimeFeatures":
        """Copy without autograd history (for the no-grad sampling loop)."""
        return TimeFeatures(self.hidden_bias.detach(),
                            None if self.langevin_scale is None else self.langevin_scale.detach(),
                            tuple((w.detach(), None if b is None else b.detach()) for w, b in self.weights))


@dataclass
class StepSlots:
    """Views of one step's slots in the recording buffers: pre-activations p_0..p_L,
    activations gelu(p_0)..gelu(p_L), each (B, hidden), and the output (B, out_dim)."""

    pre: tuple[Tensor, ...]
    post: tuple[Tensor, ...]
    output: Tensor


class PISPolicy(nn.Module):
    """Drift (and optional log-variance) network u(x, t[, condition]).

    Output of :meth:`step` / :meth:`batched` has ``dim`` columns (drift) or ``2 * dim``
    (drift, raw log-variance) when ``learn_variance``. The last layer is zero-initialized,
    so an untrained policy is the reference Brownian motion.

    Args:
        dim: event dimension d.
        hidden: width (64 in the papers).
        harmonics: Fourier harmonics of the time embedding.
        joint_layers: hidden Linear layers of the joint MLP.
        learn_variance: also output a per-dimension log-variance correction.
        langevin: add a time-dependent scale times the clipped target score to the drift.
        langevin_per_dimension: the Langevin scale has one entry per dimension (else one).
        zero_init: zero-initialize the last layer of the joint MLP.
    """

    def __init__(self, dim: int, hidden: int = 64, harmonics: int = 64, joint_layers: int = 2,
                 learn_variance: bool = False, langevin: bool = False,
                 langevin_per_dimension: bool = True, langevin_layers: int = 4,
                 zero_init: bool = True) -> None:
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden: expected a positive integer width, got {hidden!r}")
        self.dim = dim
        self.learn_variance = learn_variance
        self.langevin = langevin
        self.time_embed = FourierMLP(harmonics, hidden, hidden, linear_layers=2)
        self.state_embed = nn.Linear(dim, hidden)
        layers: list[nn.Module] = [nn.GELU()]
        for _ in range(joint_layers):
            layers += [nn.Linear(hidden, hidden), nn.GELU()]
        out = nn.Linear(hidden, 2 * dim if learn_variance else dim)
        if zero_init:
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        layers.append(out)
        self.joint = nn.Sequential(*layers)
        self.langevin_scale: FourierMLP | None = None
        if langevin:
            self.langevin_scale = FourierMLP(harmonics, hidden, dim if langevin_per_dimension else 1,
                                             linear_layers=langevin_layers)
            last = self.langevin_scale.mlp[-1]
            nn.init.zeros_(last.weight)
            nn.init.constant_(last.bias, 0.01)

    def log_variance_rows(self) -> list[torch.Tensor]:
        """Views (sharing storage, outside autograd) of the parameters that produce the raw
        log-variance: the last layer's rows d..2d of weight (d, hidden) and bias (d,). Empty
        without a learned variance."""
        if not self.learn_variance:
            return []
        out = self.joint[-1]
        return [out.weight.detach()[self.dim:], out.bias.detach()[self.dim:]]

    @property
    def out_dim(self) -> int:
        return 2 * self.dim if self.learn_variance else self.dim

    def time_features(self, t: Tensor) -> TimeFeatures:
        """t: (N,) step times -> features reused by every step and trajectory."""
        bias = self.time_embed(t) + self.state_embed.bias
        scale = self.langevin_scale(t) if self.langevin_scale is not None else None
        weights = ((self.state_embed.weight.t(), None),) + tuple(
            (layer.weight.t(), layer.bias) for layer in self._linears())
        return TimeFeatures(hidden_bias=bias, langevin_scale=scale, weights=weights)

    def step(self, x: Tensor, k: int, features: TimeFeatures, context: Tensor | None = None,
             slots: "StepSlots | None" = None) -> Tensor:
        """One step of the loop. x: (B, d); context: (B, hidden) or None -> (B, out_dim).

        Written with functional ops on the layers' weights: this runs N times per batch
        and is overhead-bound on small networks. With ``slots`` (no-grad mode only, see
        :meth:`step_slots`), the step's pre-activations, activations and output are written
        into the recording buffers for :meth:`replay`, and the output is the slot itself.
        """
        (w_in, _), *layers = features.weights
        bias = features.hidden_bias[k]
        if slots is None:
            h = torch.addmm(bias, x, w_in)
            if context is not None:
                h = h + context
            for w, b in layers:
                h = torch.addmm(b, F.gelu(h), w)
            return h
        h = slots.pre[0]
        if context is None:
            torch.addmm(bias, x, w_in, out=h)
        else:
            torch.add(torch.addmm(bias, x, w_in), context, out=h)
        last = len(layers) - 1
        for i, (w, b) in enumerate(layers):
            a = torch._C._nn.gelu(h, out=slots.post[i])
            h = torch.addmm(b, a, w, out=slots.output if i == last else slots.pre[i + 1])
        return h

    def step_slots(self, record: Tensor, outputs: Tensor) -> list["StepSlots"]:
        """Per-step views into the recording buffers, built once per batch.

        Args:
            record: (2, L + 1, N, B, hidden) buffer of shape :meth:`record_shape`.
            outputs: (N, B, out_dim) buffer for the step outputs.
        """
        pre = [layer.unbind(0) for layer in record[0].unbind(0)]
        post = [layer.unbind(0) for layer in record[1].unbind(0)]
        return [StepSlots(tuple(p[k] for p in pre), tuple(q[k] for q in post), out)
                for k, out in enumerate(outputs.unbind(0))]

    def _linears(self) -> list[nn.Linear]:
        return [m for m in self.joint if isinstance(m, nn.Linear)]

    def record_shape(self, steps: int, batch_size: int) -> tuple[int, ...]:
        """Shape (2, L + 1, N, B, hidden) of the buffer for the pre-activations and GELU outputs."""
        return (2, len(self._linears()), steps, batch_size, self.state_embed.out_features)

    def replay(self, outputs: Tensor, states: Tensor, record: Tensor, features: TimeFeatures,
               context: Tensor | None = None) -> Tensor:
        """Recorded loop outputs, differentiable through one batched backward pass.

        Args:
            outputs: (N, B, out_dim) outputs of :meth:`step` at every step.
            states: (N, B, d) inputs of every step.
            record: (2, L + 1, N, B, hidden) buffer filled by :meth:`step`.
            features: the differentiable time features the loop used (detached copies).
        Returns:
            (N, B, out_dim) equal to ``outputs``, with gradients equal to those of
            :meth:`batched` on the same states.
        """
        params = [t for layer in self._linears() for t in (layer.weight, layer.bias)]
        return ReplayedMLP.apply(outputs, states, record[0], record[1], features.hidden_bias, context,
                                 self.state_embed.weight, *params)

    def batched(self, x: Tensor, features: TimeFeatures, context: Tensor | None = None) -> Tensor:
        """All steps at once. x: (N, B, d); context: (B, hidden) or None -> (N, B, out_dim)."""
        h = torch.matmul(x, self.state_embed.weight.t()) + features.hidden_bias[:, None, :]
        if context is not None:
            h = h + context
        return self.joint(h)


class PISFlow(nn.Module):
    """State-flow network log F(x, t) for sub-trajectory balance (same architecture, scalar output).

    The last layer is zero-initialized.

    Args:
        dim: event dimension d.
        hidden, harmonics, joint_layers: as :class:`PISPolicy`.
        shared_embeddings: a policy whose state and time embeddings this flow reads instead
            of its own (the public code's FL-SubTB: the flow head sits on the policy's
            embedding ``state_embed(x) + time_embed(t)``, so the flow's loss also trains
            them). The policy is not registered as a submodule: its parameters stay in the
            policy's optimizer group and checkpoint, and :meth:`parameters` returns only the
            flow head.
    """

    def __init__(self, dim: int, hidden: int = 64, harmonics: int = 64, joint_layers: int = 2,
                 shared_embeddings: PISPolicy | None = None) -> None:
        super().__init__()
        if shared_embeddings is None:
            self.time_embed: nn.Module | None = FourierMLP(harmonics, hidden, hidden, linear_layers=2)
            self.state_embed: nn.Module | None = nn.Linear(dim, hidden)
            self._shared: tuple[PISPolicy, ...] = ()
        else:
            embed = shared_embeddings.state_embed
            if embed.in_features != dim or embed.out_features != hidden:
                raise ValueError(f"shared_embeddings: the policy embeds {embed.in_features} -> "
                                 f"{embed.out_features}, the flow needs {dim} -> {hidden}")
            self.time_embed = self.state_embed = None
            self._shared = (shared_embeddings,)  # a tuple: not registered as a submodule
        layers: list[nn.Module] = [nn.GELU()]
        for _ in range(joint_layers):
            layers += [nn.Linear(hidden, hidden), nn.GELU()]
        out = nn.Linear(hidden, 1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.joint = nn.Sequential(*layers)

    @property
    def shares_embeddings(self) -> bool:
        return bool(self._shared)

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        """x: (N, B, d), t: (N,), context: (B, hidden) or None -> (N, B)."""
        owner = self._shared[0] if self._shared else self
        h = owner.state_embed(x) + owner.time_embed(t)[:, None, :]
        if context is not None:
            h = h + context
        return self.joint(h).squeeze(-1)
