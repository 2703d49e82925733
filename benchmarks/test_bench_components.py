"""Connected components: fastseg vs cc3d, scipy.ndimage and nnunetv2, same process, same inputs.

Run from the repository root (the conftest prints op | shape | dtype | fastseg | reference | ratio |
GB/s per thread count at the end):
    pytest benchmarks/test_bench_components.py -p no:cacheprovider --benchmark-columns=median,rounds
Goals (issue "Inference kernels", item 4): 26-connected labelling of 256^3 volumes >= 1.0x cc3d's
throughput and >= 10x scipy.ndimage.label's; remove_all_but_largest_component >= 10x nnunetv2's.
Each result is checked against its reference (outside the timing).

Labelling is timed warm and cold at every size. Warm: fastseg's memory cache holds the pages of the
previous call's buffers, as in a loop over volumes of similar size. Cold: the untimed setup before
every call (on every side alike) calls fastseg.ops.release_cached_memory(), so each fastseg call maps
and faults in fresh pages for its buffers and labels, as the first call on a new size does. cc3d and
scipy keep no cache: their cold and warm figures differ only by noise.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastseg.ops import (
    connected_components,
    fill_holes,
    release_cached_memory,
    remove_all_but_largest_component,
)

cc3d = pytest.importorskip("cc3d")
ndimage = pytest.importorskip("scipy.ndimage")
nnunet_pp = pytest.importorskip("nnunetv2.postprocessing.remove_connected_components")

# Each benchmark runs at 1 thread and at all cores, both sides pinned alike (benchmarks/conftest.py).
THREAD_SWEEP = True
# Timed rounds, the same for fastseg and every reference (plus one warm-up round each).
ROUNDS = 5
SLOW_REFERENCE_ROUNDS = 3  # remove_all_but_largest_component: nnU-Net's takes seconds per call

SIZES = [128, 256]  # cube edges of the labelling benchmarks
SIZE = 256  # the other benchmarks
FULL = ndimage.generate_binary_structure(3, 3)
CASES = ["noise 20%", "noise 50%", "label map"]


def noise(density: float, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(0).random((size,) * 3) < density


def smooth_label_map(n_labels: int = 6, blobs: int = 14, size: int = SIZE) -> np.ndarray:
    """Organ-like label map: overlapping balls of labels 1..n_labels-1 on background 0, plus small
    islands of label 1 (the kind of debris nnU-Net's post-processing removes)."""
    rng = np.random.default_rng(1)
    seg = np.zeros((size,) * 3, dtype=np.uint8)
    z, y, x = np.ogrid[:size, :size, :size]
    for _ in range(blobs):
        c = rng.uniform(0, size, 3)
        r = rng.uniform(0.1, 0.3) * size
        seg[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r * r] = rng.integers(1, n_labels)
    seg[rng.random(seg.shape) < 0.001] = 1
    return seg


class Volumes:
    """The benchmark volumes by (case, size), made on first use, and the reference results the
    checks compare with, each computed once (untimed)."""

    def __init__(self):
        self._volumes: dict = {}
        self._references: dict = {}

    def __call__(self, case: str, size: int = SIZE) -> np.ndarray:
        if (case, size) not in self._volumes:
            make = {
                "noise 20%": lambda: noise(0.2, size),
                "noise 50%": lambda: noise(0.5, size),
                "label map": lambda: smooth_label_map(size=size),
            }[case]
            self._volumes[case, size] = make()
        return self._volumes[case, size]

    def reference(self, key, fn):
        """fn's result, computed on first use (untimed) and kept for the other side's check."""
        if key not in self._references:
            self._references[key] = fn()
        return self._references[key]

    def cc3d_labels(self, case: str, size: int = SIZE):
        """cc3d's (labels, n) of the volume, 26-connected."""
        x = self(case, size)
        return self.reference(("cc3d", case, size), lambda: cc3d.connected_components(x, connectivity=26, return_N=True))


@pytest.fixture(scope="module")
def volumes() -> Volumes:
    return Volumes()


def scipy_label(x: np.ndarray):
    """scipy.ndimage.label with 26-connectivity; per value for a label map (scipy labels masks only)."""
    if x.dtype == bool:
        return ndimage.label(x, FULL)
    out = np.zeros(x.shape, dtype=np.int32)
    n = 0
    for value in np.unique(x)[1:]:
        lab, k = ndimage.label(x == value, FULL)
        out[lab > 0] = lab[lab > 0] + n
        n += k
    return out, n


def _labelling(volumes: Volumes, case: str, size: int, impl: str, cold: bool):
    x = volumes(case, size)
    fns = {
        "fastseg": lambda: connected_components(x, 26),
        "cc3d": lambda: cc3d.connected_components(x, connectivity=26, return_N=True),
        "scipy": lambda: scipy_label(x),
    }

    def setup() -> tuple:
        if cold:
            release_cached_memory()
        return ()

    op = f"connected_components 26 {case}" + (" (cold cache)" if cold else "")
    info = {"op": op, "shape": f"{size}^3", "dtype": str(x.dtype), "impl": impl, "bytes": x.nbytes + 4 * x.size}
    return fns[impl], setup, info


def _check_labelling(volumes: Volumes, case: str, size: int, impl: str, result) -> None:
    labels, n = result
    ref_labels, ref_n = volumes.cc3d_labels(case, size)
    assert n == ref_n, f"{impl} found {n} components, cc3d {ref_n}"
    if impl != "scipy":  # cc3d and fastseg both number components by first voxel in raster order
        assert np.array_equal(labels, ref_labels)


@pytest.mark.parametrize("size", SIZES, ids=[f"{s}^3" for s in SIZES])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", ["fastseg", "cc3d", "scipy"])
def test_connected_components_26(bench, volumes, case, size, impl):
    fn, setup, info = _labelling(volumes, case, size, impl, cold=False)
    _check_labelling(volumes, case, size, impl, bench(fn, setup=setup, rounds=ROUNDS, **info))


@pytest.mark.parametrize("size", SIZES, ids=[f"{s}^3" for s in SIZES])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", ["fastseg", "cc3d", "scipy"])
def test_connected_components_26_cold_cache(bench, volumes, case, size, impl):
    """As above, with fastseg's memory cache emptied (untimed) before every call of every side."""
    fn, setup, info = _labelling(volumes, case, size, impl, cold=True)
    _check_labelling(volumes, case, size, impl, bench(fn, setup=setup, rounds=ROUNDS, **info))


@pytest.mark.parametrize("impl", ["fastseg", "cc3d", "scipy"])
def test_connected_components_with_stats(bench, volumes, impl):
    """Labels plus voxel counts and bounding boxes: fastseg gathers them while labelling; cc3d and
    scipy take a second pass over the labels (cc3d.statistics; find_objects + bincount)."""
    x = volumes("noise 20%")

    def scipy_stats():
        labels, n = ndimage.label(x, FULL)
        return labels, ndimage.find_objects(labels), np.bincount(labels.ravel())[1:]

    def cc3d_stats():
        labels = cc3d.connected_components(x, connectivity=26)
        return labels, cc3d.statistics(labels, no_slice_conversion=True)

    def fastseg_stats():
        labels, n, stats = connected_components(x, 26, return_stats=True)
        return labels, stats

    fns = {"fastseg": fastseg_stats, "cc3d": cc3d_stats, "scipy": scipy_stats}
    info = {"op": "connected_components 26 + counts + boxes, noise 20%", "shape": f"{SIZE}^3", "dtype": "bool", "impl": impl}
    out = bench(fns[impl], rounds=ROUNDS, bytes=x.nbytes + 4 * x.size, **info)
    counts = {
        "fastseg": lambda: out[1].counts,
        "cc3d": lambda: out[1]["voxel_counts"][1:],
        "scipy": lambda: out[2],
    }[impl]()
    ref_labels, _ = volumes.cc3d_labels("noise 20%")
    assert np.array_equal(np.sort(counts), np.sort(np.bincount(ref_labels.ravel())[1:]))


@pytest.mark.parametrize("impl", ["nnunetv2", "fastseg"])
def test_remove_all_but_largest(bench, volumes, impl):
    seg = volumes("label map")
    regions = [1, (2, 3)]
    fns = {
        "fastseg": lambda: remove_all_but_largest_component(seg, regions),
        "nnunetv2": lambda: nnunet_pp.remove_all_but_largest_component_from_segmentation(seg, regions),
    }
    info = {"op": "remove_all_but_largest_component [1, (2, 3)]", "shape": f"{SIZE}^3", "dtype": str(seg.dtype), "impl": impl}
    out = bench(fns[impl], rounds=SLOW_REFERENCE_ROUNDS, bytes=2 * seg.nbytes, **info)
    assert np.array_equal(out, volumes.reference("remove_all_but_largest", fns["nnunetv2"]))


@pytest.mark.parametrize("impl", ["scipy", "fastseg"])
def test_fill_holes(bench, volumes, impl):
    mask = volumes("noise 50%")
    fns = {"fastseg": lambda: fill_holes(mask), "scipy": lambda: ndimage.binary_fill_holes(mask)}
    info = {"op": "fill_holes noise 50%", "shape": f"{SIZE}^3", "dtype": "bool", "impl": impl}
    out = bench(fns[impl], rounds=ROUNDS, bytes=2 * mask.nbytes, **info)
    assert np.array_equal(out, volumes.reference("fill_holes", fns["scipy"]))
