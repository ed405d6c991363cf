"""Batched backward pass through activations recorded during a no-grad sampling loop.

Off-policy objectives differentiate log p_F at states that were simulated without
gradients. Re-running the policy on all N*B states just to build a graph repeats the
forward pass the loop already did. Instead the loop records, for every step, the
pre-activations of the MLP, and :class:`ReplayedMLP` returns the recorded output while
its backward applies the exact chain rule to all steps at once in a few large matmuls.
The gradients equal those of a recomputed forward pass up to float rounding.

The MLP has the form

    p_0 = x W_in^T + bias (+ context)                   bias: (N, H) per step, context: (B, H)
    p_i = gelu(p_{i-1}) W_i^T + b_i,   i = 1..L
    out = gelu(p_L) W_out^T + b_out
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def gelu_grad(grad: Tensor, pre: Tensor) -> Tensor:
    """Gradient through exact GELU at pre-activation ``pre``."""
    return torch.ops.aten.gelu_backward(grad, pre)


class ReplayedMLP(torch.autograd.Function):
    """Recorded output of the MLP above with a batched backward pass.

    Forward args:
        output: (N, B, O) recorded outputs (no grad).
        states: (N, B, D) recorded inputs x.
        pre_acts: (L + 1, N, B, H) recorded pre-activations p_0..p_L (no grad).
        post_acts: (L + 1, N, B, H) recorded gelu(p_0)..gelu(p_L) (no grad).
        bias: (N, H) step bias (differentiable).
        context: (B, H) or None (differentiable).
        w_in: (H, D); then weights/biases W_1, b_1, ..., W_L, b_L, W_out, b_out.
    Returns:
        (N, B, O) equal to ``output``, differentiable in bias, context and the weights.
    """

    @staticmethod
    def forward(ctx, output: Tensor, states: Tensor, pre_acts: Tensor, post_acts: Tensor, bias: Tensor,
                context: Tensor | None, w_in: Tensor, *layers: Tensor) -> Tensor:
        ctx.save_for_backward(states, pre_acts, post_acts, w_in, *layers)
        ctx.has_context = context is not None
        return output.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        states, pre_acts, post_acts, w_in, *layers = ctx.saved_tensors
        n, b, h = pre_acts.shape[1:]
        grad_out = grad_out.reshape(n * b, -1)
        grads: list[Tensor | None] = [None] * len(layers)
        num_linear = len(layers) // 2
        g = grad_out
        for i in range(num_linear - 1, -1, -1):
            weight = layers[2 * i]
            grads[2 * i] = g.t() @ post_acts[i].reshape(n * b, h)
            grads[2 * i + 1] = g.sum(0)
            g = gelu_grad(g @ weight, pre_acts[i].reshape(n * b, h))
        grad_w_in = g.t() @ states.reshape(n * b, -1)
        g3 = g.reshape(n, b, h)
        grad_bias = g3.sum(1)
        grad_context = g3.sum(0) if ctx.has_context else None
        return (None, None, None, None, grad_bias, grad_context, grad_w_in, *grads)
