"""Inference kernels side by side with their references, in one process (pytest-benchmark).

Run (2 threads, the machine otherwise idle):

    OMP_NUM_THREADS=2 python -m pytest benchmarks/test_bench_inference.py --benchmark-only \
        -p no:cacheprovider --benchmark-columns=median,min,max,rounds -s

benchmarks/conftest.py prints one ``op | shape | dtype | fastseg | reference | ratio | GB/s`` row per
group at the end (each benchmark records ``op``, ``shape``, ``dtype``, ``impl`` and ``bytes``).

* export: logits ``(14, 120, 200, 200)`` float32 at spacing ``(2.0, 1.28, 1.28)`` to the original
  spacing ``(1, 1, 1)``, i.e. shape ``(240, 256, 256)`` (no separate z: both spacings are below the
  anisotropy threshold, so all three axes are linear). fastseg: ``export_segmentation`` (fused
  resample + argmax). Reference: nnunetv2's ``resample_data_or_seg_to_shape(is_seg=False, order=1,
  order_z=0, force_separate_z=None)`` followed by ``argmax(0)``, what its export does for softmax
  models. Targets: >= 20x faster; peak extra memory <= 1/4 of nnU-Net's. Memory method: tracemalloc
  (numpy registers its array allocations with it) around each call, peak minus what was allocated
  before; the C++ kernel's own scratch (per-thread row buffers and tap tables, ``std::vector``, not
  traced) is added from its sizes in ``csrc/cpu/inference.cpp`` (``export_scratch_bytes``).
* accumulate: 8 tiles ``(8, 3, 128, 128, 128)`` float32 (and float16) at nnU-Net's step-0.5 offsets
  into a ``(3, 192, 192, 192)`` accumulator and weight map, with the Gaussian importance map.
  GB/s counts the bytes the operation reads and writes: tiles read, accumulator read + written, weight
  map read + written and importance map read, once per tile
  (``B*V*(C*itemsize + 2*4*C + 2*4 + 4)``, V = tile voxels). Reference: ``np.copyto`` of an array of
  half that many bytes (a copy reads and writes each byte once, so it moves the same total).
  Target: >= 50% of the copy's GB/s. For context, nnU-Net's two accumulation statements on torch
  CPU tensors (float32) are timed too.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from fastseg import _native
from fastseg.ops.accumulate import accumulate_tiles
from fastseg.ops.export import export_segmentation
from fastseg.ops.tiling import gaussian_importance_map, sliding_window_offsets

torch = pytest.importorskip("torch")
nnunet_resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")

EXPORT_IN = (14, 120, 200, 200)
EXPORT_OUT = (240, 256, 256)
EXPORT_SPACING = ((2.0, 1.28, 1.28), (1.0, 1.0, 1.0))
TILES = (8, 3, 128, 128, 128)
ACC_IMAGE = (192, 192, 192)

# Results shared between the tests of one run: the reference timings the ratios need.
_RESULTS: dict = {}


def _record(benchmark, *, op: str, shape: str, dtype: str, impl: str, nbytes: int | None = None) -> None:
    """The fields benchmarks/conftest.py builds its side-by-side rows from."""
    benchmark.group = f"{op} {shape} {dtype}"
    benchmark.extra_info.update(op=op, shape=shape, dtype=dtype, impl=impl)
    if nbytes is not None:
        benchmark.extra_info["bytes"] = nbytes


def _median(benchmark, fn, rounds: int, warmup: int = 1) -> float:
    """Runs fn under pytest-benchmark and returns its median in seconds (timed here when disabled)."""
    times = []

    def timed():
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=warmup)
    return float(np.median(times[warmup:] if len(times) > warmup else times))


def _traced_peak(fn):
    """(result, peak bytes allocated during fn beyond what was allocated before) by tracemalloc."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - before


def export_scratch_bytes(in_shape, out_shape, threads: int) -> int:
    """Upper bound of the untraced C++ scratch of the CPU export (csrc/cpu/inference.cpp): per thread
    the z-sum rows p0 (<= 2 * kRows input rows), y-sum rows p1 (kRows), one output row, the block's
    running best values and labels (kRows output rows each), row slots; plus the three axes' tap
    tables (kMaxTaps int64 indices + float weights per output index)."""
    k_rows, max_taps = 16, 4
    _, _, _, W = in_shape
    _, _, Wo = out_shape
    per_thread = 4 * (2 * k_rows * W + k_rows * W + Wo + 2 * k_rows * Wo) + 8 * 2 * k_rows + 4 * k_rows * max_taps
    tables = max_taps * (8 + 4) * sum(out_shape)
    return threads * per_thread + tables


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(EXPORT_IN, dtype=np.float32)


def _nnunet_export(x):
    resampled = nnunet_resampling.resample_data_or_seg_to_shape(
        x, EXPORT_OUT, *EXPORT_SPACING, is_seg=False, order=1, order_z=0, force_separate_z=None
    )
    return resampled.argmax(0)


def _reference_export(logits) -> dict:
    if "export" not in _RESULTS:
        start = time.perf_counter()
        labels, peak = _traced_peak(lambda: _nnunet_export(logits))
        _RESULTS["export"] = {"seconds": time.perf_counter() - start, "peak": peak, "labels": labels}
    return _RESULTS["export"]


EXPORT_ROW = {
    "op": "export (resample o1 + argmax)",
    "shape": f"{EXPORT_IN}->{EXPORT_OUT}",
    "dtype": "float32",
    "nbytes": int(np.prod(EXPORT_IN)) * 4 + int(np.prod(EXPORT_OUT)),  # logits read, uint8 labels written
}


def test_export_nnunet(benchmark, logits):
    """One round (it takes seconds); the timed call also records its traced memory peak."""
    _record(benchmark, impl="nnunetv2", **EXPORT_ROW)
    _RESULTS.pop("export", None)
    benchmark.pedantic(lambda: _reference_export(logits), rounds=1, iterations=1)
    benchmark.extra_info.update(peak_extra_bytes=_RESULTS["export"]["peak"])


def test_export_fastseg(benchmark, logits):
    _record(benchmark, impl="fastseg", **EXPORT_ROW)
    ours = _median(benchmark, lambda: export_segmentation(logits, EXPORT_OUT, *EXPORT_SPACING), rounds=5)
    labels, traced = _traced_peak(lambda: export_segmentation(logits, EXPORT_OUT, *EXPORT_SPACING))
    peak = traced + export_scratch_bytes(EXPORT_IN, EXPORT_OUT, _native.cpu().max_threads())
    ref = _reference_export(logits)
    agreement = float((labels == ref["labels"]).mean())
    benchmark.extra_info.update(
        peak_extra_bytes=peak,
        nnunet_peak_extra_bytes=ref["peak"],
        nnunet_seconds=ref["seconds"],
        speedup=ref["seconds"] / ours,
        agreement=agreement,
    )
    print(
        f"\nexport: {ref['seconds'] / ours:.1f}x faster than nnU-Net; peak extra memory: fastseg "
        f"{peak / 2**20:.1f} MiB (traced {traced / 2**20:.1f} + C++ scratch), nnU-Net {ref['peak'] / 2**20:.1f} MiB; "
        f"labels agree on {agreement:.7f}"
    )
    assert agreement >= 0.999
    assert ref["seconds"] / ours >= 20, f"only {ref['seconds'] / ours:.1f}x faster than nnU-Net"
    assert peak <= ref["peak"] / 4, f"peak {peak} bytes vs nnU-Net's {ref['peak']}"


# --- accumulation -----------------------------------------------------------------------------------


def _accumulation_bytes(dtype) -> int:
    B, C = TILES[:2]
    voxels = int(np.prod(TILES[2:]))
    return B * voxels * (C * np.dtype(dtype).itemsize + 2 * 4 * C + 2 * 4 + 4)


def _copy_reference(nbytes: int) -> float:
    key = ("copy", nbytes)
    if key not in _RESULTS:
        src = np.ones(nbytes // 2 // 4, np.float32)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        times = []
        for _ in range(7):
            start = time.perf_counter()
            np.copyto(dst, src)
            times.append(time.perf_counter() - start)
        _RESULTS[key] = float(np.median(times))
    return _RESULTS[key]


@pytest.fixture(scope="module")
def tile_batch():
    rng = np.random.default_rng(1)
    tiles = rng.standard_normal(TILES, dtype=np.float32)
    offsets = sliding_window_offsets(ACC_IMAGE, TILES[2:], 0.5)
    assert len(offsets) == TILES[0]
    return tiles, offsets, gaussian_importance_map(TILES[2:])


ACC_ROW = {"op": "accumulate tiles (Gaussian, weights)", "shape": f"8x{TILES[1:]} into {(TILES[1], *ACC_IMAGE)}"}


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_accumulate_numpy_copy(benchmark, dtype):
    """The bandwidth reference: a copy moving as many bytes as accumulate_tiles reads plus writes."""
    nbytes = _accumulation_bytes(dtype)
    _record(benchmark, impl="numpy copy (same bytes)", dtype=np.dtype(dtype).name, nbytes=nbytes, **ACC_ROW)
    src = np.ones(nbytes // 2 // 4, np.float32)
    dst = np.empty_like(src)
    seconds = _median(benchmark, lambda: np.copyto(dst, src), rounds=7)
    _RESULTS[("copy", nbytes)] = seconds
    benchmark.extra_info["gbs"] = nbytes / seconds / 1e9


def test_accumulate_torch_nnunet_statements(benchmark, tile_batch):
    """nnU-Net's `prediction *= gaussian; predicted_logits[sl] += prediction; n_predictions[sl[1:]] +=
    gaussian` per tile, on float32 CPU tensors (context, not a target)."""
    _record(
        benchmark,
        impl="torch slice-add (nnU-Net's statements)",
        dtype="float32",
        nbytes=_accumulation_bytes(np.float32),
        **ACC_ROW,
    )
    tiles, offsets, g = tile_batch
    acc = torch.zeros((TILES[1], *ACC_IMAGE))
    weights = torch.zeros(ACC_IMAGE)
    t_tiles, t_g = torch.from_numpy(tiles), torch.from_numpy(g)

    def run():
        for b, o in enumerate(offsets):
            sl = tuple(slice(int(a), int(a) + t) for a, t in zip(o, TILES[2:]))
            prediction = t_tiles[b] * t_g
            acc[(slice(None), *sl)] += prediction
            weights[sl] += t_g

    seconds = _median(benchmark, run, rounds=5)
    benchmark.extra_info.update(gbs=_accumulation_bytes(np.float32) / seconds / 1e9)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_accumulate_fastseg(benchmark, tile_batch, dtype):
    nbytes = _accumulation_bytes(dtype)
    _record(benchmark, impl="fastseg", dtype=np.dtype(dtype).name, nbytes=nbytes, **ACC_ROW)
    tiles, offsets, g = tile_batch
    tiles = tiles.astype(dtype)
    acc = np.zeros((TILES[1], *ACC_IMAGE), np.float32)
    weights = np.zeros(ACC_IMAGE, np.float32)
    seconds = _median(
        benchmark, lambda: accumulate_tiles(acc, tiles, offsets, weights=weights, importance_map=g), rounds=7
    )
    gbs = nbytes / seconds / 1e9
    copy_gbs = nbytes / _copy_reference(nbytes) / 1e9
    benchmark.extra_info.update(gbs=gbs, copy_gbs=copy_gbs, fraction_of_copy=gbs / copy_gbs)
    print(
        f"\naccumulate {np.dtype(dtype).name}: {gbs:.1f} GB/s = {gbs / copy_gbs:.0%} of numpy copy ({copy_gbs:.1f} GB/s)"
    )
    assert gbs >= 0.5 * copy_gbs, f"{gbs:.1f} GB/s is below half the copy's {copy_gbs:.1f} GB/s"
