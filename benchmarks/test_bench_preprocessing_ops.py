"""Resampling and normalization: fastseg vs nnunetv2, same process, same inputs.

Run from the repository root (the conftest prints op | shape | dtype | fastseg | reference | ratio |
GB/s per thread count at the end):
    pytest benchmarks/test_bench_preprocessing_ops.py -p no:cacheprovider --benchmark-columns=median,rounds
Goals (issue "Foundation"): order-3 data resampling >= 30x nnunetv2 with max |diff| <= 1e-3 x range;
segmentation resampling >= 30x with >= 99.9 % equal voxels; normalization >= 50 % of the bandwidth
of a numpy copy of the same array.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastseg.ops import normalize, resample

# Each benchmark runs at 1 thread and at all cores, both sides pinned alike (benchmarks/conftest.py).
THREAD_SWEEP = True
# Timed rounds, the same for fastseg and the reference (plus one warm-up round each). nnU-Net's
# resampling takes seconds per call, which bounds the resampling rounds.
RESAMPLE_ROUNDS = 3
NORMALIZE_ROUNDS = 5

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


@pytest.fixture(scope="module")
def reference_outputs() -> dict:
    """nnunetv2's outputs, computed once per module (untimed) for the correctness checks."""
    return {}


def _reference(cache: dict, key, fn):
    if key not in cache:
        cache[key] = fn()
    return cache[key]


@pytest.mark.parametrize("shape,new_shape,cur,new", RESAMPLE_CASES)
@pytest.mark.parametrize("impl", ["nnunetv2", "fastseg"])
def test_resample_data(bench, reference_outputs, impl, shape, new_shape, cur, new):
    data = smooth_volume(shape[1:])[None]
    kw = dict(is_seg=False, order=3, order_z=0, force_separate_z=None)
    fns = {
        "fastseg": lambda: resample(data, new_shape, cur, new, **kw),
        "nnunetv2": lambda: default_resampling.resample_data_or_seg_to_shape(data, new_shape, cur, new, **kw),
    }
    nbytes = data.nbytes + int(np.prod(new_shape)) * data.shape[0] * data.itemsize  # input read, output written
    info = dict(op="resample order 3", shape=f"{shape}->{new_shape}", dtype="float32", impl=impl, bytes=nbytes)
    out = bench(fns[impl], rounds=RESAMPLE_ROUNDS, **info)
    ref = _reference(reference_outputs, ("data", shape), fns["nnunetv2"])
    err = float(np.abs(out - ref).max())
    assert err <= 1e-3 * float(data.max() - data.min()), err


@pytest.mark.parametrize("shape,new_shape,cur,new", RESAMPLE_CASES)
@pytest.mark.parametrize("impl", ["nnunetv2", "fastseg"])
def test_resample_seg(bench, reference_outputs, impl, shape, new_shape, cur, new):
    seg = smooth_labels(shape[1:])[None]
    kw = dict(is_seg=True, order=1, order_z=0, force_separate_z=None)
    fns = {
        "fastseg": lambda: resample(seg, new_shape, cur, new, **kw),
        "nnunetv2": lambda: default_resampling.resample_data_or_seg_to_shape(seg, new_shape, cur, new, **kw),
    }
    nbytes = seg.nbytes + int(np.prod(new_shape)) * seg.shape[0] * seg.itemsize  # input read, output written
    info = dict(op="resample seg order 1, 6 labels", shape=f"{shape}->{new_shape}", dtype="int16", impl=impl, bytes=nbytes)
    out = bench(fns[impl], rounds=RESAMPLE_ROUNDS, **info)
    ref = _reference(reference_outputs, ("seg", shape), fns["nnunetv2"])
    assert (out == ref).mean() >= 0.999


NORM_SHAPE = (300, 512, 512)
CT_PROPS = {"mean": 50.3, "std": 210.7, "percentile_00_5": -900.0, "percentile_99_5": 1100.0}


@pytest.fixture(scope="module")
def ct_volume():
    rng = np.random.default_rng(0)
    return (rng.normal(size=NORM_SHAPE).astype(np.float32) * 400 + 40)


@pytest.mark.parametrize("scheme", ["CTNormalization", "ZScoreNormalization"])
@pytest.mark.parametrize("impl", ["nnunetv2", "fastseg", "numpy copy"])
def test_normalize(bench, ct_volume, reference_outputs, impl, scheme):
    """nnU-Net normalizes in place, so every side gets a fresh copy of the volume, made untimed in the
    setup before each round; fastseg returns a new array (its allocation is timed), the numpy copy
    (the bandwidth floor) copies it."""
    cls = getattr(schemes, scheme)
    fns = {
        "fastseg": lambda img: normalize(img, scheme, intensity_properties=CT_PROPS),
        "nnunetv2": lambda img: cls(False, CT_PROPS).run(img),
        "numpy copy": lambda img: img.copy(),
    }
    nbytes = 2 * ct_volume.nbytes  # read the input once, write the output once
    info = dict(op=f"normalize {scheme}", shape=str(NORM_SHAPE), dtype="float32", impl=impl, bytes=nbytes)
    out = bench(fns[impl], setup=lambda: (ct_volume.copy(),), rounds=NORMALIZE_ROUNDS, **info)
    if impl == "fastseg":
        ref = _reference(reference_outputs, ("normalize", scheme), lambda: fns["nnunetv2"](ct_volume.copy()))
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
