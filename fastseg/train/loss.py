"""nnU-Net v2's training losses, value for value: soft Dice + cross-entropy for label maps, soft Dice +
binary cross-entropy for regions, and the deep-supervision sum over the network's outputs.

The soft Dice of one class c (nnU-Net's `MemoryEfficientSoftDiceLoss`), with p the class's
probabilities, g its one-hot target and m the loss mask (1 where the voxel counts):

    dice_c = (2 * sum(p * g * m) + smooth) / max(sum(g * m) + sum(p * m) + smooth, 1e-8)

summed over the spatial axes per sample and class, or also over the batch (`batch_dice`, set per
configuration by the plans); the loss is minus the mean over the (sample,) class entries. The one-hot
target is made without gradient; only p carries it.

Label maps (`DiceCELoss`, nnU-Net's `DC_and_CE_loss`): softmax probabilities, background left out of
the Dice (do_bg=False), smooth 1e-5, plus the mean cross-entropy. The ignore label's voxels are masked
out of the Dice (their target set to 0, which the mask then removes) and left out of the
cross-entropy (`ignore_index`); a patch that is all ignore label has no cross-entropy term.

Regions (`DiceBCELoss`, nnU-Net's `DC_and_BCE_loss`): sigmoid probabilities, every channel a region,
so the Dice keeps all channels (do_bg=True), plus the mean binary cross-entropy with logits. With an
ignore label the target has one extra last channel, 1 on ignored voxels (as `fastseg.data.targets.
to_regions` makes it): it becomes the mask of both terms and is dropped from the target.

Deep supervision (`DeepSupervisionLoss`, nnU-Net's `DeepSupervisionWrapper`): output i, at 1/2^i of
the resolution per pooled axis, is weighted 1/2^i; the coarsest output's weight is set to 0 (its loss
is not even computed) and the weights are normalized to sum to 1.

The operations run in nnU-Net's order, so values and gradients equal nnunetv2's bit for bit on the
same inputs (tests/test_train_parts.py compares them).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

NONLINEARITIES = ("softmax", "sigmoid", "none")


def _look_up_nonlinearity(name: str) -> str:
    if name in NONLINEARITIES:
        return name
    close = difflib.get_close_matches(str(name), NONLINEARITIES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {name!r}{hint}")


def _one_hot_like(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The float32 one-hot target of the probabilities' shape (B, C, *spatial).

    `target` is a label map (B, 1, *spatial) or (B, *spatial), or already one channel per class
    (B, C, *spatial), which is only converted to float32."""
    if target.ndim != probabilities.ndim:
        target = target.view(target.shape[0], 1, *target.shape[1:])
    if target.shape == probabilities.shape:
        return target.to(torch.float32)
    if target.shape[1] != 1 or target.shape[2:] != probabilities.shape[2:] or target.shape[0] != probabilities.shape[0]:
        raise ValueError(
            f"target of shape {tuple(target.shape)} fits neither a label map (B, 1, *spatial) nor a one-hot "
            f"target for network output of shape {tuple(probabilities.shape)}"
        )
    one_hot = torch.zeros(probabilities.shape, device=probabilities.device, dtype=torch.float32)
    return one_hot.scatter_(1, target.long(), 1)


class MemoryEfficientSoftDiceLoss(nn.Module):
    """Minus the mean soft Dice over classes (and samples), nnU-Net's `MemoryEfficientSoftDiceLoss`.

    Args:
        batch_dice: sum the Dice's terms over the batch too (one Dice per class) instead of one Dice per
            sample and class; nnU-Net takes it from the configuration's `batch_dice`.
        do_bg: keep channel 0 (the background of label maps); default False. Regions keep it.
        smooth: added to the Dice's numerator and denominator; default 1e-5 (nnU-Net's trainer).
        nonlinearity: "softmax" over the channels (default), "sigmoid" per channel, or "none" when the
            input already holds probabilities.

    Forward:
        x: network output (B, C, *spatial), logits unless nonlinearity is "none".
        y: label map (B, 1, *spatial) or (B, *spatial), or one-hot/region target (B, C, *spatial).
        loss_mask: optional (B, 1, *spatial), nonzero where a voxel counts.
    """

    def __init__(self, *, batch_dice: bool, do_bg: bool = False, smooth: float = 1e-5, nonlinearity: str = "softmax") -> None:
        super().__init__()
        self.batch_dice = bool(batch_dice)
        self.do_bg = bool(do_bg)
        self.smooth = float(smooth)
        self.nonlinearity = _look_up_nonlinearity(nonlinearity)

    def forward(self, x: torch.Tensor, y: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.nonlinearity == "softmax":
            x = torch.softmax(x, 1)
        elif self.nonlinearity == "sigmoid":
            x = torch.sigmoid(x)
        axes = tuple(range(2, x.ndim))
        with torch.no_grad():
            truth = _one_hot_like(x, y)
            if not self.do_bg:
                truth = truth[:, 1:]
            if loss_mask is not None:
                truth = truth * loss_mask  # 0/1 factors: the same products as nnU-Net's x * y * mask
            sum_gt = truth.sum(axes, dtype=torch.float32)
        if not self.do_bg:
            x = x[:, 1:]
        intersect = (x * truth).sum(axes, dtype=torch.float32)
        sum_pred = (x if loss_mask is None else x * loss_mask).sum(axes, dtype=torch.float32)
        if self.batch_dice:
            intersect = intersect.sum(0, dtype=torch.float32)
            sum_pred = sum_pred.sum(0, dtype=torch.float32)
            sum_gt = sum_gt.sum(0, dtype=torch.float32)
        dice = (2 * intersect + self.smooth) / (sum_gt + sum_pred + self.smooth).clamp_min(1e-8)
        return -dice.mean()


class DiceCELoss(nn.Module):
    """Soft Dice + cross-entropy for label-map targets, nnU-Net's `DC_and_CE_loss`.

    Args:
        batch_dice: the Dice's `batch_dice` (see `MemoryEfficientSoftDiceLoss`).
        ignore_label: the label whose voxels count in neither term; None: every voxel counts.
        weight_ce: the cross-entropy's weight; default 1.
        weight_dice: the Dice's weight; default 1.
        smooth: the Dice's smoothing term; default 1e-5.

    Forward:
        net_output: logits (B, C, *spatial).
        target: label map (B, 1, *spatial), any integer or float dtype.
    """

    def __init__(
        self,
        *,
        batch_dice: bool,
        ignore_label: int | None = None,
        weight_ce: float = 1.0,
        weight_dice: float = 1.0,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice
        self.dice = MemoryEfficientSoftDiceLoss(batch_dice=batch_dice, do_bg=False, smooth=smooth, nonlinearity="softmax")

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim != net_output.ndim or target.shape[1] != 1:
            raise ValueError(
                f"target must be a label map (B, 1, *spatial) for network output {tuple(net_output.shape)}, "
                f"got shape {tuple(target.shape)}"
            )
        mask = None
        has_voxels = True
        target_dice = target
        if self.ignore_label is not None:
            mask = target != self.ignore_label
            target_dice = torch.where(mask, target, 0)  # any known label will do: the mask removes these voxels
            has_voxels = bool(mask.any())
        dice = self.dice(net_output, target_dice, loss_mask=mask) if self.weight_dice != 0 else 0
        ce = 0
        if self.weight_ce != 0 and has_voxels:
            ce = nn.functional.cross_entropy(
                net_output, target[:, 0].long(), ignore_index=-100 if self.ignore_label is None else self.ignore_label
            )
        return self.weight_ce * ce + self.weight_dice * dice


class DiceBCELoss(nn.Module):
    """Soft Dice + binary cross-entropy for region targets, nnU-Net's `DC_and_BCE_loss`.

    Args:
        batch_dice: the Dice's `batch_dice` (see `MemoryEfficientSoftDiceLoss`).
        use_ignore_label: the target's last channel marks ignored voxels (True where the dataset has an
            ignore label); they count in neither term.
        weight_ce: the binary cross-entropy's weight; default 1.
        weight_dice: the Dice's weight; default 1.
        smooth: the Dice's smoothing term; default 1e-5.

    Forward:
        net_output: logits (B, R, *spatial), one channel per region (no nonlinearity in the network).
        target: region masks (B, R, *spatial), or (B, R + 1, *spatial) with the ignore channel last;
            bool or 0/1 numbers.
    """

    def __init__(
        self,
        *,
        batch_dice: bool,
        use_ignore_label: bool = False,
        weight_ce: float = 1.0,
        weight_dice: float = 1.0,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        self.use_ignore_label = bool(use_ignore_label)
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice
        self.dice = MemoryEfficientSoftDiceLoss(batch_dice=batch_dice, do_bg=True, smooth=smooth, nonlinearity="sigmoid")

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        channels = net_output.shape[1] + (1 if self.use_ignore_label else 0)
        if target.ndim != net_output.ndim or target.shape[1] != channels:
            raise ValueError(
                f"region target must have shape (B, {channels}, *spatial) for network output "
                f"{tuple(net_output.shape)}{' (the ignore channel last)' if self.use_ignore_label else ''}, "
                f"got {tuple(target.shape)}"
            )
        mask = None
        regions = target
        if self.use_ignore_label:
            ignored = target[:, -1:]
            mask = ~ignored if ignored.dtype == torch.bool else (1 - ignored).bool()
            regions = target[:, :-1]
        dice = self.dice(net_output, regions, loss_mask=mask)
        regions = regions.float()
        if mask is None:
            bce = nn.functional.binary_cross_entropy_with_logits(net_output, regions)
        else:
            per_voxel = nn.functional.binary_cross_entropy_with_logits(net_output, regions, reduction="none")
            bce = (per_voxel * mask).sum() / torch.clip(mask.sum(), min=1e-8)
        return self.weight_ce * bce + self.weight_dice * dice


def deep_supervision_weights(num_outputs: int, coarsest_weight: float = 0.0) -> list[float]:
    """nnU-Net's weights of the deep-supervision outputs, full resolution first: 1/2^i, the last
    (coarsest) set to `coarsest_weight` (0: nnU-Net's default), normalized to sum 1; e.g. 4 outputs ->
    [4/7, 2/7, 1/7, 0].

    Raises:
        ValueError: fewer than 2 outputs (the only output would get weight 0).
    """
    if int(num_outputs) < 2:
        raise ValueError(
            f"deep supervision needs at least 2 network outputs (the coarsest gets weight 0), got {num_outputs}; "
            "build the loss without deep supervision instead"
        )
    weights = np.array([1 / (2**i) for i in range(int(num_outputs))])
    weights[-1] = coarsest_weight
    return [float(w) for w in weights / weights.sum()]


class DeepSupervisionLoss(nn.Module):
    """The weighted sum of a loss over the network's outputs at every scale, nnU-Net's
    `DeepSupervisionWrapper`: sum_i weights[i] * loss(outputs[i], targets[i]), terms of weight 0 skipped.

    Args:
        loss: the loss of one output and its target.
        weights: one weight per output, full resolution first (see `deep_supervision_weights`).

    Forward:
        outputs: the network's outputs, a list or tuple of len(weights) tensors.
        targets: the targets at the same scales, a list or tuple of len(weights) tensors.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        weights = tuple(float(w) for w in weights)
        if not any(w != 0 for w in weights):
            raise ValueError(f"at least one deep-supervision weight must be nonzero, got {list(weights)}")
        self.loss = loss
        self.weights = weights

    def forward(self, outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        if not isinstance(outputs, (list, tuple)) or not isinstance(targets, (list, tuple)):
            raise TypeError(
                f"deep supervision takes lists of outputs and targets, got {type(outputs).__name__} and "
                f"{type(targets).__name__} (a network built with deep_supervision=True returns a list)"
            )
        if len(outputs) != len(self.weights) or len(targets) != len(self.weights):
            raise ValueError(
                f"deep supervision expects {len(self.weights)} outputs and targets, got {len(outputs)} outputs and "
                f"{len(targets)} targets"
            )
        total = 0
        for weight, output, target in zip(self.weights, outputs, targets):
            if weight != 0:
                total = total + weight * self.loss(output, target)
        return total


def build_loss(*, regions: bool, batch_dice: bool, ignore_label: int | None, deep_supervision_outputs: int | None,
               coarsest_weight: float = 0.0) -> nn.Module:
    """nnU-Net's training loss for a configuration (its `nnUNetTrainer._build_loss`).

    Args:
        regions: region-based training (dataset.json has `regions_class_order`): Dice + BCE, else Dice + CE.
        batch_dice: the configuration's `batch_dice` from the plans.
        ignore_label: the dataset's ignore label, or None.
        deep_supervision_outputs: the number of network outputs (deep-supervision scales, full
            resolution included), or None for a network without deep supervision.
        coarsest_weight: the coarsest output's weight before normalization (default 0, nnU-Net's;
            nnU-Net uses 1e-6 under DDP, where an unused output's parameters would stop DDP).

    Returns:
        A module called as loss(outputs, targets): with deep supervision, lists of tensors full
        resolution first; without, one tensor each. Label-map targets are (B, 1, *spatial); region
        targets (B, R, *spatial), plus the ignore channel last when there is an ignore label.
    """
    if regions:
        loss: nn.Module = DiceBCELoss(batch_dice=batch_dice, use_ignore_label=ignore_label is not None)
    else:
        loss = DiceCELoss(batch_dice=batch_dice, ignore_label=ignore_label)
    if deep_supervision_outputs is None:
        return loss
    return DeepSupervisionLoss(loss, deep_supervision_weights(deep_supervision_outputs, coarsest_weight))
