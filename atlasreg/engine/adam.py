"""Adam (Kingma & Ba 2015) for the engine's optimisers, without ``torch.optim``.

The same arithmetic as ``torch.optim.Adam``'s single-tensor path (no weight decay, no AMSGrad), so
the same steps; but constructing any ``torch.optim`` optimiser imports ``torch._dynamo`` once per
process, about 1.5 s of CPU (2-5 s of wall on a shared 2-core machine) that a one-pair
``atlasreg register`` with ``svf`` or the affine stage paid in full.
"""

from __future__ import annotations

from typing import Sequence

import torch


class Adam:
    """Adam over ``(tensor, step size)`` pairs: ``zero_grad()``, backward, ``step()``; ``decay(gamma)``
    multiplies every step size by ``gamma`` (``ExponentialLR``'s update)."""

    def __init__(self, groups: Sequence[tuple[torch.Tensor, float]], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.groups = [[p, float(lr), torch.zeros_like(p), torch.zeros_like(p)] for p, lr in groups]
        self.betas, self.eps, self.steps = betas, eps, 0

    def zero_grad(self) -> None:
        for group in self.groups:
            group[0].grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        bias1, bias2_sqrt = 1 - beta1**self.steps, (1 - beta2**self.steps) ** 0.5
        for p, lr, mean, square in self.groups:
            mean.lerp_(p.grad, 1 - beta1)
            square.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            p.addcdiv_(mean, (square.sqrt() / bias2_sqrt).add_(self.eps), value=-lr / bias1)

    def decay(self, gamma: float) -> None:
        for group in self.groups:
            group[1] *= gamma
