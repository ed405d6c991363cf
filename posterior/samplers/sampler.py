"""The diffusion sampler: a Gaussian policy on the reference process's base kernel.

    x_{k+1} = m_k x_k + c_k u(x_k, t_k) + sqrt(v(x_k, t_k) c_k) * eps,   eps ~ N(0, I),

where (m_k, c_k) come from the reference (Brownian: m = 1, c = dt, start x_0 = 0, i.e.
Euler-Maruyama; VP: m = a_k, c = 1 - a_k^2, start x_0 ~ N(0, sigma2 I)), v = sigma2 (fixed) or
sigma2 * exp(range * tanh(NN)) (learned variance), and u = NN(x, t) [+ s(t) * clip(grad log R(x))]
(Langevin parametrization), clipped. log p_F includes the start density (first step's entry).

Three ways of producing trajectories, all returning :class:`Trajectories`:

- off-policy training (``forward_trajectories(..., differentiable=False)``): the loop runs
  without autograd, then the policy is re-evaluated on all N*B states as one batch with
  gradients, and log p_F is computed for all steps at once. This is exact (the states
  are detached in the off-policy objectives anyway) and far cheaper than a per-step graph.
- simulation-based training (``differentiable=True``, PIS): gradients flow through the
  states via the reparameterized noise.
- backward trajectories from given terminal states (``backward_trajectories``), drawn
  from the reference bridge, with log p_F evaluated in one batch.

Exploration adds ``explore`` to the per-unit-time variance of the sampling kernel only:
log p_F is always the log-density under the un-noised policy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posterior.core.checks import check_shape
from posterior.samplers.gaussian_steps import gaussian_step_log_density
from posterior.core.grids import check_grid
from posterior.samplers.networks import PISPolicy, TimeFeatures
from posterior.paths.path_target import BoltzmannPath
from posterior.paths.reference import LOG_2PI, BrownianBridge, GaussianReference
from posterior.core.trajectories import Trajectories


class DiffusionSampler(nn.Module):
    """Gaussian-policy diffusion sampler.

    Args:
        policy: drift network (see :class:`PISPolicy`).
        sigma2: variance per unit time of the reference Brownian motion (also the
            policy's base variance).
        output_clip: the drift is clipped to [-output_clip, output_clip].
        score_clip: the target score in the Langevin term is clipped to [-score_clip, score_clip].
        log_var_range: learned log-variance correction lies in [-range, range].
        reference: the noising process (default: Brownian bridge with rate sigma2).
    """

    def __init__(self, policy: PISPolicy, sigma2: float, *, output_clip: float = 1e4,
                 score_clip: float = 1e2, log_var_range: float = 4.0,
                 reference: GaussianReference | None = None) -> None:
        super().__init__()
        self.policy = policy
        if reference is not None and abs(reference.sigma2 - float(sigma2)) > 1e-12:
            raise ValueError(f"reference.sigma2 ({reference.sigma2}) must equal sigma2 ({sigma2})")
        self.reference = reference if reference is not None else BrownianBridge(sigma2)
        self.sigma2 = float(sigma2)
        self.output_clip = float(output_clip)
        self.score_clip = float(score_clip)
        self.log_var_range = float(log_var_range)
        self._workspace: dict[str, Tensor] = {}

    @property
    def dim(self) -> int:
        return self.policy.dim

    def _reusable(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A scratch buffer kept between calls (large fresh allocations page-fault on every use).

        Safe with autograd: a buffer saved for a backward pass that is overwritten by a later
        call bumps its version counter, and that backward then raises instead of using it.
        """
        buf = self._workspace.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = like.new_empty(shape)
            self._workspace[name] = buf
        return buf

    # ------------------------------------------------------------------ kernels
    def _drift_and_log_var(self, out: Tensor, score: Tensor | None, langevin_scale: Tensor | None,
                           clip: bool = True) -> tuple[Tensor, Tensor | None]:
        """Split raw network output (..., out_dim) into drift (..., d) and log-variance or None.

        With ``clip=False`` the drift is returned before clipping (for :meth:`log_pf_steps`,
        which clips it inside its fused log-density)."""
        d = self.dim
        drift = out[..., :d]
        if langevin_scale is not None and score is not None:
            drift = drift + langevin_scale * score
        if clip:
            drift = drift.clamp(-self.output_clip, self.output_clip)
        log_var = None
        if self.policy.learn_variance:
            log_var = torch.tanh(out[..., d:]) * self.log_var_range + math.log(self.sigma2)
        return drift, log_var

    def _clipped_score(self, path: BoltzmannPath, x: Tensor) -> Tensor:
        return path.score(x).clamp(-self.score_clip, self.score_clip)

    def log_pf_steps(self, states: Tensor, times: Tensor, drift: Tensor,
                     log_var: Tensor | None) -> Tensor:
        """Per-step policy log-densities, all steps at once; row 0 includes log p(x_0).

        Args:
            states: (N + 1, B, d); times: (N + 1,);
            drift: (N, B, d), before or after clipping: it is clipped here to ±output_clip
                (clipping twice changes nothing);
            log_var: (N, B, d) learned log-variance (per unit of c), or None for sigma2.
        Returns:
            (N, B)
        """
        mean_scale, c = self.reference.forward_kernel(times)
        previous = states[:-1] if mean_scale is None else mean_scale[:, None, None] * states[:-1]
        increment = states[1:] - previous
        if log_var is None:
            steps = gaussian_step_log_density(drift, increment, c, self.sigma2 * c, self.output_clip)
        else:
            c = c[:, None, None]
            residual = increment - drift.clamp(-self.output_clip, self.output_clip) * c
            log_step_var = log_var + c.log()
            steps = -0.5 * ((residual * residual) * torch.exp(-log_step_var) + LOG_2PI + log_step_var).sum(-1)
        initial = self.reference.initial_log_prob(states[0])
        if initial is None:
            return steps
        return torch.cat([steps[:1] + initial, steps[1:]], dim=0)

    def evaluate_policy(self, states: Tensor, features: TimeFeatures, scores: Tensor | None,
                        context: Tensor | None = None, clip: bool = True) -> tuple[Tensor, Tensor | None]:
        """Drift and log-variance at all non-terminal states in one batch.

        Args:
            states: (N + 1, B, d) or (N, B, d); only the first N time slices are used.
            features: time features of the N step times.
            scores: (N, B, d) clipped scores, required for a Langevin policy.
            clip: clip the drift (False: leave it to :meth:`log_pf_steps`).
        Returns:
            drift (N, B, d), log_var (N, B, d) or None.
        """
        n = features.hidden_bias.shape[0]
        out = self.policy.batched(states[:n], features, context)
        scale = None if features.langevin_scale is None else features.langevin_scale[:, None, :]
        return self._drift_and_log_var(out, scores, scale, clip=clip)

    # ------------------------------------------------------------------ forward
    def forward_trajectories(self, batch_size: int, times: Tensor, path: BoltzmannPath, *,
                             explore: float = 0.0, generator: torch.Generator | None = None,
                             context: Tensor | None = None, differentiable: bool = False,
                             track_gradients: bool = True) -> Trajectories:
        """Simulate ``batch_size`` trajectories from the reference's start distribution.

        Args:
            batch_size: B.
            times: (N + 1,) grid.
            path: target path measure (terminal log-reward, score, backward kernels).
            explore: extra variance (per unit of c, i.e. per unit time for Brownian motion) of
                the sampling kernel (>= 0).
            generator: source of the Gaussian noise.
            context: (B, hidden) condition features, or None.
            differentiable: keep the graph through the states (PIS); else detached states.
            track_gradients: if False (evaluation), nothing is differentiable.
        Returns:
            Trajectories with states (N + 1, B, d) and log_pf_steps (N, B).
        """
        check_grid(times)
        if explore < 0:
            raise ValueError(f"explore must be >= 0, got {explore}")
        if differentiable and explore > 0:
            raise ValueError("exploration noise is not defined for simulation-based (PIS) training")
        param = next(self.parameters())
        times = times.to(device=param.device, dtype=param.dtype)
        with torch.set_grad_enabled(track_gradients):
            features = self.policy.time_features(times[:-1])
        replay = track_gradients and not differentiable
        with torch.set_grad_enabled(differentiable and track_gradients):
            state_tensor, score_tensor, drift_tensor, log_var_tensor, recording = self._simulate(
                batch_size, times, path, features if differentiable else features.detached(),
                explore, generator, context, replay)
        if recording is not None:
            outputs, record = recording
            out = self.policy.replay(outputs, state_tensor[:-1], record, features, context)
            scale = None if features.langevin_scale is None else features.langevin_scale[:, None, :]
            drift_tensor, log_var_tensor = self._drift_and_log_var(out, score_tensor, scale, clip=False)
        with torch.set_grad_enabled(track_gradients):
            log_pf = self.log_pf_steps(state_tensor, times, drift_tensor, log_var_tensor)
            log_q_steps = path.log_q_steps(state_tensor, times)
            log_reward = path.log_reward(state_tensor[-1] if differentiable else state_tensor[-1].detach())
        return Trajectories(times=times, states=state_tensor, log_pf_steps=log_pf,
                            log_q_steps=log_q_steps, log_reward=log_reward,
                            scores=score_tensor, context=context, path=path)

    def _simulate(self, batch_size: int, times: Tensor, path: BoltzmannPath, features: TimeFeatures,
                  explore: float, generator: torch.Generator | None, context: Tensor | None,
                  replay: bool) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None,
                                         tuple[Tensor, Tensor] | None]:
        """The Euler-Maruyama loop.

        With ``replay`` the policy writes its outputs and activations into the reusable workspace,
        returned as ``recording`` for :meth:`PISPolicy.replay`, and no drifts are returned;
        otherwise the drifts (and log-variances) of every step are returned as computed (with
        their graph, if any) and ``recording`` is None.

        Returns:
            states (N + 1, B, d), scores (N, B, d) or None, drifts (N, B, d) or None,
            log-variances (N, B, d) or None, recording (outputs (N, B, out_dim), record) or None.
        """
        n, d = times.numel() - 1, self.dim
        mean_scale, c = self.reference.forward_kernel(times)
        c_values = c.tolist()
        m_values = None if mean_scale is None else mean_scale.tolist()
        noise = torch.randn((n, batch_size, d), generator=generator, device=times.device, dtype=times.dtype)
        langevin, learned = self.policy.langevin, self.policy.learn_variance
        if not learned:  # the sampling noise of every step, scaled in one op
            noise.mul_(((self.sigma2 + explore) * c).sqrt()[:, None, None])
        slots: list = [None] * n
        recording = None
        if replay:
            record = self._reusable("record", self.policy.record_shape(n, batch_size), noise)
            outputs = self._reusable("outputs", (n, batch_size, self.policy.out_dim), noise)
            slots = self.policy.step_slots(record, outputs)
            recording = (outputs, record)
        noise_steps = noise.unbind(0)
        scales = [None] * n if features.langevin_scale is None else features.langevin_scale.unbind(0)
        x = self.reference.initial_state(batch_size, d, noise, generator)
        states, drifts, log_vars, scores = [x], [], [], []
        for k in range(n):
            out = self.policy.step(x, k, features, context, slots[k])
            score = None
            if langevin:
                score = self._clipped_score(path, x.detach())
                scores.append(score)
            drift, log_var = self._drift_and_log_var(out, score, scales[k])
            if m_values is not None:
                x = x * m_values[k]
            if learned:
                x = x + drift * c_values[k] + ((log_var.exp() + explore) * c_values[k]).sqrt() * noise_steps[k]
            else:
                x = torch.add(x + noise_steps[k], drift, alpha=c_values[k])
            if not replay:
                drifts.append(drift)
                log_vars.append(log_var)
            states.append(x)
        score_tensor = torch.stack(scores) if langevin else None
        if replay:
            return torch.stack(states), score_tensor, None, None, recording
        return (torch.stack(states), score_tensor, torch.stack(drifts),
                torch.stack(log_vars) if learned else None, None)

    # ------------------------------------------------------------------ backward
    def backward_trajectories(self, samples: Tensor, times: Tensor, path: BoltzmannPath, *,
                              generator: torch.Generator | None = None,
                              context: Tensor | None = None,
                              track_gradients: bool = True) -> Trajectories:
        """Trajectories that end at given terminal states, drawn from the reference's backward kernels.

        Args:
            samples: (B, d) terminal states (e.g. from a replay buffer or exact samples).
            times: (N + 1,) grid.
        Returns:
            Trajectories whose log_pf_steps are differentiable in the policy parameters.
        """
        check_grid(times)
        check_shape(samples, (None, self.dim), "samples")
        param = next(self.parameters())
        samples = samples.to(device=param.device, dtype=param.dtype).detach()
        times = times.to(device=param.device, dtype=param.dtype)
        n = times.numel() - 1
        with torch.no_grad():
            states = self.reference.sample_backward(samples, times, generator)
            scores = None
            if self.policy.langevin:
                b, d = samples.shape
                flat = states[:n].reshape(n * b, d)
                scores = self._clipped_score(path, flat).reshape(n, b, d)
        with torch.set_grad_enabled(track_gradients):
            features = self.policy.time_features(times[:-1])
            drift, log_var = self.evaluate_policy(states, features, scores, context, clip=False)
            log_pf = self.log_pf_steps(states, times, drift, log_var)
            log_q_steps = path.log_q_steps(states, times)
            log_reward = path.log_reward(samples)
        return Trajectories(times=times, states=states, log_pf_steps=log_pf,
                            log_q_steps=log_q_steps, log_reward=log_reward,
                            scores=scores, context=context, path=path)
