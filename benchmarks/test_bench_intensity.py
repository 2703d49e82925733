"""The augmentations after the spatial one for one 2d training batch (22 x 160x160, the benchmark
dataset's plans): fastseg's native pass (fastseg.data.intensity, what the CPU loader runs) beside DALI's
CPU graph from the blur on (what the CPU loader ran before and the GPU path still runs) and nnU-Net's
batchgeneratorsv2 transforms (its `get_training_transforms` from the blur to the label removal, per
sample as its augmenter applies them), same process, same input.

    pytest benchmarks/test_bench_intensity.py -p no:cacheprovider --benchmark-columns=median,rounds

Rows "default": nnU-Net's probabilities, each tool drawing its own parameters (the same distributions;
20 rounds, so the draws average out); rows "all": every step drawn for every sample (blur and low
resolution on every channel), the work's upper bound. The input is a smooth random image and a label
map with -1 in a corner (the part of a patch outside the case).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from fastseg.data.augment import DEFAULT_PROBABILITIES, AugmentSpec, build_augmentation_pipeline, run_batches
from fastseg.data.intensity import apply_intensity, draw_intensity
from fastseg.threads import num_threads

bgv2 = pytest.importorskip("batchgeneratorsv2")
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform  # noqa: E402
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform  # noqa: E402
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform  # noqa: E402
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform  # noqa: E402
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform  # noqa: E402
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform  # noqa: E402
from batchgeneratorsv2.transforms.utils.random import RandomTransform  # noqa: E402
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform  # noqa: E402

ROUNDS = 20
BATCH, PATCH = 22, (160, 160)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    coarse = rng.standard_normal((BATCH, 1, 21, 21)).astype(np.float32)
    data = np.ascontiguousarray(np.kron(coarse, np.ones((1, 1, 8, 8), np.float32))[..., :PATCH[0], :PATCH[1]])
    seg = ((data > 0.5).astype(np.int16) + (data > 1.5)).astype(np.int16)
    seg[:, :, :20, :30] = -1
    return data, seg


def _spec(everything: bool) -> AugmentSpec:
    probabilities = None
    if everything:
        probabilities = {name: 1.0 for name in DEFAULT_PROBABILITIES}
        probabilities.update(rotation=0.0, scaling=0.0, noise=0.0)
    return AugmentSpec(PATCH, (-np.pi, np.pi), False, (0, 1), probabilities=probabilities, source_spatial=True)


def _nnunet_transforms(spec: AugmentSpec):
    """nnunetv2's get_training_transforms from the blur to the label removal (2D, no mask), with `spec`'s
    probabilities."""
    p = spec.probability
    return [
        RandomTransform(GaussianBlurTransform((0.5, 1.0), False, False, p("blur_per_channel")), p("blur")),
        RandomTransform(MultiplicativeBrightnessTransform(BGContrast((0.75, 1.25)), False, 1), p("brightness")),
        RandomTransform(ContrastTransform(BGContrast((0.75, 1.25)), True, False, 1), p("contrast")),
        RandomTransform(SimulateLowResolutionTransform((0.5, 1), False, True, None, None,
                                                       p("lowres_per_channel")), p("lowres")),
        RandomTransform(GammaTransform(BGContrast((0.7, 1.5)), 1, False, 1, 1), p("gamma_inverted")),
        RandomTransform(GammaTransform(BGContrast((0.7, 1.5)), 0, False, 1, 1), p("gamma")),
        MirrorTransform((0, 1)),
        RemoveLabelTansform(-1, 0),
    ]


@pytest.mark.parametrize("impl", ["fastseg", "dali", "batchgeneratorsv2"])
@pytest.mark.parametrize("everything", [False, True], ids=["default", "all"])
def test_intensity_augmentations(bench, threads, batch, impl, everything):
    data, seg = batch
    spec = _spec(everything)
    rng = np.random.default_rng(1)
    if impl == "fastseg":
        # as the CPU loader runs it (PatchSampler.sample_transformed_batch): `threads` threads, each a
        # contiguous share of the batch with one kernel thread
        pool = ThreadPoolExecutor(threads)
        bounds = np.linspace(0, BATCH, threads + 1).round().astype(int)

        def setup():
            return data.copy(), seg.copy()

        def fn(d, s):
            draw = draw_intensity(spec, rng, BATCH, 1)

            def share(lo_hi):
                lo, hi = lo_hi
                with num_threads(1):
                    apply_intensity(d[lo:hi], s[lo:hi], draw[lo:hi], spec)

            list(pool.map(share, zip(bounds[:-1], bounds[1:])))
            return d
    elif impl == "dali":
        pipe = build_augmentation_pipeline(lambda: (list(data), list(seg)), dataclasses.replace(spec), BATCH,
                                           num_threads=threads, seed=0)
        setup = None

        def fn():
            return run_batches(pipe)[0]
    else:
        transforms = _nnunet_transforms(spec)  # torch's threads: pinned by the `threads` fixture

        def setup():
            return torch.from_numpy(data.copy()), torch.from_numpy(seg.copy())

        def fn(d, s):
            for b in range(BATCH):
                sample = {"image": d[b], "segmentation": s[b]}
                for t in transforms:
                    sample = t(**sample)
                d[b] = sample["image"]
            return d
    info = dict(op="intensity augmentations, " + ("every step drawn" if everything else "default probabilities"),
                shape=f"{BATCH} x 160x160", dtype="float32", impl=impl)
    result = bench(fn, rounds=ROUNDS, setup=setup, bytes=data.nbytes + seg.nbytes, **info)
    assert tuple(np.asarray(result).shape) == data.shape
