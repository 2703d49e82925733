"""Inference kernels side by side with their references, in one process (pytest-benchmark).

Run from the repository root (the conftest prints op | shape | dtype | fastseg | reference | ratio |
GB/s per thread count at the end, and the peak memory of export):

    pytest benchmarks/test_bench_inference.py -p no:cacheprovider --benchmark-columns=median,rounds

Every benchmark runs at 1 thread and at all cores, fastseg and the reference pinned alike, timed with
the same rounds after one warm-up round (benchmarks/conftest.py).

* export: logits ``(14, 120, 200, 200)`` float32 at spacing ``(2.0, 1.28, 1.28)`` to the original
  spacing ``(1, 1, 1)``, i.e. shape ``(240, 256, 256)`` (no separate z: both spacings are below the
  anisotropy threshold, so all three axes are linear). fastseg: ``export_segmentation`` (fused
  resample + argmax). Reference: nnunetv2's ``resample_data_or_seg_to_shape(is_seg=False, order=1,
  order_z=0, force_separate_z=None)`` followed by ``argmax(0)``, what its export does for softmax
  models. Targets: >= 20x faster; peak extra memory <= 1/4 of nnU-Net's. Memory is measured in a
  separate, untimed call of each side: tracemalloc (numpy registers its array allocations with it),
  peak minus what was allocated before; the C++ kernel's own scratch (per-thread row buffers and tap
  tables, ``std::vector``, not traced) is added from its sizes in ``csrc/cpu/inference.cpp``
  (``export_scratch_bytes``) at the pinned thread count.
* accumulate: 8 tiles ``(8, 3, 128, 128, 128)`` float32 (and float16) at nnU-Net's step-0.5 offsets
  into a ``(3, 192, 192, 192)`` accumulator and weight map, with the Gaussian importance map.
  GB/s counts the bytes the operation reads and writes: tiles read, accumulator read + written, weight
  map read + written and importance map read, once per tile
  (``B*V*(C*itemsize + 2*4*C + 2*4 + 4)``, V = tile voxels). References: nnU-Net's accumulation
  statements on torch CPU tensors, and ``np.copyto`` of an array of half that many bytes (a copy
  reads and writes each byte once, so it moves the same total; numpy copies on one thread).
  Target: >= 50% of the copy's GB/s.

The targets are not asserted here (timings on a shared machine are noisy); the table shows the
ratios. Results are checked: export labels agree with nnU-Net's on >= 99.9 % of voxels and its peak
memory is <= 1/4 of nnU-Net's; accumulation matches nnU-Net's statements.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fastseg.ops.accumulate import accumulate_tiles
from fastseg.ops.export import export_segmentation
from fastseg.ops.tiling import gaussian_importance_map, sliding_window_offsets

torch = pytest.importorskip("torch")
nnunet_resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")

# Each benchmark runs at 1 thread and at all cores, both sides pinned alike (benchmarks/conftest.py).
THREAD_SWEEP = True
# Timed rounds, the same for fastseg and the references (plus one warm-up round each). nnU-Net's
# export takes seconds per call, which bounds the export rounds.
EXPORT_ROUNDS = 3
ACCUMULATE_ROUNDS = 7

EXPORT_IN = (14, 120, 200, 200)
EXPORT_OUT = (240, 256, 256)
EXPORT_SPACING = ((2.0, 1.28, 1.28), (1.0, 1.0, 1.0))
TILES = (8, 3, 128, 128, 128)
ACC_IMAGE = (192, 192, 192)


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


@pytest.fixture(scope="module")
def nnunet_export_reference(logits) -> dict:
    """nnU-Net's labels and traced peak memory, from one untimed call (its code is single-threaded)."""
    labels, peak = _traced_peak(lambda: _nnunet_export(logits))
    return {"labels": labels, "peak": peak}


EXPORT_ROW = {
    "op": "export (resample o1 + argmax)",
    "shape": f"{EXPORT_IN}->{EXPORT_OUT}",
    "dtype": "float32",
    "bytes": int(np.prod(EXPORT_IN)) * 4 + int(np.prod(EXPORT_OUT)),  # logits read, uint8 labels written
}


@pytest.mark.parametrize("impl", ["nnunetv2", "fastseg"])
def test_export(bench, threads, logits, nnunet_export_reference, impl):
    fns = {
        "fastseg": lambda: export_segmentation(logits, EXPORT_OUT, *EXPORT_SPACING),
        "nnunetv2": lambda: _nnunet_export(logits),
    }
    bench(fns[impl], rounds=EXPORT_ROUNDS, impl=impl, **EXPORT_ROW)
    ref = nnunet_export_reference
    if impl == "nnunetv2":
        bench.extra_info.update(peak_extra_bytes=ref["peak"])
        return
    # Memory and agreement from a separate, untimed call.
    labels, traced = _traced_peak(fns["fastseg"])
    peak = traced + export_scratch_bytes(EXPORT_IN, EXPORT_OUT, threads)
    agreement = float((labels == ref["labels"]).mean())
    bench.extra_info.update(peak_extra_bytes=peak, traced_bytes=traced, agreement=agreement)
    assert agreement >= 0.999
    assert peak <= ref["peak"] / 4, f"peak {peak} bytes vs nnU-Net's {ref['peak']}"


# --- accumulation -----------------------------------------------------------------------------------


def _accumulation_bytes(dtype) -> int:
    B, C = TILES[:2]
    voxels = int(np.prod(TILES[2:]))
    return B * voxels * (C * np.dtype(dtype).itemsize + 2 * 4 * C + 2 * 4 + 4)


@pytest.fixture(scope="module")
def tile_batch():
    rng = np.random.default_rng(1)
    tiles = rng.standard_normal(TILES, dtype=np.float32)
    offsets = sliding_window_offsets(ACC_IMAGE, TILES[2:], 0.5)
    assert len(offsets) == TILES[0]
    return tiles, offsets, gaussian_importance_map(TILES[2:])


ACC_ROW = {"op": "accumulate tiles (Gaussian, weights)", "shape": f"8x{TILES[1:]} into {(TILES[1], *ACC_IMAGE)}"}


def _torch_accumulate(acc, weights, tiles, offsets, g) -> None:
    """nnU-Net's `prediction *= gaussian; predicted_logits[sl] += prediction; n_predictions[sl[1:]] +=
    gaussian` per tile, on CPU tensors (float16 tiles are promoted to float32 by the product)."""
    for b, o in enumerate(offsets):
        sl = tuple(slice(int(a), int(a) + t) for a, t in zip(o, TILES[2:]))
        prediction = tiles[b] * g
        acc[(slice(None), *sl)] += prediction
        weights[sl] += g


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("impl", ["numpy copy (same bytes)", "torch (nnU-Net's statements)", "fastseg"])
def test_accumulate(bench, tile_batch, impl, dtype):
    nbytes = _accumulation_bytes(dtype)
    tiles, offsets, g = tile_batch
    tiles = tiles.astype(dtype)
    acc = np.zeros((TILES[1], *ACC_IMAGE), np.float32)
    weights = np.zeros(ACC_IMAGE, np.float32)
    if impl == "fastseg":
        fn = lambda: accumulate_tiles(acc, tiles, offsets, weights=weights, importance_map=g)  # noqa: E731
    elif impl.startswith("torch"):
        t_acc, t_weights, t_tiles, t_g = (torch.from_numpy(a) for a in (acc, weights, tiles, g))
        fn = lambda: _torch_accumulate(t_acc, t_weights, t_tiles, offsets, t_g)  # noqa: E731
    else:
        src = np.ones(nbytes // 2 // 4, np.float32)
        dst = np.empty_like(src)
        fn = lambda: np.copyto(dst, src)  # noqa: E731
    bench(fn, rounds=ACCUMULATE_ROUNDS, impl=impl, dtype=np.dtype(dtype).name, bytes=nbytes, **ACC_ROW)
    if impl != "numpy copy (same bytes)":
        # Every round added the same tiles: compare the sums with one pass of nnU-Net's statements.
        calls = bench.extra_info["calls"]  # the warm-up round and the timed rounds
        ref_acc, ref_w = torch.zeros(acc.shape), torch.zeros(weights.shape)
        _torch_accumulate(ref_acc, ref_w, torch.from_numpy(tiles), offsets, torch.from_numpy(g))
        np.testing.assert_allclose(acc, calls * ref_acc.numpy(), rtol=1e-4, atol=1e-4 * calls)
        np.testing.assert_allclose(weights, calls * ref_w.numpy(), rtol=1e-4, atol=1e-4 * calls)
