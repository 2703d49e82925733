"""fastseg.plan.fingerprint against nnunetv2's DatasetFingerprintExtractor.

In memory: cropping and per-case sampling against nnU-Net's `crop_to_nonzero` and
`collect_foreground_intensities`. On disk: small synthetic datasets (CT-like, multi-channel MR-like,
2D, ignore label) fingerprinted by both, nnU-Net in this process (its pool swapped for a thread pool
and its sample budget lowered to keep the test fast; fastseg gets the same budget).
"""

from __future__ import annotations

import contextlib
import io
import json
import types
from multiprocessing.pool import ThreadPool

import numpy as np
import pytest
from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor as fe
from nnunetv2.preprocessing.cropping import cropping

from fastseg.plan.fingerprint import aggregate, analyze_case, case_order, extract_fingerprint, samples_per_case
from fastseg.plan.intensity import ValueCounts, channel_statistics, draw_samples
from fastseg.ops.crop import crop_to_nonzero, fill_holes


STATS = ("mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5")


def expand(samples) -> np.ndarray:
    if isinstance(samples, ValueCounts):
        return np.repeat(samples.values, samples.counts)
    return np.asarray(samples, dtype=np.float64)


# --- cropping --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_crop_matches_nnunet(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 24, 3))
    data = np.zeros((2,) + shape, np.float32)
    corner = tuple(slice(int(rng.integers(0, s)), None) for s in shape)
    data[(int(seed % 2),) + corner] = rng.random(data[(0,) + corner].shape) > 0.3  # speckle: many holes
    if seed % 4 == 3:
        data[:] = 0  # empty mask: the whole image is kept
    seg = rng.integers(0, 3, (1,) + shape).astype(np.int16)
    got_data, got_seg, got_box = crop_to_nonzero(data, seg)
    ref_data, ref_seg, ref_box = cropping.crop_to_nonzero(data.copy(), seg.astype(np.float32))
    np.testing.assert_array_equal(got_data, ref_data)
    np.testing.assert_array_equal(got_seg, ref_seg)
    assert got_box == [[int(a), int(b)] for a, b in ref_box]
    _, got_seg, _ = crop_to_nonzero(data)
    _, ref_seg, _ = cropping.crop_to_nonzero(data.copy())
    np.testing.assert_array_equal(got_seg, ref_seg)
    assert got_seg.dtype == ref_seg.dtype == np.int8


def test_fill_holes_matches_scipy(rng):
    from scipy.ndimage import binary_fill_holes

    for shape in [(1, 1, 1), (9, 1, 13), (20, 21, 22)]:
        mask = rng.random(shape) > 0.4
        np.testing.assert_array_equal(fill_holes(mask), binary_fill_holes(mask))
    ring = np.ones((5, 7, 7), bool)
    ring[2, 2:5, 2:5] = False
    assert fill_holes(ring).all()


# --- sampling and statistics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("integer", id="integer-counts"),
        pytest.param("float", id="float-counts"),
        pytest.param("nonfinite", id="nan-samples"),
    ],
)
def test_draw_samples_is_randomstate_choice(rng, kind):
    values = rng.normal(0, 300, 5000).astype(np.float32)
    if kind == "integer":
        values = np.round(values)
    values[:10] = values[10:20]  # repeated values: one entry each
    if kind == "nonfinite":
        values[7] = np.nan
    got = draw_samples(values, 20000, np.random.RandomState(1234))
    ref_rng = np.random.RandomState(1234)
    ref = ref_rng.choice(values, 20000, replace=True)
    # Counts unless a sample is not finite (then numpy's own statistics on the samples).
    assert isinstance(got, ValueCounts) == (kind != "nonfinite")
    if isinstance(got, ValueCounts):
        assert np.all(np.diff(got.values) > 0) and np.all(got.counts > 0)  # sorted, distinct
    np.testing.assert_array_equal(np.sort(expand(got)), np.sort(ref.astype(np.float64)))
    # The generator is left where nnU-Net leaves it (the next channel draws the same).
    rng2 = np.random.RandomState(1234)
    draw_samples(values, 20000, rng2)
    assert rng2.randint(0, 1 << 30) == ref_rng.randint(0, 1 << 30)
    assert draw_samples(values[:0], 10, np.random.RandomState(0)) == []


@pytest.mark.parametrize(
    "size,n,draws_before",
    [
        pytest.param(1, 50, 0, id="one-voxel-draws-nothing"),
        pytest.param(2, 1000, 0, id="two"),
        pytest.param(1 << 16, 5000, 3, id="power-of-two"),
        pytest.param((1 << 16) + 1, 5000, 0, id="power-of-two-plus-one-most-rejected"),
        pytest.param(700_001, 3_000_000, 700, id="across-many-twists"),
    ],
)
def test_native_draw_counts_replay_numpy_randint(size, n, draws_before):
    """The native MT19937 replay counts what numpy's legacy `randint` draws, and leaves the
    generator where numpy leaves it (also when the state is mid-block)."""
    from fastseg.plan.intensity import _draw_counts

    ours, ref = np.random.RandomState(1234), np.random.RandomState(1234)
    for g in (ours, ref):
        g.randint(0, 1000, draws_before)
    counts = _draw_counts(size, n, ours)
    expected = np.bincount(ref.randint(0, size, n), minlength=size)
    assert counts.dtype == np.int32 and counts.shape == (size,)
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(ours.randint(0, 1 << 30, 10), ref.randint(0, 1 << 30, 10))


def test_draw_counts_other_bit_generators_use_numpy():
    from fastseg.plan.intensity import _draw_counts

    ours, ref = (np.random.RandomState(np.random.PCG64(5)) for _ in range(2))
    np.testing.assert_array_equal(_draw_counts(300, 2000, ours), np.bincount(ref.randint(0, 300, 2000), minlength=300))
    assert ours.randint(0, 1 << 30) == ref.randint(0, 1 << 30)


@pytest.mark.parametrize("integer", [True, False], ids=["integer", "float"])
@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param((3000, 0, 1, 2500), id="a-case-without-foreground"),  # nnU-Net's samples become float64
        pytest.param((3000, 1, 2500), id="all-with-foreground"),  # float32 samples
    ],
)
def test_channel_statistics_match_numpy(rng, integer, sizes):
    cases, raw = [], []
    for n in sizes:
        values = (rng.normal(40, 300, n)).astype(np.float32)
        if integer:
            values = np.round(values)
        cases.append(draw_samples(values, 1000, np.random.RandomState(1234)))
        raw.append(np.random.RandomState(1234).choice(values, 1000, replace=True) if n else [])
    got = channel_statistics(cases)
    x = np.concatenate(raw)
    p005, median, p995 = np.percentile(x, (0.5, 50.0, 99.5))
    ref = {"mean": np.mean(x), "std": np.std(x), "min": x.min(), "max": x.max(), "median": median, "percentile_00_5": p005, "percentile_99_5": p995}
    for k in ("min", "max", "median", "percentile_00_5", "percentile_99_5"):
        assert got[k] == float(ref[k]), k  # order statistics: exact
    # numpy sums the float32 samples in float32 (pairwise); value counts are summed in float64, so
    # the two differ by float32 rounding (measured up to 1.4e-8 relative).
    assert got["mean"] == pytest.approx(float(ref["mean"]), rel=1e-6)
    assert got["std"] == pytest.approx(float(ref["std"]), rel=1e-6)
    assert list(got) == list(STATS)


def test_order_statistics_of_counts_without_merging(rng):
    from fastseg.plan.intensity import _SortedUnion

    raw = [
        np.array([-3.5, -0.0, 0.0, 0.0, 2.25, 1e30], np.float32),
        np.array([7.0], np.float32),
        np.array([-1e-30, 2.25, 2.25, 5.0], np.float32),
        rng.normal(0, 2, 50).astype(np.float32),
    ]
    parts = [draw_samples(v, 40, np.random.RandomState(i)) for i, v in enumerate(raw)]
    expanded = np.sort(np.concatenate([expand(p) for p in parts]))
    union = _SortedUnion(parts)
    assert union.size == expanded.size
    got = np.array([union.order_statistic(r) for r in range(expanded.size)])
    np.testing.assert_array_equal(got, expanded)


@pytest.mark.parametrize("channels", [1, 3])
def test_analyze_case_matches_nnunet(rng, channels):
    shape = (17, 40, 33)
    data = np.round(rng.normal(100, 50, (channels,) + shape)).astype(np.float32)
    data[:, :3] = 0  # a background slab the crop removes
    seg = np.zeros((1,) + shape, np.int16)
    seg[0, 5:12, 10:30, 8:20] = 1
    seg[0, 0:2, 0:5, 0:5] = 2  # foreground outside the crop: not sampled
    got = analyze_case(data, seg, (2.0, 0.8, 0.8), 500)
    cropped, seg_c, _ = cropping.crop_to_nonzero(data.copy(), seg.astype(np.float32))
    ref_samples, _ = fe.DatasetFingerprintExtractor.collect_foreground_intensities(seg_c, cropped, num_samples=500)
    assert got.shape_after_crop == cropped.shape[1:]
    assert got.relative_size_after_cropping == pytest.approx(np.prod(cropped.shape[1:]) / np.prod(shape))
    for ours, ref in zip(got.samples, ref_samples):
        np.testing.assert_array_equal(np.sort(expand(ours)), np.sort(np.asarray(ref, np.float64)))


def test_fingerprint_errors_say_what_is_wrong(rng):
    data = rng.normal(size=(1, 4, 5, 6)).astype(np.float32)
    empty = analyze_case(data, np.zeros((1, 4, 5, 6), np.int16), (1, 1, 1), 10)
    with pytest.raises(ValueError, match="no case has foreground"):
        aggregate([empty], 1)
    with pytest.raises(ValueError, match="declares 2"):
        aggregate([empty], 2)
    with pytest.raises(ValueError, match="does not match image shape"):
        analyze_case(data, np.zeros((1, 4, 5, 7), np.int16), (1, 1, 1), 10)
    with pytest.raises(ValueError, match="at least one training case"):
        samples_per_case(0)
    assert samples_per_case(7) == int(10e7 // 7)


def test_case_order_follows_nnunet():
    assert case_order({}, ["b", "a", "c"]) == ["a", "b", "c"]
    assert case_order({"dataset": {"c": {}, "a": {}}}, ["a", "c"]) == ["c", "a"]


# --- whole datasets against nnU-Net's extractor ----------------------------------------------------------


def nnunet_fingerprint(tmp_path, monkeypatch, raw_root, name: str, total_samples: float) -> dict:
    monkeypatch.setattr(fe, "nnUNet_raw", str(raw_root))
    monkeypatch.setattr(fe, "nnUNet_preprocessed", str(tmp_path / "nnunet_pre"))
    # Same work, in threads instead of spawned processes (seconds of start-up each).
    monkeypatch.setattr(fe, "multiprocessing", types.SimpleNamespace(get_context=lambda _: types.SimpleNamespace(Pool=ThreadPool)))
    extractor = fe.DatasetFingerprintExtractor(name, num_processes=2)
    extractor.num_foreground_voxels_for_intensitystats = total_samples
    extractor.show_progress_bar = False
    with contextlib.redirect_stdout(io.StringIO()):
        extractor.run(overwrite_existing=True)
    return json.loads((tmp_path / "nnunet_pre" / name / "dataset_fingerprint.json").read_text())


DATASETS = [
    pytest.param({"num_cases": 4, "ct": True, "shape": (20, 48, 40)}, 1, id="ct"),
    pytest.param({"num_cases": 3, "num_channels": 3, "shape": (24, 40, 40)}, 1, id="mr-3-channels"),
    pytest.param({"num_cases": 4, "two_d": True, "shape": (64, 72)}, 1, id="2d-png"),
    pytest.param({"num_cases": 3, "ct": True, "ignore_label": True, "regions": True, "shape": (16, 40, 48)}, 2, id="ignore-regions-2-workers"),
]


@pytest.mark.parametrize("config,workers", DATASETS)
def test_fingerprint_matches_nnunet(tmp_path, monkeypatch, config, workers):
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    name = "Dataset001_Synthetic"
    raw_root = tmp_path / "raw"
    write_synthetic_dataset(raw_root / name, SyntheticConfig(**config), num_processes=1)
    total = 2e5
    ref = nnunet_fingerprint(tmp_path, monkeypatch, raw_root, name, total)
    got = extract_fingerprint(raw_root / name, workers, total_samples=total, progress=False)
    got = json.loads(json.dumps(got))
    assert sorted(got) == sorted(ref)
    assert got["shapes_after_crop"] == ref["shapes_after_crop"]
    np.testing.assert_allclose(got["spacings"], ref["spacings"], rtol=1e-12)
    assert got["median_relative_size_after_cropping"] == pytest.approx(ref["median_relative_size_after_cropping"], rel=1e-12)
    assert list(got["foreground_intensity_properties_per_channel"]) == list(ref["foreground_intensity_properties_per_channel"])
    for c, ref_stats in ref["foreground_intensity_properties_per_channel"].items():
        stats = got["foreground_intensity_properties_per_channel"][c]
        assert sorted(stats) == sorted(ref_stats)
        for k in STATS:
            # nnU-Net's mean/std are float32 numpy reductions: measured at most 8.1e-8 apart, relative.
            assert stats[k] == pytest.approx(ref_stats[k], rel=3e-7, abs=1e-6), (c, k)
