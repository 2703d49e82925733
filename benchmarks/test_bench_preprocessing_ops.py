"""Resampling and normalization: fastseg vs nnunetv2, same process, same inputs.

Run: pytest benchmarks/test_bench_preprocessing_ops.py
Goals (issue "Foundation"): order-3 data resampling >= 30x nnunetv2 with max |diff| <= 1e-3 x range;
segmentation resampling >= 30x with >= 99.9 % equal voxels; normalization >= 50 % of the bandwidth
of a numpy copy of the same array.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastseg.ops import normalize, resample

default_resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
schemes = pytest.importorskip("nnunetv2.preprocessing.normalization.default_normalization_schemes")

RESAMPLE_CASES = [
    pytest.param((1, 120, 256, 256), (240, 205, 205), (2.5, 0.8, 0.8), (1.25, 1.0, 1.0), id="aniso-separate-z"),
    pytest.param((1, 128, 128, 128), (160, 160, 160), (1.0, 1.0, 1.0), (0.8, 0.8, 0.8), id="iso-up"),
]


def smooth_volume(shape, seed=0, noise=5.0):
    """A smooth image (sum of blurred blobs plus mild noise), like an MR/CT volume."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    vol = np.zeros(shape, np.float32)
    for _ in range(8):
        c = rng.uniform(-0.7, 0.7, size=3)
        r = rng.uniform(0.1, 0.4)
        vol += rng.uniform(50, 300) * np.exp(-sum((g - ci) ** 2 for g, ci in zip(grids, c)) / r**2)
    return vol + rng.normal(scale=noise, size=shape).astype(np.float32) if noise else vol


def smooth_labels(shape, n_labels=6, seed=0):
    """Nested, touching organ-like regions: iso-levels of a noise-free smooth field."""
    vol = smooth_volume(shape, seed, noise=0.0)
    edges = np.quantile(vol, np.linspace(0.3, 0.95, n_labels - 1))
    return np.digitize(vol, edges).astype(np.int16)


@pytest.mark.parametrize("shape,new_shape,cur,new", RESAMPLE_CASES)
@pytest.mark.parametrize("impl", ["fastseg", "nnunetv2"])
def test_resample_data(bench, impl, shape, new_shape, cur, new):
    data = smooth_volume(shape[1:])[None]
    kw = dict(is_seg=False, order=3, order_z=0, force_separate_z=None)
    if impl == "fastseg":
        out = bench(lambda: resample(data, new_shape, cur, new, **kw), rounds=10, op="resample order 3", shape=f"{shape}->{new_shape}", dtype="float32", impl=impl)
        ref = default_resampling.resample_data_or_seg_to_shape(data, new_shape, cur, new, **kw)
        err = float(np.abs(out - ref).max())
        assert err <= 1e-3 * float(data.max() - data.min()), err
    else:
        bench(lambda: default_resampling.resample_data_or_seg_to_shape(data, new_shape, cur, new, **kw), rounds=2, op="resample order 3", shape=f"{shape}->{new_shape}", dtype="float32", impl=impl)


@pytest.mark.parametrize("shape,new_shape,cur,new", RESAMPLE_CASES)
@pytest.mark.parametrize("impl", ["fastseg", "nnunetv2"])
def test_resample_seg(bench, impl, shape, new_shape, cur, new):
    seg = smooth_labels(shape[1:])[None]
    kw = dict(is_seg=True, order=1, order_z=0, force_separate_z=None)
    info = dict(op="resample seg order 1, 6 labels", shape=f"{shape}->{new_shape}", dtype="int16", impl=impl)
    if impl == "fastseg":
        out = bench(lambda: resample(seg, new_shape, cur, new, **kw), rounds=10, **info)
        ref = default_resampling.resample_data_or_seg_to_shape(seg, new_shape, cur, new, **kw)
        assert (out == ref).mean() >= 0.999
    else:
        bench(lambda: default_resampling.resample_data_or_seg_to_shape(seg, new_shape, cur, new, **kw), rounds=2, **info)


NORM_SHAPE = (300, 512, 512)
CT_PROPS = {"mean": 50.3, "std": 210.7, "percentile_00_5": -900.0, "percentile_99_5": 1100.0}


@pytest.fixture(scope="module")
def ct_volume():
    rng = np.random.default_rng(0)
    return (rng.normal(size=NORM_SHAPE).astype(np.float32) * 400 + 40)


@pytest.mark.parametrize("scheme", ["CTNormalization", "ZScoreNormalization"])
@pytest.mark.parametrize("impl", ["fastseg", "nnunetv2", "numpy-copy"])
def test_normalize(bench, ct_volume, impl, scheme):
    nbytes = 2 * ct_volume.nbytes  # read the input once, write the output once
    info = dict(op=f"normalize {scheme}", shape=str(NORM_SHAPE), dtype="float32", impl=impl, bytes=nbytes)
    if impl == "fastseg":
        bench(lambda: normalize(ct_volume, scheme, intensity_properties=CT_PROPS), rounds=10, **info)
    elif impl == "nnunetv2":
        # nnU-Net normalizes in place: each round gets a fresh copy, made outside the timing.
        cls = getattr(schemes, scheme)
        bench(lambda img: cls(False, CT_PROPS).run(img), setup=lambda: (ct_volume.copy(),), rounds=3, **info)
    else:
        bench(lambda: ct_volume.copy(), rounds=10, **info)
