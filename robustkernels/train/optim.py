"""Optimisers (SGD with Nesterov, LARS) and the step-wise LR schedule with warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["LARS", "build_optimizer", "lr_lambda", "scaled_lr"]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Each parameter tensor's update is scaled by the trust ratio
    ``eta * ||w|| / (||g|| + weight_decay * ||w||)``. Biases and normalisation parameters
    (1-D tensors) use neither the trust ratio nor weight decay, as is usual for large-batch
    ImageNet training.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if p.ndim > 1:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(grad)
                    grad = grad.add(p, alpha=group["weight_decay"])
                    denom = g_norm + group["weight_decay"] * w_norm
                    # Trust ratio 1 where either norm is 0 (fresh zero-init layers), computed on
                    # device without a host sync.
                    trust = torch.where((w_norm > 0) & (denom > 0), group["eta"] * w_norm / denom, 1.0)
                    grad = grad * trust
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = grad.clone()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                update = grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.add_(update, alpha=-group["lr"])
        return loss


def scaled_lr(lr: float, batch_size: int, base_batch: int, scaling: str) -> float:
    """Linear scaling rule (Goyal et al., 2017): ``lr * batch_size / base_batch``."""
    if scaling == "linear":
        return lr * batch_size / base_batch
    if scaling == "none":
        return lr
    raise ValueError(f"lr_scaling must be 'linear' or 'none', got {scaling!r}")


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
) -> torch.optim.Optimizer:
    """``sgd`` (weight decay on all parameters) or ``lars``."""
    if name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay
        )
    if name == "lars":
        return LARS(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    raise ValueError(f"optimizer must be 'sgd' or 'lars', got {name!r}")


def lr_lambda(
    schedule: str,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float,
    step_epochs: float = 1.0,
    gamma: float = 0.97,
) -> Callable[[int], float]:
    """Multiplier of the peak LR at optimiser step ``s`` (for ``LambdaLR``).

    Linear warm-up from ``1/warmup_steps`` to 1 over ``warmup_epochs``, then ``cosine`` (to 0
    at ``total_steps``), ``step`` (``gamma`` every ``step_epochs``, the APL WebVision
    StepLR(1 epoch, 0.97)) or ``constant``.
    """
    if schedule not in ("cosine", "step", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine', 'step' or 'constant', got {schedule!r}")
    warmup = int(round(warmup_epochs * steps_per_epoch))
    step_len = max(1, int(round(step_epochs * steps_per_epoch)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if schedule == "step":
            return gamma ** ((step - warmup) // step_len)
        return 1.0

    return factor
