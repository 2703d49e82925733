"""Triton normalization kernels (fastseg/ops/triton/normalize.py of the installed package) under the
Triton interpreter on CPU tensors, against an independent numpy reference in float64 (statistics) and
float32 (the map), and against the C++ CPU path.

Every test here is marked ``triton_interpreter``: Triton fixes its mode when it is first imported
(``TRITON_INTERPRET=1`` in the environment then), so unless this session was started with that
variable, tests/conftest.py runs these cases in one child process that has it and reports each
case's outcome here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastseg import _native

pytestmark = pytest.mark.triton_interpreter


@pytest.fixture(scope="module")
def tn():
    """The installed kernel module."""
    from fastseg.ops.triton import normalize

    return normalize


# --------------------------------------------------------------------------------------------------
# References (numpy, independent of the kernels' algorithm: plain float64 mean/std over a selection)


def _ref_moments(a: np.ndarray, mask: np.ndarray | None) -> dict:
    v = a.reshape(-1).astype(np.float64)
    finite = np.isfinite(v)
    valid = finite if mask is None else finite & mask.reshape(-1).astype(bool)
    sel = v[valid]
    ref = {"count": int(sel.size), "nonfinite": int((~finite).sum()), "mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
    if sel.size:
        ref.update(mean=sel.mean(), std=sel.std(), min=sel.min(), max=sel.max())
    return ref


def _ref_apply(a, mask, lo, hi, shift, denom, clip) -> tuple[np.ndarray, int]:
    with np.errstate(over="ignore"):
        v = a.astype(np.float32)
    f32 = np.float32
    y = np.where(v < f32(lo), f32(lo), np.where(v > f32(hi), f32(hi), v)) if clip else v
    with np.errstate(invalid="ignore", over="ignore"):
        y = (y - f32(shift)) / f32(denom)
    if mask is not None:
        y = np.where(mask.astype(bool), y, v)
    return y.astype(np.float32), int((~np.isfinite(v)).sum())


def _check_moments(got: dict, ref: dict, dtype: torch.dtype) -> None:
    assert got["count"] == ref["count"]
    assert got["nonfinite"] == ref["nonfinite"]
    assert got["min"] == ref["min"] and got["max"] == ref["max"]
    # float32 block partials for narrow dtypes, float64 for float64/int32/int64.
    rtol = 1e-12 if dtype in (torch.float64, torch.int32, torch.int64) else 2e-6
    scale = abs(ref["mean"]) + ref["std"] + 1e-30
    assert abs(got["mean"] - ref["mean"]) <= rtol * scale, (got["mean"], ref["mean"])
    assert abs(got["std"] - ref["std"]) <= rtol * scale + rtol * ref["std"], (got["std"], ref["std"])


def _random(shape, dtype: torch.dtype, seed: int, loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype.is_floating_point:
        np_dtype = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}[dtype]
        return (rng.standard_normal(shape) * scale + loc).astype(np_dtype)
    info = torch.iinfo(dtype)
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=np_dtype)


_DTYPES = (torch.float16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
ALL_DTYPES = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in _DTYPES]

# --------------------------------------------------------------------------------------------------
# moments


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("masked", [pytest.param(False, id="nomask"), pytest.param(True, id="mask")])
def test_moments_dtypes(tn, dtype, masked):
    a = _random((3, 17, 257), dtype, seed=1, loc=100.0, scale=20.0)
    mask = np.random.default_rng(2).random(a.shape) < 0.3 if masked else None
    got = tn.moments(torch.from_numpy(a), None if mask is None else torch.from_numpy(mask))
    _check_moments(got, _ref_moments(a, mask), dtype)


@pytest.mark.parametrize(
    "n", [pytest.param(n, id=f"n{n}") for n in (1, 2, 127, 128, 129, 255, 256, 4095, 4096, 4097, 8193)]
)
def test_moments_block_boundaries(tn, n):
    a = _random((n,), torch.float32, seed=n, loc=-3.0, scale=7.0)
    mask = np.arange(n) % 3 != 1
    _check_moments(tn.moments(torch.from_numpy(a), None), _ref_moments(a, None), torch.float32)
    _check_moments(tn.moments(torch.from_numpy(a), torch.from_numpy(mask)), _ref_moments(a, mask), torch.float32)


def test_moments_odd_shape_1823x781(tn):
    a = _random((1823, 781), torch.float32, seed=3, loc=1000.0, scale=50.0)
    mask = a > 1010.0
    _check_moments(tn.moments(torch.from_numpy(a), torch.from_numpy(mask)), _ref_moments(a, mask), torch.float32)


@pytest.mark.parametrize(
    "dtype, loc, scale",
    [
        pytest.param(torch.float32, 3.0e4, 1.0, id="f32-3e4+-1"),
        pytest.param(torch.float64, 1.0e9, 1.0e-3, id="f64-1e9+-1e-3"),
    ],
)
def test_moments_far_from_zero(tn, dtype, loc, scale):
    # Variance tiny against the squared mean: a naive sum-of-squares formula cancels catastrophically.
    a = _random((5, 1001), dtype, seed=4, loc=loc, scale=scale)
    _check_moments(tn.moments(torch.from_numpy(a), None), _ref_moments(a, None), dtype)


def test_moments_shift_fallbacks(tn):
    # The first element is NaN and the first 1500 elements are outside the mask: the shift falls back
    # to 0 for data around 1e4, which must not cost accuracy.
    a = _random((6000,), torch.float32, seed=5, loc=1.0e4, scale=2.0)
    a[0] = np.nan
    mask = np.arange(a.size) >= 1500
    got = tn.moments(torch.from_numpy(a), torch.from_numpy(mask))
    _check_moments(got, _ref_moments(a, mask), torch.float32)


def test_moments_nonfinite(tn):
    a = _random((7, 613), torch.float32, seed=6)
    flat = a.reshape(-1)
    flat[[0, 5, 700, 4290]] = np.nan
    flat[[1, 999]] = np.inf
    flat[[2, 3000]] = -np.inf
    mask = np.ones(a.shape, dtype=bool)
    mask.reshape(-1)[[5, 999, 3000, 10, 11]] = False  # non-finite outside the mask still count
    got = tn.moments(torch.from_numpy(a), torch.from_numpy(mask))
    ref = _ref_moments(a, mask)
    assert ref["nonfinite"] == 8
    _check_moments(got, ref, torch.float32)


@pytest.mark.parametrize(
    "values, mask",
    [
        pytest.param([np.nan, np.inf, -np.inf], None, id="all-nonfinite"),
        pytest.param([1.0, 2.0, 3.0], [0, 0, 0], id="all-masked-out"),
        pytest.param([], None, id="empty"),
    ],
)
def test_moments_no_valid_element(tn, values, mask):
    x = torch.tensor(values, dtype=torch.float32)
    m = None if mask is None else torch.tensor(mask, dtype=torch.uint8)
    got = tn.moments(x, m)
    nonfinite = int((~torch.isfinite(x)).sum())
    assert got == {"count": 0, "nonfinite": nonfinite, "mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}


def test_moments_non_contiguous_and_uint8_mask(tn):
    a = _random((40, 33), torch.float64, seed=7, loc=5.0)
    x = torch.from_numpy(a).t()  # F-order view
    mask = torch.from_numpy(np.random.default_rng(8).random((33, 40)) < 0.5)
    ref = _ref_moments(np.ascontiguousarray(a.T), mask.numpy())
    _check_moments(tn.moments(x, mask.to(torch.uint8)), ref, torch.float64)
    _check_moments(tn.moments(x, mask), ref, torch.float64)


# --------------------------------------------------------------------------------------------------
# normalize_apply

# (lo, hi, shift, denom, clip): CT-like clip + z-score, z-score, rescale to [0, 1].
PARAMS = [
    pytest.param((-20.0, 180.0, 101.3, 19.7, True), id="clip"),
    pytest.param((0.0, 0.0, 99.25, 20.125, False), id="zscore"),
    pytest.param((0.0, 0.0, -7.0, 3.0e3, False), id="rescale"),
]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("masked", [pytest.param(False, id="nomask"), pytest.param(True, id="mask")])
@pytest.mark.parametrize("params", PARAMS)
def test_apply_matches_float32_formula(tn, dtype, masked, params):
    a = _random((5, 11, 131), dtype, seed=9, loc=100.0, scale=40.0)
    mask = np.random.default_rng(10).random(a.shape) < 0.6 if masked else None
    out, nonfinite = tn.normalize_apply(torch.from_numpy(a), None if mask is None else torch.from_numpy(mask), *params)
    ref, ref_nonfinite = _ref_apply(a, mask, *params)
    assert out.dtype == torch.float32 and out.shape == a.shape and out.device == torch.device("cpu")
    np.testing.assert_array_equal(out.numpy(), ref)
    assert nonfinite == ref_nonfinite == 0


def test_apply_odd_shape_1823x781(tn):
    a = _random((1823, 781), torch.int16, seed=11)
    mask = a > -5000
    params = (-1000.0, 20000.0, 12.5, 9000.0, True)
    out, nonfinite = tn.normalize_apply(torch.from_numpy(a), torch.from_numpy(mask), *params)
    ref, _ = _ref_apply(a, mask, *params)
    np.testing.assert_array_equal(out.numpy(), ref)
    assert nonfinite == 0


@pytest.mark.parametrize("n", [pytest.param(n, id=f"n{n}") for n in (1, 127, 128, 129, 4095, 4096, 4097)])
def test_apply_block_boundaries(tn, n):
    a = _random((n,), torch.float32, seed=n)
    params = (-0.5, 0.5, 0.25, 0.75, True)
    out, _ = tn.normalize_apply(torch.from_numpy(a), None, *params)
    np.testing.assert_array_equal(out.numpy(), _ref_apply(a, None, *params)[0])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the interpreter's numpy cast
def test_apply_nonfinite(tn):
    a = _random((3, 1000), torch.float64, seed=12)
    flat = a.reshape(-1)
    flat[[0, 17, 2500]] = [np.nan, np.inf, -np.inf]
    flat[[40, 41]] = [1e39, -1e300]  # finite in float64, +-Inf once converted to float32
    mask = np.ones(a.shape, dtype=bool)
    mask.reshape(-1)[[17, 41, 100]] = False
    for clip in (False, True):
        params = (-1.0, 1.0, 0.5, 2.0, clip)
        out, nonfinite = tn.normalize_apply(torch.from_numpy(a), torch.from_numpy(mask), *params)
        ref, ref_nonfinite = _ref_apply(a, mask, *params)
        np.testing.assert_array_equal(out.numpy(), ref)  # NaN positions must agree too
        assert nonfinite == ref_nonfinite == 5


def test_apply_empty_keeps_shape(tn):
    out, nonfinite = tn.normalize_apply(torch.empty((0, 3), dtype=torch.int16), None, 0.0, 0.0, 0.0, 1.0, False)
    assert out.shape == (0, 3) and out.dtype == torch.float32 and nonfinite == 0


def test_apply_non_contiguous(tn):
    a = _random((64, 70), torch.float32, seed=13)
    x = torch.from_numpy(a)[:, ::2]
    out, _ = tn.normalize_apply(x, None, 0.0, 0.0, 0.1, 0.3, False)
    np.testing.assert_array_equal(out.numpy(), _ref_apply(x.numpy(), None, 0.0, 0.0, 0.1, 0.3, False)[0])


# --------------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("op", ["moments", "apply"])
def test_rejects_bad_inputs(tn, op):
    def fn(x, mask):
        return tn.moments(x, mask) if op == "moments" else tn.normalize_apply(x, mask, 0.0, 0.0, 0.0, 1.0, False)

    x = torch.zeros(10)
    with pytest.raises(ValueError, match="9 vs 10"):
        fn(x, torch.ones(9, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool or uint8"):
        fn(x, torch.ones(10, dtype=torch.float32))
    with pytest.raises(TypeError, match="unsupported dtype"):
        fn(torch.zeros(10, dtype=torch.bool), None)
    with pytest.raises(TypeError, match="torch.Tensor"):
        fn(np.zeros(10), None)


# --------------------------------------------------------------------------------------------------
# parity with the C++ CPU path


def test_matches_cpu_extension(tn):
    _C = _native.cpu()
    a = _random((9, 257), torch.float32, seed=14, loc=50.0, scale=10.0)
    a[0, 0] = np.nan
    mask = a > 45.0
    got = tn.moments(torch.from_numpy(a), torch.from_numpy(mask))
    ref = dict(_C.moments(a, mask))
    assert got["count"] == ref["count"] and got["nonfinite"] == ref["nonfinite"]
    assert got["min"] == ref["min"] and got["max"] == ref["max"]
    np.testing.assert_allclose([got["mean"], got["std"]], [ref["mean"], ref["std"]], rtol=1e-6)
    params = (40.0, 60.0, got["mean"], got["std"], True)
    out, nonfinite = tn.normalize_apply(torch.from_numpy(a), torch.from_numpy(mask), *params)
    ref_out, ref_nonfinite = _C.normalize_apply(a, mask, *params)
    np.testing.assert_array_equal(out.numpy(), ref_out)
    assert nonfinite == ref_nonfinite
