"""fastseg.ops.tiling against nnunetv2's compute_steps_for_sliding_window and compute_gaussian."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers import requires_cuda
from hypothesis import given, settings
from hypothesis import strategies as st
from nnunetv2.inference import sliding_window_prediction as swp

from fastseg.ops.tiling import gaussian_importance_map, sliding_window_offsets, sliding_window_steps


def nnunet_gaussian(tile, sigma_scale=1.0 / 8, value_scaling_factor=10.0, dtype=None):
    """nnU-Net's compute_gaussian on the CPU (uncached: its lru_cache holds only two maps)."""
    dtype = torch.float16 if dtype is None else dtype  # nnU-Net's default
    fn = swp.compute_gaussian.__wrapped__
    return fn(tuple(tile), sigma_scale, value_scaling_factor, dtype=dtype, device=torch.device("cpu")).numpy()


# --- steps ----------------------------------------------------------------------------------------

STEP_CASES = [
    pytest.param((110, 64), (64, 64), 0.5, id="nnunet-docstring-110-64"),
    pytest.param((128, 128, 128), (128, 128, 128), 0.5, id="image-equals-tile"),
    pytest.param((129, 128, 300), (128, 128, 128), 0.5, id="one-voxel-over"),
    pytest.param((512, 512, 300), (80, 192, 160), 0.5, id="ct-like"),
    pytest.param((255, 256, 257), (96, 96, 96), 0.5, id="255-256-257"),
    pytest.param((200, 200), (64, 64), 1.0, id="step-1"),
    pytest.param((200, 201), (64, 63), 0.33, id="step-0.33"),
    pytest.param((50, 77, 31), (7, 9, 31), 0.1, id="step-0.1"),
    pytest.param((1, 1, 1), (1, 1, 1), 0.5, id="one-voxel"),
    pytest.param((97,), (32,), 0.5, id="1d"),
]


@pytest.mark.parametrize("image, tile, step", STEP_CASES)
def test_steps_match_nnunet(image, tile, step):
    assert sliding_window_steps(image, tile, step) == swp.compute_steps_for_sliding_window(image, tile, step)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 400), st.integers(1, 400)), min_size=1, max_size=3),
    step=st.sampled_from([0.5, 0.25, 1.0, 0.3, 0.7, 0.125, 1.0 / 3]),
)
def test_steps_match_nnunet_property(sizes, step):
    image = tuple(max(a, b) for a, b in sizes)
    tile = tuple(min(a, b) for a, b in sizes)
    steps = sliding_window_steps(image, tile, step)
    assert steps == swp.compute_steps_for_sliding_window(image, tile, step)
    for n, t, s in zip(image, tile, steps):
        assert s[0] == 0 and s[-1] == n - t
        assert all(b - a <= t * step + 1 for a, b in itertools.pairwise(s))  # every voxel covered


def test_offsets_follow_nnunet_slicer_order():
    image, tile = (150, 90, 200), (64, 80, 96)
    steps = swp.compute_steps_for_sliding_window(image, tile, 0.5)
    expected = np.array(list(itertools.product(*steps)))  # nnU-Net's loops: sx, sy, sz (last fastest)
    offsets = sliding_window_offsets(image, tile, 0.5)
    assert offsets.dtype == np.int64 and offsets.shape == (len(expected), 3)
    np.testing.assert_array_equal(offsets, expected)


@pytest.mark.parametrize(
    "image, tile, step, match",
    [
        pytest.param((100, 50), (64, 64), 0.5, r"larger than image_size \(100, 50\) along axes \[1\]", id="tile>image"),
        pytest.param((100, 100), (64,), 0.5, "same length", id="length-mismatch"),
        pytest.param((100, 100), (64, 64), 0.0, r"step_size must be in \(0, 1\], got 0.0", id="step-0"),
        pytest.param((100, 100), (64, 64), 1.5, r"got 1.5", id="step-1.5"),
        pytest.param(
            (100, 0), (64, 64), 0.5, r"image_size must hold positive integers, got \(100, 0\)", id="zero-size"
        ),
        pytest.param((100, 100), (64.5, 64), 0.5, "tile_size must hold positive integers", id="fractional"),
    ],
)
def test_steps_reject_bad_arguments(image, tile, step, match):
    with pytest.raises(ValueError, match=match):
        sliding_window_steps(image, tile, step)


# --- Gaussian -------------------------------------------------------------------------------------

GAUSSIAN_TILES = [
    pytest.param((128, 128, 128), id="128^3"),
    pytest.param((64, 96, 80), id="64x96x80"),
    pytest.param((40, 224, 192), id="40x224x192-aniso"),
    pytest.param((5, 7, 3), id="odd-small"),
    pytest.param((1, 1, 1), id="one-voxel"),
    pytest.param((512, 448), id="2d"),
    pytest.param((33,), id="1d"),
]


@pytest.mark.parametrize("tile", GAUSSIAN_TILES)
def test_gaussian_float32_matches_nnunet(tile):
    ours = gaussian_importance_map(tile)
    ref = nnunet_gaussian(tile, dtype=torch.float32)
    assert ours.dtype == np.float32 and ours.shape == tuple(tile)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("tile", GAUSSIAN_TILES)
def test_gaussian_float16_equals_nnunet_default(tile):
    """nnU-Net's default dtype is float16: more corner values underflow there and get clamped."""
    ours = gaussian_importance_map(tile, dtype=np.float16)
    ref = nnunet_gaussian(tile)
    assert ref.dtype == np.float16
    np.testing.assert_array_equal(ours, ref)


def test_gaussian_float32_close_to_nnunet_float16():
    tile = (96, 160, 128)
    ours = gaussian_importance_map(tile)
    ref = nnunet_gaussian(tile).astype(np.float32)
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "sigma_scale, scale, dtype",
    [
        pytest.param(1.0 / 16, 10.0, torch.float32, id="narrow-cutoff-zeros-f32"),
        pytest.param(1.0 / 16, 10.0, torch.float16, id="narrow-cutoff-zeros-f16"),
        pytest.param(1.0 / 8, 1.0, torch.float16, id="nnunet-default-scale-1"),
        pytest.param(1.0 / 4, 1000.0, torch.float32, id="wide"),
    ],
)
def test_gaussian_variants_match_nnunet(sigma_scale, scale, dtype):
    tile = (48, 64, 40)
    np_dtype = np.float16 if dtype == torch.float16 else np.float32
    ours = gaussian_importance_map(tile, sigma_scale=sigma_scale, value_scaling_factor=scale, dtype=np_dtype)
    ref = nnunet_gaussian(tile, sigma_scale, scale, dtype=dtype)
    if dtype == torch.float16:
        np.testing.assert_array_equal(ours, ref)
    else:
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0)


def test_gaussian_clamps_zeros_to_smallest_nonzero():
    # sigma = 1/16 of the tile: scipy's kernel stops at 4 sigma, a quarter tile from the centre.
    g = gaussian_importance_map((64, 64), sigma_scale=1.0 / 16)
    assert g.min() > 0
    assert g[0, 0] == g.min() and np.isclose(g.max(), 10.0, rtol=1e-6)
    assert g[32, 32] == g.max()  # centred on size // 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"tile_size": (0, 4)}, "positive integers", id="zero-size"),
        pytest.param({"tile_size": (4, 4), "sigma_scale": 0.0}, "sigma_scale must be positive", id="sigma-0"),
        pytest.param({"tile_size": (4, 4), "value_scaling_factor": -1.0}, "got -1.0", id="negative-scale"),
        pytest.param({"tile_size": (4, 4), "dtype": np.int32}, "floating-point type, got int32", id="int-dtype"),
    ],
)
def test_gaussian_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gaussian_importance_map(**kwargs)


# --- the sliding window itself (fastseg.predict.sliding) ----------------------------------------------


def _sliding_reference(net, data, patch, step, mirror_axes):
    """A plain numpy sliding window: every tile (and its flips) through `net` one by one, float64 sums;
    like fastseg's, the weights count every output (a tile's copies included), so accumulator /
    weights is the average."""
    from fastseg.predict.sliding import mirror_combinations, tile_offsets

    importance = gaussian_importance_map(patch).astype(np.float64)
    acc = np.zeros((net.out_channels, *data.shape[1:]))
    weights = np.zeros(data.shape[1:])
    combos = mirror_combinations(mirror_axes)
    for a, b, c in tile_offsets(data.shape[1:], patch, step):
        sl = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
        x = torch.from_numpy(np.ascontiguousarray(data[(slice(None), *sl)]))[None]
        with torch.no_grad():
            out = net(x)[0].double()
            for combo in combos:
                dims = tuple(d + 1 for d in combo)
                out += torch.flip(net(torch.flip(x, tuple(d + 1 for d in dims)))[0].double(), dims)
        acc[(slice(None), *sl)] += out.numpy() * importance
        weights[sl] += (1 + len(combos)) * importance
    return acc, weights


@pytest.mark.parametrize("keep_on_device", [False, True], ids=["numpy-accumulator", "tensor-accumulator"])
def test_predict_logits_equals_tile_by_tile_reference(keep_on_device):
    """Batched tiles and mirrored copies, summed by accumulate_tiles into numpy arrays or (the path a
    GPU takes, here with CPU tensors) torch tensors, equal a one-tile-at-a-time float64 reference;
    both paths give the same numbers."""
    from fastseg.predict.sliding import predict_logits

    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    data = np.random.default_rng(0).normal(size=(2, 13, 37, 30)).astype(np.float32)
    patch = (8, 16, 16)
    acc, weights = predict_logits([net], data, patch, 3, mirror_axes=(0, 2), batch_size=5, keep_on_device=keep_on_device)
    assert isinstance(acc, torch.Tensor) == keep_on_device and isinstance(weights, torch.Tensor) == keep_on_device
    ref_acc, ref_weights = _sliding_reference(net, data, patch, 0.5, (0, 2))
    np.testing.assert_allclose(np.asarray(acc), ref_acc, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(weights), ref_weights, rtol=1e-6, atol=1e-6)
    other = predict_logits([net], data, patch, 3, mirror_axes=(0, 2), batch_size=5, keep_on_device=not keep_on_device)
    np.testing.assert_array_equal(np.asarray(acc), np.asarray(other[0]))


def test_predict_logits_pads_small_images_and_cuts_the_padding():
    from fastseg.predict.sliding import predict_logits

    torch.manual_seed(1)
    net = torch.nn.Conv3d(1, 2, 1).eval()
    data = np.random.default_rng(1).normal(size=(1, 5, 20, 9)).astype(np.float32)
    for keep in (False, True):
        acc, weights = predict_logits([net], data, (8, 16, 16), 2, keep_on_device=keep)
        assert tuple(acc.shape) == (2, 5, 20, 9) and tuple(weights.shape) == (5, 20, 9)
        with torch.no_grad():
            expected = net(torch.from_numpy(data)[None])[0].numpy()
        np.testing.assert_allclose(np.asarray(acc) / np.asarray(weights), expected, rtol=1e-5, atol=1e-6)


@requires_cuda
def test_predict_logits_on_cuda_keeps_everything_on_the_device_and_equals_cpu():
    """On a GPU the accumulator and weights stay there (CUDA accumulate_tiles) and equal the CPU's."""
    from fastseg.predict.sliding import predict_logits

    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    data = np.random.default_rng(0).normal(size=(2, 13, 37, 30)).astype(np.float32)
    cpu_acc, cpu_w = predict_logits([net], data, (8, 16, 16), 3, mirror_axes=(0, 1, 2), batch_size=8)
    with torch.backends.cudnn.flags(allow_tf32=False):
        acc, weights = predict_logits([net.cuda()], data, (8, 16, 16), 3, mirror_axes=(0, 1, 2), batch_size=8, device="cuda")
    assert acc.device.type == "cuda" and weights.device.type == "cuda"
    np.testing.assert_allclose(acc.cpu().numpy(), cpu_acc, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(weights.cpu().numpy(), cpu_w, rtol=1e-6, atol=1e-6)
