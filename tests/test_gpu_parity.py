"""CUDA (and compiled Triton) against the C++ CPU path. Runs only where a GPU exists."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import requires_cuda, requires_cuda_kernels, smooth_labels

from fastseg.ops import normalize, resample


RESAMPLE_CASES = [
    pytest.param((1, 20, 31, 17), (33, 20, 40), (1, 1, 1), (1, 1, 1), id="iso"),
    pytest.param((2, 12, 40, 40), (30, 33, 50), (3.5, 1, 1), (1.4, 1.2, 0.8), id="separate-z"),
    pytest.param((1, 1, 57, 43), (1, 29, 80), (1, 1, 1), (1, 2, 0.54), id="2d"),
]


@requires_cuda_kernels
@pytest.mark.parametrize("shape,new_shape,cur,new", RESAMPLE_CASES)
@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_data_cuda_matches_cpu(rng, shape, new_shape, cur, new, order):
    data = rng.normal(size=shape).astype(np.float32) * 50
    cpu = resample(data, new_shape, cur, new, order=order, order_z=1)
    gpu = resample(torch.from_numpy(data).cuda(), new_shape, cur, new, order=order, order_z=1)
    assert gpu.is_cuda and gpu.dtype == torch.float32
    # Both devices compute positions, weights and B-spline coefficients in double and round to float32
    # once per axis pass (csrc/include/fastseg/hd.h); only CUDA's pow() in the prefilter's initial sum
    # of short lines differs, by an ulp or two of double. A few float32 ulps per pass remain: 1e-5 of
    # the range leaves a wide margin over them.
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu, atol=1e-5 * float(np.ptp(data)))


@requires_cuda_kernels
@pytest.mark.parametrize("shape,new_shape,cur,new", RESAMPLE_CASES)
@pytest.mark.parametrize("order,order_z", [(1, 0), (1, 1), (0, 0)])
def test_resample_seg_cuda_matches_cpu(rng, shape, new_shape, cur, new, order, order_z):
    seg = np.stack([smooth_labels(rng, shape[1:], 5) for _ in range(shape[0])])
    cpu = resample(seg, new_shape, cur, new, is_seg=True, order=order, order_z=order_z)
    gpu = resample(torch.from_numpy(seg).cuda(), new_shape, cur, new, is_seg=True, order=order, order_z=order_z)
    np.testing.assert_array_equal(gpu.cpu().numpy(), cpu)


@requires_cuda
@pytest.mark.parametrize("scheme", ["CTNormalization", "ZScoreNormalization", "RescaleTo01Normalization"])
def test_normalize_triton_matches_cpu(rng, scheme):
    img = (rng.normal(size=(17, 64, 65)) * 300).astype(np.float32)
    props = {"mean": 10.0, "std": 250.0, "percentile_00_5": -700.0, "percentile_99_5": 800.0}
    mask = rng.random(img.shape) > 0.3
    cpu = normalize(img, scheme, intensity_properties=props, mask=mask)
    gpu = normalize(torch.from_numpy(img).cuda(), scheme, intensity_properties=props, mask=torch.from_numpy(mask).cuda())
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu, rtol=1e-5, atol=1e-5)
