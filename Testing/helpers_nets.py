"""What the network tests share: a few optimiser steps on a toy problem, to show a network learns."""
from __future__ import annotations

from typing import List

import torch


def fit_losses(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 1e-2) -> List[float]:
    """Cross-entropy of ``net(x)`` against labels ``y`` at each of ``steps`` Adam steps."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
