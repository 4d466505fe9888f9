"""Optimisers (SGD with Nesterov, LARS, LAMB) and the step-wise LR schedule with warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["LAMB", "LARS", "build_optimizer", "lr_lambda", "scaled_lr"]


def _closure_loss(closure: Callable | None):
    """The optimiser-step closure protocol: re-evaluate the loss with grad enabled."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


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
        loss = _closure_loss(closure)
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


class LAMB(torch.optim.Optimizer):
    """Adam with layer-wise trust ratio (You et al., 2020, "Large Batch Optimization for Deep
    Learning: Training BERT in 76 minutes"; Algorithm 2).

    Per parameter tensor: Adam moments with bias correction, ``r = m_hat / (sqrt(v_hat) + eps)
    + weight_decay * w``, then ``w -= lr * (||w|| / ||r||) * r``. As in LARS above, 1-D tensors
    (biases, normalisation) get neither weight decay nor the trust ratio. Trust ratio 1 where a
    norm is 0, decided on device (no host sync). LAMB's learning rates are Adam-sized: start
    around ``lr=2e-3`` per 256 images rather than SGD's 0.1.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1.0 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                # Bias corrections are Python floats (the step count lives on the host anyway).
                denom = (v / (1.0 - beta2**t)).sqrt_().add_(group["eps"])
                update = (m / (1.0 - beta1**t)).div_(denom)
                if p.ndim > 1:
                    update.add_(p, alpha=group["weight_decay"])
                    w_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, 1.0)
                    update.mul_(trust)
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
    """``sgd`` (weight decay on all parameters), ``lars`` or ``lamb`` (``momentum`` is LAMB's beta1)."""
    if name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay
        )
    if name == "lars":
        return LARS(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "lamb":
        return LAMB(model.parameters(), lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd', 'lars' or 'lamb', got {name!r}")


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
