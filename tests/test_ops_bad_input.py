"""Inputs at the edges of what fastseg.ops can hold: they must be refused with a ValueError that names
the value, before anything is written or allocated, and never crash the process.

* Tile offsets near the int64 limits (``accumulate_tiles``): ``offset + tile size`` overflows int64,
  so a bounds check written as ``offset + tile <= size`` lets them through and the kernel writes far
  outside the accumulator. Checked through the public op and, bypassing its validation, through the
  compiled bindings of both modules (the second line). The cases first run in a child process, so
  that a kernel writing out of bounds fails the test instead of killing pytest.
* Absurd output shapes (``resample``, ``export_segmentation``): refused up front, naming the shape
  and the bytes, instead of allocating gigabytes on the way to a MemoryError.
* NaN / Inf in the float inputs: ``resample`` and ``export_segmentation`` refuse them alike.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fastseg import _native
from fastseg.ops import accumulate_tiles, export_segmentation, resample

torch = pytest.importorskip("torch")

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# --- accumulate_tiles: offsets near the int64 limits ------------------------------------------------

_IMAGE = (6, 7, 8)  # (D, H, W) of the accumulator
_TILE = (4, 5, 6)  # (d, h, w) of a tile
_CHANNELS = 2


def _bad_offsets(size: int, tile: int) -> list[tuple[str, int]]:
    """Offsets along one axis that put a tile (partly) outside an axis of `size` voxels."""
    return [
        ("int64-max", INT64_MAX),
        ("2^62", 2**62),
        ("sum-is-2^63", 2**63 - tile),  # offset + tile is exactly 2^63: wraps to INT64_MIN
        ("sum-is-int64-max", INT64_MAX - tile),  # the largest offset whose sum does not wrap
        ("int64-min", INT64_MIN),
        ("minus-one", -1),
        ("one-past-the-end", size - tile + 1),
    ]


def _offset_cases(ndim: int) -> list:
    image, tile = _IMAGE[3 - ndim :], _TILE[3 - ndim :]
    cases = []
    for axis in range(ndim):
        for label, value in _bad_offsets(image[axis], tile[axis]):
            offsets = [0] * ndim
            offsets[axis] = value
            cases.append(pytest.param(axis, value, offsets, id=f"{ndim}d-axis{axis}-{label}"))
    return cases


OFFSET_CASES_3D = _offset_cases(3)
OFFSET_CASES_2D = _offset_cases(2)


def _public_op(ndim: int, offsets: list[int]) -> np.ndarray:
    """accumulate_tiles with one tile at `offsets`; returns the accumulator (to check it is untouched)."""
    image, tile = _IMAGE[3 - ndim :], _TILE[3 - ndim :]
    acc = np.zeros((_CHANNELS, *image), np.float32)
    weights = np.zeros(image, np.float32)
    tiles = np.ones((1, _CHANNELS, *tile), np.float32)
    accumulate_tiles(acc, tiles, np.array([offsets], dtype=np.int64), weights=weights)
    return acc


def _cpu_binding(offsets: list[int]) -> None:
    """fastseg._C.accumulate_tiles called directly: 3 spatial axes, no Python validation."""
    acc = np.zeros((_CHANNELS, *_IMAGE), np.float32)
    weights = np.zeros(_IMAGE, np.float32)
    tiles = np.ones((1, _CHANNELS, *_TILE), np.float32)
    importance = np.ones(_TILE, np.float32)
    _native.cpu().accumulate_tiles(acc, weights, tiles, "float32", np.array([offsets], dtype=np.int64), importance)


def _cuda_binding(offsets: list[int]) -> None:
    """fastseg._C_cuda.accumulate_tiles called directly. The offsets are checked on the host before
    any CUDA call, so the pointers (never dereferenced) may be placeholders and no GPU is needed."""
    module = _native.cuda_module()
    fake = 4096  # a non-null placeholder address
    module.accumulate_tiles(
        fake, fake, fake, "float32", list(offsets), fake, fake,
        [_CHANNELS, *_IMAGE], [1, _CHANNELS, *_TILE], 0,
    )  # fmt: skip


def run_offset_sweep() -> int:
    """Every case through every entry point; prints those not refused with a ValueError. Returns
    the number of such cases (the exit status of the child process)."""
    calls = [("op", lambda nd, off: _public_op(nd, off)), ("_C", lambda nd, off: _cpu_binding(off))]
    if _native.cuda_module() is not None:
        calls.append(("_C_cuda", lambda nd, off: _cuda_binding(off)))
    failures = 0
    for ndim, cases in ((3, OFFSET_CASES_3D), (2, OFFSET_CASES_2D)):
        for case in cases:
            _, _, offsets = case.values
            for name, call in calls:
                if name != "op" and ndim == 2:
                    continue  # the bindings take 3 spatial axes
                try:
                    call(ndim, offsets)
                except ValueError:
                    continue
                except Exception as err:  # noqa: BLE001 - reported, not raised
                    print(f"{name} {case.id}: {type(err).__name__}: {err}", flush=True)
                else:
                    print(f"{name} {case.id}: accepted offsets {offsets}", flush=True)
                failures += 1
    return failures


@pytest.fixture(scope="module")
def offsets_do_not_crash(tmp_path_factory):
    """Runs the whole sweep in a child process before any case runs in this one."""
    tests = str(Path(__file__).resolve().parent)
    script = f"import sys; sys.path.insert(0, {tests!r}); import test_ops_bad_input as t; sys.exit(t.run_offset_sweep())"
    # A scratch working directory: `python -c` puts it first on sys.path, and from the repository root
    # that would import the uncompiled source folder instead of the installed fastseg.
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path_factory.mktemp("sweep"), capture_output=True, text=True,
        timeout=300, check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"extreme tile offsets were not all refused with ValueError (child exit status {proc.returncode}; "
            f"a negative status is a signal: the kernel wrote out of bounds):\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
        )


@pytest.mark.parametrize("axis, value, offsets", OFFSET_CASES_3D + OFFSET_CASES_2D)
def test_public_op_refuses_extreme_offsets(offsets_do_not_crash, axis, value, offsets):
    ndim = len(offsets)
    with pytest.raises(ValueError, match=rf"along axis {axis}: offset {value} \+ tile size"):
        _public_op(ndim, offsets)


@pytest.mark.parametrize("axis, value, offsets", OFFSET_CASES_3D)
def test_cpu_binding_refuses_extreme_offsets(offsets_do_not_crash, axis, value, offsets):
    with pytest.raises(ValueError, match=rf"offset {value} of axis {axis} does not fit"):
        _cpu_binding(offsets)


@pytest.mark.skipif(_native.cuda_module() is None, reason="fastseg._C_cuda not compiled (no nvcc at build time)")
@pytest.mark.parametrize("axis, value, offsets", OFFSET_CASES_3D)
def test_cuda_binding_refuses_extreme_offsets(offsets_do_not_crash, axis, value, offsets):
    with pytest.raises(ValueError, match=rf"offset {value} of axis {axis} does not fit"):
        _cuda_binding(offsets)


def test_unsigned_offsets_beyond_int64_are_refused():
    acc = np.zeros((_CHANNELS, *_IMAGE), np.float32)
    tiles = np.ones((1, _CHANNELS, *_TILE), np.float32)
    for value in (2**63, 2**64 - 1):
        with pytest.raises(ValueError, match=rf"offset {value} \+ tile size 4"):
            accumulate_tiles(acc, tiles, np.array([[value, 0, 0]], dtype=np.uint64))
    with pytest.raises(ValueError, match="offsets must hold integers"):
        accumulate_tiles(acc, tiles, [[2**64, 0, 0]])  # beyond uint64: numpy makes it an object array
    assert not acc.any()


def test_tile_at_the_last_valid_offset_is_accepted():
    """The check is exact: the largest offset that fits still fits."""
    acc = _public_op(3, [a - t for a, t in zip(_IMAGE, _TILE)])
    assert acc[:, -_TILE[0] :, -_TILE[1] :, -_TILE[2] :].all() and acc.sum() == _CHANNELS * np.prod(_TILE)


# --- absurd output shapes -------------------------------------------------------------------------

_ABSURD = (10**6, 10**6, 10**6)


def _peak_bytes(call) -> tuple[int, BaseException | None]:
    """Peak of the numpy allocations (traced by tracemalloc) while `call` runs, and what it raised."""
    tracemalloc.start()
    error = None
    try:
        call()
    except BaseException as err:  # noqa: BLE001 - handed back
        error = err
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, error


@pytest.mark.parametrize(
    "data, new_shape, kwargs, expected_bytes",
    [
        pytest.param(np.zeros((1, 4, 4, 4), np.float32), _ABSURD, {}, 4 * 10**18, id="data-3d"),
        pytest.param(np.zeros((2, 4, 4, 4), np.uint8), _ABSURD, {"is_seg": True, "order": 1}, 2 * 10**18, id="seg-uint8"),
        pytest.param(np.zeros((3, 4, 4), np.float32), (10**9, 10**9), {}, 12 * 10**18, id="data-2d"),
        pytest.param(
            np.zeros((1, 4, 4, 4), np.float32), (2**62, 2**62, 2**62), {}, 4 * 2**186, id="bytes-overflow-int64"
        ),
    ],
)
def test_resample_refuses_absurd_new_shape_before_allocating(data, new_shape, kwargs, expected_bytes):
    spacing = (1.0,) * len(new_shape)
    peak, error = _peak_bytes(lambda: resample(data, new_shape, spacing, spacing, **kwargs))
    assert isinstance(error, ValueError), f"expected ValueError, got {error!r}"
    assert str(tuple(new_shape)) in str(error) and f"{expected_bytes:,} bytes" in str(error), str(error)
    assert peak < 1 << 20, f"{peak} bytes allocated before the refusal"


def test_resample_refuses_absurd_new_shape_for_tensors():
    data = torch.zeros((1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"\(1000000, 1000000, 1000000\).*4,000,000,000,000,000,000 bytes"):
        resample(data, _ABSURD, (1, 1, 1), (1, 1, 1))


@pytest.mark.parametrize(
    "return_probabilities, expected_bytes",
    [pytest.param(False, 10**18, id="labels"), pytest.param(True, 10**18 + 3 * 4 * 10**18, id="probabilities")],
)
def test_export_refuses_absurd_new_shape_before_allocating(return_probabilities, expected_bytes):
    logits = np.zeros((3, 4, 4, 4), np.float32)
    peak, error = _peak_bytes(
        lambda: export_segmentation(logits, _ABSURD, (1, 1, 1), (1, 1, 1), return_probabilities=return_probabilities)
    )
    assert isinstance(error, ValueError), f"expected ValueError, got {error!r}"
    assert str(_ABSURD) in str(error) and f"{expected_bytes:,} bytes" in str(error), str(error)
    assert peak < 1 << 20, f"{peak} bytes allocated before the refusal"


def test_sizes_that_fit_are_accepted():
    data = np.ones((1, 3, 3, 3), np.float32)
    assert resample(data, (5, 6, 7), (1, 1, 1), (1, 1, 1)).shape == (1, 5, 6, 7)
    assert export_segmentation(data, (5, 6, 7), (1, 1, 1), (1, 1, 1)).shape == (5, 6, 7)


# --- NaN and Inf: resample and export alike ----------------------------------------------------------


def _with(value, dtype=np.float32, shape=(3, 4, 5, 6)) -> np.ndarray:
    a = np.zeros(shape, dtype)
    a[1, 2, 3, 4] = value
    return a


NONFINITE = [pytest.param(np.nan, id="nan"), pytest.param(np.inf, id="inf"), pytest.param(-np.inf, id="-inf")]


@pytest.mark.parametrize("bad", NONFINITE)
@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda a: a, id="numpy-f32"),
        pytest.param(lambda a: a.astype(np.float16), id="numpy-f16"),
        pytest.param(lambda a: a.astype(np.float64), id="numpy-f64"),
        pytest.param(lambda a: np.asfortranarray(a), id="numpy-fortran"),
        pytest.param(lambda a: torch.from_numpy(a), id="torch-f32"),
        pytest.param(lambda a: torch.from_numpy(a).to(torch.bfloat16), id="torch-bf16"),
    ],
)
def test_export_refuses_nonfinite_logits(bad, convert):
    logits = convert(_with(bad))
    with pytest.raises(ValueError, match="logits contains 1 NaN or infinite values"):
        export_segmentation(logits, (5, 6, 7), (1, 1, 1), (1, 1, 1))


@pytest.mark.parametrize("bad", NONFINITE)
def test_export_refuses_nonfinite_weights(bad):
    weights = _with(bad)[1] + 1
    with pytest.raises(ValueError, match="weights contains 1 NaN or infinite values"):
        export_segmentation(np.zeros((3, 4, 5, 6), np.float32), (5, 6, 7), (1, 1, 1), (1, 1, 1), weights=weights)


@pytest.mark.parametrize("bad", NONFINITE)
@pytest.mark.parametrize("op", ["resample", "export"])
def test_resample_and_export_refuse_nonfinite_alike(bad, op):
    """One check, one message: '<name> contains <n> NaN or infinite values; ...'."""
    a = _with(bad)
    a[0, 0, 0, 0] = bad
    if op == "resample":
        with pytest.raises(ValueError, match="^data contains 2 NaN or infinite values; "):
            resample(a, (5, 6, 7), (1, 1, 1), (1, 1, 1))
    else:
        with pytest.raises(ValueError, match="^logits contains 2 NaN or infinite values; "):
            export_segmentation(a, (5, 6, 7), (1, 1, 1), (1, 1, 1))


def test_float64_beyond_float32_is_refused():
    """Both ops compute in float32: a finite float64 value beyond its range would become Inf."""
    a = _with(1e300, np.float64)
    with pytest.raises(ValueError, match="data contains 1 NaN or infinite values"):
        resample(a, (5, 6, 7), (1, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="logits contains 1 NaN or infinite values"):
        export_segmentation(a, (5, 6, 7), (1, 1, 1), (1, 1, 1))


def test_nonfinite_check_of_the_native_module():
    """The count the ops rely on, per storage type, against numpy."""
    C = _native.cpu()
    rng = np.random.default_rng(3)
    for dtype, name in ((np.float32, "float32"), (np.float16, "float16")):
        a = rng.normal(size=1000).astype(dtype)
        a[rng.choice(1000, 37, replace=False)] = rng.choice([np.nan, np.inf, -np.inf], 37)
        assert C.count_nonfinite(a, name) == 37 == int((~np.isfinite(a)).sum())
    bits = torch.from_numpy(_with(np.nan).ravel()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert C.count_nonfinite(bits, "bfloat16") == 1
    with pytest.raises(ValueError, match="'float8'"):
        C.count_nonfinite(np.zeros(3, np.float32), "float8")
