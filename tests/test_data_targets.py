"""Deep-supervision targets and region targets against batchgeneratorsv2's transforms (nnU-Net's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

from fastseg.data.targets import deep_supervision_scales, downsample_targets, to_regions


@pytest.mark.parametrize(
    "shape,strides",
    [
        pytest.param((40, 96, 80), [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]], id="3d-aniso"),
        pytest.param((37, 45, 51), [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], id="3d-odd"),
        pytest.param((96, 72), [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]], id="2d"),
    ],
)
def test_deep_supervision_targets_equal_nnunets(shape, strides):
    rng = np.random.default_rng(0)
    seg = torch.from_numpy(rng.integers(0, 5, (2, 1, *shape)).astype(np.int16))
    scales = deep_supervision_scales({"architecture": {"arch_kwargs": {"strides": strides}}})
    expected_scales = list(list(i) for i in 1 / np.cumprod(np.vstack(strides), axis=0))[:-1]
    assert scales == [list(map(float, s)) for s in expected_scales]
    ours = downsample_targets(seg, scales)
    theirs = [DownsampleSegForDSTransform(scales)(segmentation=seg[b])["segmentation"] for b in range(2)]
    assert len(ours) == len(scales)
    for k, level in enumerate(ours):
        expected = torch.stack([t[k] for t in theirs])
        assert level.shape == expected.shape and level.dtype == seg.dtype
        assert torch.equal(level, expected), k
        assert level.is_contiguous()  # strided views (integer factors) are copied once


def test_region_targets_equal_nnunets():
    rng = np.random.default_rng(1)
    seg = torch.from_numpy(rng.integers(0, 5, (3, 1, 6, 7, 8)).astype(np.int16))
    regions = [(1, 2, 3), (2, 3), 3]
    ours = to_regions(seg, regions, ignore_label=4)
    transform = ConvertSegmentationToRegionsTransform(regions=list(regions) + [4], channel_in_seg=0)
    theirs = torch.stack([transform(segmentation=seg[b])["segmentation"] for b in range(3)])
    assert ours.dtype == torch.bool and torch.equal(ours, theirs)


def test_scale_that_does_not_fit_is_named():
    with pytest.raises(ValueError, match="does not fit"):
        downsample_targets(torch.zeros((1, 1, 4, 4), dtype=torch.int16), [[1, 0.5, 0.5]])
