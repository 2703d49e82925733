"""fastseg.ops.accumulate_tiles / normalize_accumulated against a numpy reference (slices + add, tile by
tile, as nnU-Net's predictor adds), the Triton kernel under the interpreter against the C++ path, and
the CUDA kernels against the C++ path where a GPU exists.

The Triton cases are marked ``triton_interpreter``: unless this session was started with
TRITON_INTERPRET=1, tests/conftest.py runs them in one child process under the interpreter and reports
each case's outcome here (see tests/test_triton_normalize.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import requires_cuda_kernels
from hypothesis import given, settings
from hypothesis import strategies as st

from fastseg.ops.accumulate import accumulate_tiles, normalize_accumulated
from fastseg.ops.tiling import gaussian_importance_map, sliding_window_offsets


def reference(acc, tiles, offsets, weights=None, importance=None):
    """nnU-Net's accumulation, one tile at a time: predicted_logits[sl] += tile * g; n[sl] += g."""
    acc = acc.copy()
    weights = None if weights is None else weights.copy()
    tile = tiles.shape[2:]
    g = np.ones(tile, np.float32) if importance is None else importance.astype(np.float32)
    for b, o in enumerate(offsets):
        sl = tuple(slice(int(a), int(a) + t) for a, t in zip(o, tile))
        acc[(slice(None),) + sl] += tiles[b].astype(np.float32) * g
        if weights is not None:
            weights[sl] += g
    return acc, weights


def random_tiles(rng, batch, channels, tile, dtype):
    return (rng.normal(size=(batch, channels, *tile)) * 4).astype(dtype)


def overlapping_offsets(rng, image, tile, batch):
    """Random offsets inside the image; with few positions per axis most tiles overlap."""
    return np.stack([rng.integers(0, n - t + 1, size=batch) for n, t in zip(image, tile)], axis=1)


CASES = [
    pytest.param((3, 40, 50, 60), (20, 30, 25), 6, id="3d-overlap"),
    pytest.param((2, 17, 33, 29), (17, 33, 29), 3, id="3d-tile-equals-image-stacked"),
    pytest.param((4, 64, 70), (32, 48), 7, id="2d-overlap"),
    pytest.param((1, 9, 255, 257), (1, 128, 129), 5, id="3d-2d-tiles-255-257"),
    pytest.param((5, 30, 31), (1, 31), 4, id="2d-thin"),
]


@pytest.mark.parametrize("image_shape, tile, batch", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("with_importance", [True, False], ids=["gauss", "no-gauss"])
def test_matches_reference(rng, image_shape, tile, batch, dtype, with_importance):
    acc = rng.normal(size=image_shape).astype(np.float32)  # accumulates onto what is there
    weights = rng.random(image_shape[1:]).astype(np.float32)
    tiles = random_tiles(rng, batch, image_shape[0], tile, dtype)
    offsets = overlapping_offsets(rng, image_shape[1:], tile, batch)
    g = gaussian_importance_map(tile) if with_importance else None
    ref_acc, ref_w = reference(acc, tiles, offsets, weights, g)
    accumulate_tiles(acc, tiles, offsets, weights=weights, importance_map=g)
    # Same float32 products; sums of up to `batch` overlapping terms in the same (batch) order.
    np.testing.assert_allclose(acc, ref_acc, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(weights, ref_w, rtol=1e-6, atol=1e-6)


def test_without_weight_map(rng):
    acc = np.zeros((2, 20, 20, 20), np.float32)
    tiles = random_tiles(rng, 4, 2, (10, 12, 8), np.float32)
    offsets = overlapping_offsets(rng, (20, 20, 20), (10, 12, 8), 4)
    accumulate_tiles(acc, tiles, offsets)
    np.testing.assert_allclose(acc, reference(np.zeros_like(acc), tiles, offsets)[0], rtol=1e-6, atol=1e-6)


def test_full_sliding_window_then_normalize(rng):
    """All tiles of nnU-Net's tiling, in batches of 4, then the division: the logits nnU-Net's
    predictor computes (in float32; it accumulates in float16)."""
    image, tile = (50, 61, 47), (24, 32, 40)
    g = gaussian_importance_map(tile)
    offsets = sliding_window_offsets(image, tile, 0.5)
    tiles = random_tiles(rng, len(offsets), 3, tile, np.float32)
    acc = np.zeros((3, *image), np.float32)
    weights = np.zeros(image, np.float32)
    for start in range(0, len(offsets), 4):
        accumulate_tiles(acc, tiles[start : start + 4], offsets[start : start + 4], weights=weights, importance_map=g)
    ref_acc, ref_w = reference(np.zeros_like(acc), tiles, offsets, np.zeros_like(weights), g)
    assert weights.min() > 0  # every voxel covered
    out = normalize_accumulated(acc, weights)
    assert out is acc
    np.testing.assert_allclose(acc, ref_acc / ref_w, rtol=1e-5, atol=1e-6)


def test_normalize_matches_numpy_division(rng):
    acc = rng.normal(size=(3, 33, 17, 129)).astype(np.float32)
    weights = (rng.random((33, 17, 129)) + 0.1).astype(np.float32)
    expected = acc / weights
    normalize_accumulated(acc, weights)
    np.testing.assert_array_equal(acc, expected)
    acc2 = rng.normal(size=(2, 40, 41)).astype(np.float32)
    w2 = (rng.random((40, 41)) + 0.5).astype(np.float32)
    expected2 = acc2 / w2
    normalize_accumulated(torch.from_numpy(acc2), torch.from_numpy(w2))
    np.testing.assert_array_equal(acc2, expected2)


def test_torch_cpu_bfloat16_tiles(rng):
    acc = torch.zeros((2, 30, 40))
    weights = torch.zeros((30, 40))
    tiles32 = torch.from_numpy(random_tiles(rng, 5, 2, (16, 16), np.float32))
    tiles = tiles32.to(torch.bfloat16)
    offsets = torch.from_numpy(overlapping_offsets(rng, (30, 40), (16, 16), 5))
    g = gaussian_importance_map((16, 16))
    accumulate_tiles(acc, tiles, offsets, weights=weights, importance_map=torch.from_numpy(g).to(torch.bfloat16))
    g = torch.from_numpy(g).to(torch.bfloat16).float().numpy()  # what the kernel was given
    ref_acc, ref_w = reference(
        np.zeros((2, 30, 40), np.float32), tiles.float().numpy(), offsets.numpy(), np.zeros((30, 40), np.float32), g
    )
    np.testing.assert_allclose(acc.numpy(), ref_acc, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(weights.numpy(), ref_w, rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    image=st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12)),
    frac=st.tuples(st.floats(0.1, 1), st.floats(0.1, 1), st.floats(0.1, 1)),
    batch=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_one_batch_equals_tile_by_tile(image, frac, batch, seed):
    """Overlapping tiles in one batch give bit for bit what adding them one at a time gives."""
    g_rng = np.random.default_rng(seed)
    tile = tuple(max(1, int(n * f)) for n, f in zip(image, frac))
    tiles = random_tiles(g_rng, batch, 2, tile, np.float32)
    offsets = overlapping_offsets(g_rng, image, tile, batch)
    g = gaussian_importance_map(tile)
    acc_batch, w_batch = np.zeros((2, *image), np.float32), np.zeros(image, np.float32)
    accumulate_tiles(acc_batch, tiles, offsets, weights=w_batch, importance_map=g)
    acc_one, w_one = np.zeros_like(acc_batch), np.zeros_like(w_batch)
    for b in range(batch):
        accumulate_tiles(acc_one, tiles[b : b + 1], offsets[b : b + 1], weights=w_one, importance_map=g)
    np.testing.assert_array_equal(acc_batch, acc_one)
    np.testing.assert_array_equal(w_batch, w_one)


def test_fortran_order_tiles_and_list_offsets(rng):
    tiles = random_tiles(rng, 3, 2, (5, 6, 7), np.float32)
    offsets = [[0, 0, 0], [1, 2, 2], [4, 3, 1]]
    expected, _ = reference(np.zeros((2, 9, 9, 9), np.float32), tiles, np.array(offsets))
    acc = np.zeros((2, 9, 9, 9), np.float32)
    accumulate_tiles(acc, np.asfortranarray(tiles), offsets)
    np.testing.assert_array_equal(acc, expected)
    with pytest.raises(ValueError, match="C-contiguous"):
        accumulate_tiles(np.asfortranarray(acc), tiles, offsets)


def test_empty_batch_is_a_no_op():
    acc = np.ones((2, 8, 8), np.float32)
    accumulate_tiles(acc, np.zeros((0, 2, 4, 4), np.float32), np.zeros((0, 2), np.int64))
    assert (acc == 1).all()


# --- bad input ------------------------------------------------------------------------------------


def _good():
    return {
        "accumulator": np.zeros((2, 20, 20, 20), np.float32),
        "tiles": np.zeros((3, 2, 8, 8, 8), np.float32),
        "offsets": np.array([[0, 0, 0], [4, 4, 4], [12, 12, 12]]),
    }


@pytest.mark.parametrize(
    "change, match",
    [
        pytest.param(
            {"accumulator": np.zeros((2, 20, 20, 20), np.float64)},
            "accumulator must be float32.*float64",
            id="acc-float64",
        ),
        pytest.param(
            {"accumulator": np.zeros((2, 20, 20, 40), np.float32)[..., ::2]}, "C-contiguous", id="acc-strided"
        ),
        pytest.param(
            {"tiles": np.zeros((3, 2, 8, 8, 8), np.int16)},
            "tiles must be float32, float16, got int16",
            id="tiles-int16",
        ),
        pytest.param({"tiles": np.zeros((3, 2, 8, 8, 8), np.float64)}, "got float64", id="tiles-float64"),
        pytest.param(
            {"tiles": np.zeros((3, 3, 8, 8, 8), np.float32)},
            "tiles have 3 channels but the accumulator has 2",
            id="channel-mismatch",
        ),
        pytest.param({"tiles": np.zeros((3, 2, 8, 8), np.float32)}, r"got shape \(3, 2, 8, 8\)", id="tiles-ndim"),
        pytest.param(
            {"offsets": np.array([[0, 0, 0], [4, 4, 4]])},
            r"\(B, 3\) = \(3, 3\).*got \(2, 3\)",
            id="offsets-fewer-than-tiles",
        ),
        pytest.param({"offsets": np.array([[0, 0], [4, 4], [1, 1]])}, r"got \(3, 2\)", id="offsets-2-columns"),
        pytest.param(
            {"offsets": np.array([[0, 0, 0], [4, 4, 4], [12.0, 12, 12]])},
            "integers, got dtype float64",
            id="offsets-float",
        ),
        pytest.param(
            {"offsets": np.array([[0, 0, 0], [4, -1, 4], [12, 12, 12]])},
            r"tile 1 at offset \(4, -1, 4\).*axis 1: offset -1",
            id="offset-negative",
        ),
        pytest.param(
            {"offsets": np.array([[0, 0, 0], [4, 4, 4], [12, 12, 13]])},
            r"tile 2 .* axis 2: offset 13 \+ tile size 8 must lie in \[0, 20\]",
            id="offset-past-end",
        ),
        pytest.param(
            {"tiles": np.zeros((3, 2, 8, 21, 8), np.float32)},
            r"tile \(8, 21, 8\) is larger than the image \(20, 20, 20\) along axes \[1\]",
            id="tile-too-large",
        ),
        pytest.param(
            {"weights": np.zeros((20, 20, 19), np.float32)},
            r"weights must have the image shape.*\(20, 20, 19\)",
            id="weights-shape",
        ),
        pytest.param({"weights": np.zeros((20, 20, 20), np.float16)}, "weights must be float32", id="weights-dtype"),
        pytest.param(
            {"importance_map": np.ones((8, 8, 7), np.float32)},
            r"tile shape \(8, 8, 8\), got \(8, 8, 7\)",
            id="importance-shape",
        ),
        pytest.param(
            {"importance_map": np.ones((8, 8, 8), np.int32)},
            "importance_map must be a float array",
            id="importance-int",
        ),
    ],
)
def test_rejects_bad_input(change, match):
    args = {**_good(), **change}
    acc = args.pop("accumulator")
    with pytest.raises(ValueError, match=match):
        accumulate_tiles(acc, args.pop("tiles"), args.pop("offsets"), **args)
    assert not acc.any()  # checked before anything was added


def test_rejects_non_arrays():
    with pytest.raises(TypeError, match="accumulator must be a numpy array or a torch tensor, got list"):
        accumulate_tiles([[0.0]], np.zeros((1, 1, 1), np.float32), [[0]])


def test_normalize_rejects_bad_input():
    acc = np.zeros((2, 4, 5), np.float32)
    with pytest.raises(ValueError, match=r"weights \(4, 4\) must match the accumulator's spatial shape \(4, 5\)"):
        normalize_accumulated(acc, np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="weights must be float32, got float64"):
        normalize_accumulated(acc, np.ones((4, 5)))
    with pytest.raises(ValueError, match="accumulator must be float32"):
        normalize_accumulated(acc.astype(np.float16), np.ones((4, 5), np.float32))


# --- Triton (interpreter) vs C++ ------------------------------------------------------------------

@pytest.fixture(scope="module")
def ta():
    """The installed Triton kernel module."""
    from fastseg.ops.triton import accumulate

    return accumulate


TRITON_CASES = [
    pytest.param((3, 12, 20, 18), (6, 9, 10), 5, torch.float32, True, True, id="3d-f32"),
    pytest.param((2, 9, 17, 23), (9, 8, 11), 4, torch.float16, True, True, id="3d-f16-full-depth"),
    pytest.param((2, 30, 37), (1, 16, 15), 6, torch.bfloat16, True, True, id="2d-as-3d-bf16"),
    pytest.param((1, 7, 31, 40), (3, 31, 33), 3, torch.float32, False, True, id="no-gauss"),
    pytest.param((2, 10, 10, 10), (4, 4, 4), 8, torch.float32, True, False, id="no-weights"),
]


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("image_shape, tile, batch, dtype, with_importance, with_weights", TRITON_CASES)
def test_triton_matches_cpp(ta, image_shape, tile, batch, dtype, with_importance, with_weights):
    rng = np.random.default_rng(7)
    if len(image_shape) == 3:  # the Triton launcher takes 3 spatial axes, like the kernels
        image_shape = (image_shape[0], 1, *image_shape[1:])
    tiles = torch.from_numpy(random_tiles(rng, batch, image_shape[0], tile, np.float32)).to(dtype)
    offsets = torch.from_numpy(overlapping_offsets(rng, image_shape[1:], tile, batch))
    g = torch.from_numpy(gaussian_importance_map(tile)) if with_importance else None
    start = torch.from_numpy(rng.normal(size=image_shape).astype(np.float32))
    acc_t, acc_c = start.clone(), start.clone()
    w_t = torch.zeros(image_shape[1:]) if with_weights else None
    w_c = torch.zeros(image_shape[1:]) if with_weights else None
    ta.accumulate_tiles(acc_t, w_t, tiles, offsets, g)
    accumulate_tiles(acc_c, tiles, offsets, weights=w_c, importance_map=g)
    # Atomic adds may sum overlapping tiles in another order than the C++ batch order.
    torch.testing.assert_close(acc_t, acc_c, rtol=1e-6, atol=1e-5)
    if with_weights:
        torch.testing.assert_close(w_t, w_c, rtol=1e-6, atol=1e-6)


@pytest.mark.triton_interpreter
def test_triton_rejects_bad_layouts(ta):
    acc = torch.zeros((2, 4, 8, 8))
    tiles = torch.zeros((1, 2, 2, 4, 4))
    offsets = torch.zeros((1, 3), dtype=torch.int64)
    with pytest.raises(ValueError, match="tiles must be float16, bfloat16 or float32, got torch.float64"):
        ta.accumulate_tiles(acc, None, tiles.double(), offsets, None)
    with pytest.raises(ValueError, match="offsets must be int64"):
        ta.accumulate_tiles(acc, None, tiles, offsets.int(), None)
    with pytest.raises(ValueError, match="tiles have 3 channels but the accumulator has 2"):
        ta.accumulate_tiles(acc, None, torch.zeros((1, 3, 2, 4, 4)), offsets, None)


# --- CUDA vs C++ ----------------------------------------------------------------------------------


@requires_cuda_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
def test_cuda_matches_cpp(dtype):
    rng = np.random.default_rng(11)
    image, tile = (3, 40, 50, 60), (20, 30, 25)
    tiles = torch.from_numpy(random_tiles(rng, 6, 3, tile, np.float32)).to(dtype)
    offsets = overlapping_offsets(rng, image[1:], tile, 6)
    g = gaussian_importance_map(tile)
    acc_c, w_c = torch.zeros(image), torch.zeros(image[1:])
    accumulate_tiles(acc_c, tiles, offsets, weights=w_c, importance_map=g)
    acc_g, w_g = torch.zeros(image, device="cuda"), torch.zeros(image[1:], device="cuda")
    accumulate_tiles(acc_g, tiles.cuda(), offsets, weights=w_g, importance_map=torch.from_numpy(g).cuda())
    torch.testing.assert_close(acc_g.cpu(), acc_c, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(w_g.cpu(), w_c, rtol=1e-6, atol=1e-6)
    normalize_accumulated(acc_g, w_g)
    normalize_accumulated(acc_c, w_c)
    torch.testing.assert_close(acc_g.cpu(), acc_c, rtol=1e-5, atol=1e-5)
