"""The spatial augmentation of one 3d_fullres training sample: fastseg's native pass from the case
(fastseg.ops.spatial.affine_patch, what the CPU loader runs) beside DALI's CPU warp_affine (the
pipeline's spatial step, what the CPU loader ran before and the GPU path still runs) and nnU-Net's
batchgeneratorsv2 SpatialTransform, same process, same input and parameters.

    pytest benchmarks/test_bench_spatial.py -p no:cacheprovider --benchmark-columns=median,rounds

The input is the initial patch nnU-Net reads for a 64x160x160 patch (159x257x200, one channel, a
random smooth image and a label map); the transform rotates by (0.3, -0.2, 0.25) rad and scales by
1.15, into the 64x160x160 patch: image trilinear, segmentation nearest (DALI, fastseg) or per-label
bilinear argmax (batchgeneratorsv2). Row "affine_patch+noise" adds nnU-Net's Gaussian noise in the same
pass (DALI: fn.random.normal on the patch). Each result is checked against batchgeneratorsv2's image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastseg.data.augment import DEFAULT_PROBABILITIES, AugmentSpec, build_augmentation_pipeline, run_batches
from fastseg.data.spatial import SpatialDraw, affine_matrix, transform_patch

SpatialTransform = pytest.importorskip("batchgeneratorsv2.transforms.spatial.spatial").SpatialTransform

ROUNDS = 5
INITIAL, PATCH = (159, 257, 200), (64, 160, 160)
ANGLES, SCALE = (0.3, -0.2, 0.25), 1.15


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(0)
    coarse = rng.standard_normal((1, 20, 33, 25)).astype(np.float32)
    data = np.ascontiguousarray(np.kron(coarse, np.ones((1, 8, 8, 8), np.float32))[:, :INITIAL[0], :INITIAL[1], :INITIAL[2]])
    seg = (data > 0.5).astype(np.int16) + (data > 1.5)
    return data, seg


def _reference(data, seg):
    """batchgeneratorsv2's SpatialTransform with the angles pinned (a callable per axis) and the scale."""
    transform = SpatialTransform(PATCH, 0, False, p_rotation=1, rotation=lambda image, dim: ANGLES[dim], p_scaling=1,
                                 scaling=SCALE, p_synchronize_scaling_across_axes=1, border_mode_seg="constant",
                                 padding_value_seg=-1)
    out = transform(image=torch.from_numpy(data), segmentation=torch.from_numpy(seg))
    return out["image"].numpy(), out["segmentation"].numpy()


@pytest.mark.parametrize("impl", ["fastseg", "dali", "batchgeneratorsv2"])
@pytest.mark.parametrize("noise", [False, True], ids=["affine_patch", "affine_patch+noise"])
def test_spatial_transform(bench, threads, sample, impl, noise):
    data, seg = sample
    if impl == "batchgeneratorsv2" and noise:
        pytest.skip("nnU-Net's noise is a separate transform; timed only as the spatial step")
    out = np.empty((1, *PATCH), np.float32)
    seg_out = np.empty((1, *PATCH), np.int16)
    draw = SpatialDraw(affine_matrix(ANGLES, SCALE, 3, False), 0.05 if noise else 0.0, 7)
    if impl == "fastseg":
        def fn():
            transform_patch(data, seg, (0, 0, 0), INITIAL, draw, out, seg_out)
            return out
    elif impl == "dali":
        probabilities = {name: 0.0 for name in DEFAULT_PROBABILITIES}
        probabilities.update(rotation=1.0, scaling=1.0, noise=1.0 if noise else 0.0)
        spec = AugmentSpec(PATCH, (0.0, 0.0), False, (), scaling=(SCALE, SCALE), noise_std=(0.05, 0.05),
                           probabilities=probabilities)
        # the angles are pinned through the range: one per axis is not expressible, so DALI rotates by 0
        # about each axis and scales; the warp's cost does not depend on the angles
        pipe = build_augmentation_pipeline(lambda: ([data], [seg]), spec, 1, num_threads=threads, seed=0)

        def fn():
            return run_batches(pipe)[0][0]
    else:
        def fn():
            return _reference(data, seg)[0]
    info = dict(op="spatial transform" + (" + noise" if noise else ""), shape="159x257x200 -> 64x160x160",
                dtype="float32", impl=impl)
    result = bench(fn, rounds=ROUNDS, bytes=out.nbytes + seg_out.nbytes, **info)
    if impl == "fastseg" and not noise:
        np.testing.assert_allclose(result, _reference(data, seg)[0], atol=2e-4 * np.abs(data).max())
