"""Adaptive teacher: a second sampler trained with TB to sample where the student is wrong.

The student's TB residual at a terminal state x is measured on a backward trajectory ending at x,

    delta(x) = log Z_student + log p_F(tau) - log Q(tau),   tau ~ p_B(. | x),

negative where the student under-samples x (its path density is below the target's). The
teacher's reward grows with the squared residual and weights under-sampled states more,

    log R_T(x) = log(eps + (1 + C * 1[delta(x) < 0]) * delta(x)^2) + alpha * log R(x),

where R is the student's target reward. With alpha = 0 the teacher chases the largest residuals
wherever they are, including far from any target mass, where the student's relative error is
largest but a sample teaches it nothing useful (on 25GMM its samples end ~290 away from every
mode); alpha = 1 (the default, the R^alpha factor of the adaptive-teacher reference code) keeps
the teacher on the target's support. The teacher's samples go into the student's replay buffer, from which the student makes its
backward updates. The student's log Z is its TB estimate (or, for objectives without one, the
ELBO of the last forward batch).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from posterior.training import checkpoint
from posterior.core.grids import power_grid
from posterior.objectives.base import Objective
from posterior.paths.path_target import BoltzmannPath
from posterior.samplers.sampler import DiffusionSampler
from posterior.training.engine import Trainer


class StudentResidualReward:
    """The teacher's terminal log-reward log R_T(x) from the student's residual.

    Args:
        student: the student sampler.
        student_objective: its objective (provides ``log_z()`` and the reward floor).
        student_path: the student's target path measure.
        steps: grid size of the backward trajectories that measure the residual.
        grid_power: their grid's power (:func:`posterior.core.grids.power_grid`; the student's training grid).
        under_weight: C, extra weight where the student under-samples (delta < 0).
        eps: floor of the reward (keeps log R_T finite where the student is exact).
        target_power: alpha, exponent of the target reward R(x) multiplying the teacher's reward
            (>= 0; with alpha > 0 a target reward of zero is a teacher reward of zero).
        log_z_fallback: called when the objective has no log Z estimate.
        seed: seeds the backward-trajectory noise.
    """

    def __init__(self, student: DiffusionSampler, student_objective: Objective, student_path: BoltzmannPath, *,
                 steps: int = 100, grid_power: float = 1.0, under_weight: float = 19.0, eps: float = 1e-3,
                 target_power: float = 1.0, log_z_fallback: Callable[[], float] | None = None,
                 seed: int = 0) -> None:
        if under_weight < 0 or eps <= 0:
            raise ValueError(f"need under_weight >= 0 and eps > 0, got {under_weight} and {eps}")
        if not target_power >= 0:
            raise ValueError(f"target_power must be >= 0, got {target_power}")
        self.student, self.objective, self.path = student, student_objective, student_path
        self.dim = student_path.dim
        param = next(student.parameters())
        self.times = power_grid(steps, grid_power, device=param.device, dtype=param.dtype)
        self.under_weight, self.eps, self.target_power = float(under_weight), float(eps), float(target_power)
        self.log_z_fallback = log_z_fallback
        self.generator = torch.Generator(device=param.device).manual_seed(seed)

    def student_log_z(self) -> float:
        value = self.objective.log_z()
        if value is None:
            value = self.log_z_fallback() if self.log_z_fallback is not None else 0.0
        return float(value)

    @torch.no_grad()
    def residual_and_log_reward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Student residual delta (B,) and target log-reward log R (B,) at terminal states x (B, d)."""
        traj = self.student.backward_trajectories(x, self.times, self.path, generator=self.generator,
                                                  track_gradients=False)
        return self.student_log_z() + traj.log_pf - self.objective.log_q(traj), traj.log_reward

    def residual(self, x: Tensor) -> Tensor:
        """(B,) student residual delta at terminal states x (B, d)."""
        return self.residual_and_log_reward(x)[0]

    def log_reward(self, x: Tensor) -> Tensor:
        """(B,) log R_T(x)."""
        delta, log_r = self.residual_and_log_reward(x)
        weight = 1.0 + self.under_weight * (delta < 0).to(delta.dtype)
        log_r_teacher = torch.log(self.eps + weight * delta * delta)
        if self.target_power == 0:
            return log_r_teacher
        return log_r_teacher + self.target_power * log_r

    def grad_log_reward(self, x: Tensor) -> Tensor:
        raise NotImplementedError("the teacher's reward has no cheap gradient: train the teacher without "
                                  "the Langevin parametrization")


class AdaptiveTeacher:
    """Trains the teacher one TB step at a time and hands its samples to the student.

    Args:
        teacher_trainer: a :class:`Trainer` of the teacher sampler on a path whose target is a
            :class:`StudentResidualReward` (build it with :func:`make_teacher`).
    """

    def __init__(self, teacher_trainer: Trainer) -> None:
        self.trainer = teacher_trainer

    def step(self) -> Tensor:
        """One teacher update; returns its batch's terminal states (B, d), detached."""
        self.trainer.step()
        self.trainer.iteration += 1
        return self.trainer.last_samples

    def state_dict(self) -> dict:
        return {"trainer": self.trainer.state_dict(),
                "reward_generator": self.trainer.path.target.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["trainer"])
        checkpoint.restore_generator(self.trainer.path.target.generator, state["reward_generator"])


def make_teacher(student: DiffusionSampler, student_objective: Objective, student_path: BoltzmannPath,
                 teacher: DiffusionSampler, teacher_objective: Objective, config, *,
                 under_weight: float = 19.0, target_power: float = 1.0,
                 log_z_fallback: Callable[[], float] | None = None) -> AdaptiveTeacher:
    """Wire a teacher sampler and its TB objective to a student (``config``: the teacher's
    :class:`TrainConfig`, e.g. the student's with another seed)."""
    reward = StudentResidualReward(student, student_objective, student_path, steps=config.steps,
                                   grid_power=config.grid_power,
                                   under_weight=under_weight, target_power=target_power,
                                   log_z_fallback=log_z_fallback,
                                   seed=config.seed + 1)
    path = BoltzmannPath(reward, teacher.reference)
    return AdaptiveTeacher(Trainer(teacher, teacher_objective, config, path=path))


