"""nnU-Net v2's optimizer and learning-rate schedule.

SGD with Nesterov momentum 0.99, initial learning rate 1e-2, weight decay 3e-5 (nnU-Net's
`configure_optimizers`), and the polynomial decay

    lr(epoch) = initial_lr * (1 - epoch / max_epochs) ** 0.9

set once at the start of each epoch (nnU-Net's `PolyLRScheduler`, which its trainer steps with the
epoch number in `on_train_epoch_start`): epoch 0 trains at the initial rate, the last epoch at
initial_lr * (1 / max_epochs) ** 0.9.
"""

from __future__ import annotations

from typing import Any

import torch


def poly_lr(initial_lr: float, epoch: int, max_epochs: int, exponent: float = 0.9) -> float:
    """The learning rate of `epoch` under polynomial decay (the formula in the module docstring).

    Args:
        initial_lr: the rate at epoch 0.
        epoch: the epoch, 0..max_epochs (max_epochs gives 0).
        max_epochs: the number of training epochs, > 0.
        exponent: the decay's exponent; default 0.9.

    Raises:
        ValueError: max_epochs < 1 or an epoch outside 0..max_epochs.
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be at least 1, got {max_epochs}")
    if not 0 <= epoch <= max_epochs:
        raise ValueError(f"epoch must be in [0, {max_epochs}] (max_epochs), got {epoch}")
    return initial_lr * (1 - epoch / max_epochs) ** exponent


class PolyLR:
    """Sets an optimizer's learning rate by `poly_lr`, once per epoch; nnU-Net's `PolyLRScheduler`.

    Creating it sets the rate of epoch 0. `step(epoch)` sets the rate of `epoch` in every parameter
    group; `step()` without an epoch takes the next one of its own count (0, 1, ...), as nnU-Net's
    does.

    Args:
        optimizer: the optimizer whose parameter groups get the rate.
        initial_lr: the rate at epoch 0.
        max_epochs: the number of training epochs.
        exponent: the decay's exponent; default 0.9.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, max_epochs: int, exponent: float = 0.9) -> None:
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be at least 1, got {max_epochs}")
        if initial_lr <= 0:
            raise ValueError(f"initial_lr must be > 0, got {initial_lr}")
        self.optimizer = optimizer
        self.initial_lr = float(initial_lr)
        self.max_epochs = int(max_epochs)
        self.exponent = float(exponent)
        self.counter = 0
        self.last_lr: list[float] = []
        for group in optimizer.param_groups:  # as torch's schedulers record it (nnU-Net's optimizer_state has it)
            group.setdefault("initial_lr", self.initial_lr)
        self.step()

    def step(self, epoch: int | None = None) -> float:
        """Sets the rate of `epoch` (None: the next of its own count) and returns it."""
        if epoch is None:
            epoch = self.counter
            self.counter += 1
        lr = poly_lr(self.initial_lr, epoch, self.max_epochs, self.exponent)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.last_lr = [group["lr"] for group in self.optimizer.param_groups]
        return lr

    def get_last_lr(self) -> list[float]:
        """The rate of each parameter group, as last set."""
        return list(self.last_lr)

    def state_dict(self) -> dict[str, Any]:
        return {"initial_lr": self.initial_lr, "max_epochs": self.max_epochs, "exponent": self.exponent, "counter": self.counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial_lr = float(state["initial_lr"])
        self.max_epochs = int(state["max_epochs"])
        self.exponent = float(state["exponent"])
        self.counter = int(state["counter"])


def make_optimizer(
    network: torch.nn.Module, lr: float = 1e-2, weight_decay: float = 3e-5, momentum: float = 0.99
) -> torch.optim.SGD:
    """nnU-Net's optimizer: SGD with Nesterov momentum over all of the network's parameters.

    Args:
        network: the network to train.
        lr: the initial learning rate; default 1e-2.
        weight_decay: L2 weight decay; default 3e-5.
        momentum: default 0.99.

    Raises:
        ValueError: a negative rate or decay, or a momentum outside (0, 1) (Nesterov needs momentum > 0).
    """
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not 0 < momentum < 1:
        raise ValueError(f"momentum must be in (0, 1) for Nesterov SGD, got {momentum}")
    return torch.optim.SGD(network.parameters(), lr, weight_decay=weight_decay, momentum=momentum, nesterov=True)
