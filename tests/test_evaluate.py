"""`fastseg evaluate` against nnU-Net's `compute_metrics_on_folder`, run here on the same folders."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
from helpers import fastseg_script
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder, load_summary_json
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from fastseg import io as fio
from fastseg.evaluate import confusion_matrix, evaluate_folders, metrics_from_confusion

LABELS = {"background": 0, "organ": 1, "lesion": 2, "vessel": 3}
REGIONS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}


def _case(rng, shape, labels):
    ref = np.zeros(shape, dtype=np.uint8)
    for value in range(1, labels + 1):
        centre = [rng.integers(3, s - 3) for s in shape]
        grid = np.ogrid[tuple(slice(0, s) for s in shape)]
        ref[sum((g - c) ** 2 for g, c in zip(grid, centre)) < rng.integers(4, 30)] = value
    pred = ref.copy()
    flips = rng.random(shape) < 0.03
    pred[flips] = rng.integers(0, labels + 1, int(flips.sum()))
    pred = np.roll(pred, int(rng.integers(-1, 2)), axis=int(rng.integers(0, 3)))
    return ref, pred


def _write_folders(tmp_path, rng, labels, ignore=None, cases=4, empty_class=False):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    for i in range(cases):
        ref, pred = _case(rng, (12, 20, 18), labels)
        if empty_class:
            ref[ref == labels] = 0
            pred[pred == labels] = 0 if i % 2 else pred[pred == labels]  # absent from both in odd cases
        if ignore is not None:
            ref[:2] = ignore
        props = {"spacing": [2.0, 0.8, 0.8]}
        fio.write_seg(ref, ref_dir / f"case_{i:03d}.nii.gz", props)
        fio.write_seg(pred, pred_dir / f"case_{i:03d}.nii.gz", props)
    return pred_dir, ref_dir


def _nnunet(pred_dir, ref_dir, labels_or_regions, ignore, out):
    compute_metrics_on_folder(str(ref_dir), str(pred_dir), str(out), SimpleITKIO(), ".nii.gz", labels_or_regions, ignore, 1)
    return load_summary_json(str(out))


def _assert_same(ours: dict, ref: dict):
    def same(a, b):
        return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)

    assert [c["prediction_file"] for c in ours["metric_per_case"]] == [c["prediction_file"] for c in ref["metric_per_case"]]
    for a, b in zip(ours["metric_per_case"], ref["metric_per_case"]):
        assert set(a["metrics"]) == set(b["metrics"])
        for k in b["metrics"]:
            for m, v in b["metrics"][k].items():
                assert same(a["metrics"][k][m], v), (a["prediction_file"], k, m)
    for k in ref["mean"]:
        for m, v in ref["mean"][k].items():
            assert same(ours["mean"][k][m], v), (k, m)
    for m, v in ref["foreground_mean"].items():
        assert same(ours["foreground_mean"][m], v), m


@pytest.mark.parametrize(
    "labels,ignore,empty_class",
    [
        pytest.param(LABELS, None, False, id="labels"),
        pytest.param(LABELS, None, True, id="labels-absent-in-some-cases"),
        pytest.param({**LABELS, "ignore": 4}, 4, False, id="ignore-label"),
        pytest.param(REGIONS, None, False, id="regions"),
    ],
)
def test_summary_equals_nnunet(tmp_path, rng, labels, ignore, empty_class):
    pred_dir, ref_dir = _write_folders(tmp_path, rng, 3, ignore, empty_class=empty_class)
    dataset_json = {"labels": labels, "file_ending": ".nii.gz"}
    if labels is REGIONS:
        dataset_json["regions_class_order"] = [1, 2, 3]
        scored = [(1, 2, 3), (2, 3), 3]
    else:
        scored = [1, 2, 3]
    ours = evaluate_folders(pred_dir, ref_dir, dataset_json, output=tmp_path / "summary.json", num_processes=2, progress=False)
    ref = _nnunet(pred_dir, ref_dir, scored, ignore, tmp_path / "nnunet.json")
    _assert_same(ours, ref)
    # The file nnU-Net's own loader reads back the same numbers, with the same keys.
    _assert_same(load_summary_json(str(tmp_path / "summary.json")), ref)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert set(written["mean"]) == set(json.loads((tmp_path / "nnunet.json").read_text())["mean"])


def test_confusion_matrix_counts_by_hand():
    ref = np.array([[0, 1, 1], [2, 2, 0]])
    pred = np.array([[0, 1, 2], [2, 0, 0]])
    counts = confusion_matrix(ref, pred, 3)
    assert counts.tolist() == [[2, 0, 0], [0, 1, 1], [1, 0, 1]]
    m = metrics_from_confusion(counts, [1, 2, (1, 2)])
    assert (m[1]["TP"], m[1]["FP"], m[1]["FN"], m[1]["TN"]) == (1, 0, 1, 4)
    assert (m[2]["TP"], m[2]["FP"], m[2]["FN"], m[2]["TN"]) == (1, 1, 1, 3)
    assert m[(1, 2)]["TP"] == 3 and m[(1, 2)]["FN"] == 1 and m[(1, 2)]["FP"] == 0
    assert m[1]["Dice"] == pytest.approx(2 / 3)
    # The native pass equals numpy's histogram on every integer type, large maps included.
    rng = np.random.default_rng(5)
    for dtype in (np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64):
        a, b = (rng.integers(0, 6, (7, 50, 61)).astype(dtype) for _ in range(2))
        expected = np.bincount(a.astype(np.int64).ravel() * 6 + b.ravel(), minlength=36).reshape(6, 6)
        np.testing.assert_array_equal(confusion_matrix(a, b, 6), expected)
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(np.zeros(3, int), np.zeros(4, int), 3)
    # Label 3 is absent from both: NaN, as nnU-Net.
    assert math.isnan(metrics_from_confusion(np.zeros((4, 4), int), [3])[3]["Dice"])


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 130, 4099, 200_003])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_confusion_matrix_on_runs_with_sparse_changes(n, dtype, threads):
    # Long runs with a few differing voxels at every position in a block: the block scan's
    # uniform blocks, its differing bytes and the tail all count; labels outside 0..5 (negative ones
    # too) are reported, not counted.
    from fastseg._native import cpu
    from fastseg.threads import num_threads

    rng = np.random.default_rng(n)
    a = np.repeat(rng.integers(0, 6, n // 50 + 1), 50)[:n].astype(dtype)
    b = a.copy()
    changed = rng.random(n) < 0.02
    b[changed] = rng.integers(0, 6, int(changed.sum()))
    if n > 10 and np.issubdtype(dtype, np.signedinteger):
        a[rng.integers(0, n, 3)] = -1
    if n > 10:
        b[rng.integers(0, n, 2)] = 9
    inside = (a >= 0) & (a < 6) & (b >= 0) & (b < 6)
    expected = np.bincount(a[inside].astype(np.int64) * 6 + b[inside], minlength=36).reshape(6, 6)
    with num_threads(threads):
        counts, outside = cpu().confusion_matrix(a, b, 6)
    np.testing.assert_array_equal(counts, expected)
    assert outside == int((~inside).sum())


def test_bad_input_is_named_and_nothing_written(tmp_path, rng):
    pred_dir, ref_dir = _write_folders(tmp_path, rng, 3, cases=3)
    dataset_json = {"labels": LABELS, "file_ending": ".nii.gz"}
    out = tmp_path / "summary.json"
    (ref_dir / "case_000.nii.gz").rename(ref_dir / "case_099.nii.gz")
    with pytest.raises(ValueError, match="case_000.nii.gz.*case_099.nii.gz"):
        evaluate_folders(pred_dir, ref_dir, dataset_json, output=out, num_processes=1)
    (ref_dir / "case_099.nii.gz").rename(ref_dir / "case_000.nii.gz")
    fio.write_seg(np.zeros((12, 20, 18), np.uint8), pred_dir / "case_001.nii.gz", {"spacing": [3.0, 0.8, 0.8]})
    with pytest.raises(ValueError, match="case_001.nii.gz has spacing"):
        evaluate_folders(pred_dir, ref_dir, dataset_json, output=out, num_processes=1)
    fio.write_seg(np.zeros((12, 20, 17), np.uint8), pred_dir / "case_001.nii.gz", {"spacing": [2.0, 0.8, 0.8]})
    with pytest.raises(ValueError, match="case_001.nii.gz has shape"):
        evaluate_folders(pred_dir, ref_dir, dataset_json, output=out, num_processes=1)
    fio.write_seg(np.full((12, 20, 18), 7, np.uint8), pred_dir / "case_001.nii.gz", {"spacing": [2.0, 0.8, 0.8]})
    with pytest.raises(ValueError, match="outside 0..3"):
        evaluate_folders(pred_dir, ref_dir, dataset_json, output=out, num_processes=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no .nii.gz predictions"):
        evaluate_folders(empty, ref_dir, dataset_json, output=out, num_processes=1)
    assert not out.exists()


def test_cli_prints_the_table_and_writes_summary(tmp_path, rng):
    pred_dir, ref_dir = _write_folders(tmp_path, rng, 3, cases=2)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    run = subprocess.run(
        [fastseg_script(), "evaluate", str(pred_dir), str(ref_dir), "--dataset-json", str(tmp_path / "dataset.json"), "-j", "1"],
        capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "organ (1)" in run.stdout and "foreground mean" in run.stdout
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 2
    run = subprocess.run(
        [fastseg_script(), "evaluate", str(pred_dir), str(ref_dir), "--dataset-json", str(tmp_path / "dataset.json"), "-j", "1",
         "--nsd-tolerance-mm", "1.5", "-o", str(tmp_path / "with_surface.json")],
        capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300,
    )
    assert run.returncode == 0 and "HD95" in run.stdout and "NSD" in run.stdout, run.stdout + run.stderr
    assert "NSD" in json.loads((tmp_path / "with_surface.json").read_text())["mean"]["1"]
    run = subprocess.run(
        [fastseg_script(), "evaluate", str(pred_dir), str(ref_dir), "--dataset-json", str(tmp_path / "nope.json")],
        capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300,
    )
    assert run.returncode == 1 and "nope.json not found" in run.stderr and "Traceback" not in run.stderr


# --- surface distances (fastseg.evaluate.surface) ------------------------------------------------------


def _brute_force(ref, pred, spacing, tol):
    """All border points, all pairwise distances (numpy), nearest per point."""
    from fastseg.evaluate.surface import border

    pts_ref = np.argwhere(border(ref)) * np.asarray(spacing)
    pts_pred = np.argwhere(border(pred)) * np.asarray(spacing)
    d = np.sqrt(((pts_pred[:, None, :] - pts_ref[None, :, :]) ** 2).sum(-1))
    a, b = d.min(axis=1), d.min(axis=0)
    return {
        "HD95": max(np.percentile(a, 95), np.percentile(b, 95)),
        "ASSD": np.concatenate([a, b]).mean(),
        "NSD": ((a <= tol).sum() + (b <= tol).sum()) / (a.size + b.size),
    }


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.7, 0.9)], ids=["isotropic", "anisotropic"])
def test_surface_metrics_equal_a_brute_force_reference(rng, spacing):
    from fastseg.evaluate.surface import surface_metrics

    for _ in range(3):
        ref, pred = _case(rng, (10, 18, 16), 1)
        ref, pred = ref == 1, pred == 1
        if not ref.any() or not pred.any():
            continue
        ours = surface_metrics(ref, pred, spacing, 1.5)
        expected = _brute_force(ref, pred, spacing, 1.5)
        for k in ("HD95", "ASSD", "NSD"):
            assert ours[k] == pytest.approx(expected[k], rel=1e-5, abs=1e-6), k


def test_label_surface_metrics_on_boxes_equal_the_whole_image_brute_force(rng):
    # labels on the image's edge, apart from each other, absent from one map or from both, a
    # region, and the ignore label: the cropped computation equals the brute force on whole masks
    from fastseg.evaluate.surface import label_surface_metrics

    spacing = (2.5, 0.8, 0.6)
    ref = np.zeros((9, 16, 14), np.uint8)
    ref[0:4, 0:5, 0:6] = 1  # on the edge
    ref[5:8, 9:14, 8:12] = 2
    ref[2:4, 10:12, 1:3] = 3  # only in the reference
    ref[8, :, :2] = 9  # ignore label
    pred = np.roll(ref, 1, axis=1)
    pred[pred == 3] = 0
    pred[pred == 9] = 0
    pred[8, 0:2, 12:14] = 2  # a far-away false positive
    pred[6, 2, 2] = 4  # only in the prediction
    pred[8, 0, 0] = 1  # under the ignore label: counts nowhere
    regions = [1, 2, 3, 4, 5, (1, 2)]
    got = label_surface_metrics(ref, pred, spacing, 1.0, regions, 9, 10)
    keep = ref != 9
    for r in regions:
        members = list(r) if isinstance(r, tuple) else [r]
        a, b = np.isin(ref, members), np.isin(pred, members) & keep
        if not a.any() and not b.any():
            assert all(math.isnan(v) for v in got[r].values()), r
        elif a.any() != b.any():
            assert got[r] == {"HD95": math.inf, "ASSD": math.inf, "NSD": 0.0}, r
        else:
            expected = _brute_force(a, b, spacing, 1.0)
            for k in ("HD95", "ASSD", "NSD"):
                assert got[r][k] == pytest.approx(expected[k], rel=1e-9, abs=1e-12), (r, k)


def _scipy_surface_distances(ref, pred, spacing):
    """Border by scipy's face-connected erosion (outside the grid counts as outside the mask on the
    axes longer than one voxel), nearest border voxel by scipy's k-d tree."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    keep = [i for i, n in enumerate(ref.shape) if n > 1]
    squeeze = tuple(i for i, n in enumerate(ref.shape) if n == 1)
    r, p = ref.squeeze(squeeze), pred.squeeze(squeeze)
    structure = ndimage.generate_binary_structure(r.ndim, 1)
    scale = np.asarray([spacing[i] for i in keep])
    points = [np.argwhere(m & ~ndimage.binary_erosion(m, structure, border_value=0)) * scale for m in (r, p)]
    return cKDTree(points[0]).query(points[1])[0], cKDTree(points[1]).query(points[0])[0]


def _blobs(rng, shape, count, radius):
    grid = np.indices(shape)
    mask = np.zeros(shape, bool)
    for _ in range(count):
        centre = [rng.uniform(0, n) for n in shape]
        mask |= sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
    return mask


@pytest.mark.parametrize(
    "shape, spacing, kind",
    [
        pytest.param((24, 40, 36), (2.5, 0.78, 0.78), "shifted", id="3d-aniso-shifted"),
        pytest.param((24, 40, 36), (1.0, 1.0, 1.0), "far-blobs", id="3d-iso-far-false-positives"),
        pytest.param((16, 48, 48), (3.0, 0.7, 0.9), "salt-and-pepper", id="3d-aniso-salt-and-pepper"),
        pytest.param((1, 70, 64), (1.0, 0.5, 0.5), "far-blobs", id="2d-as-1yx"),
        pytest.param((2, 30, 31), (1.5, 1.0, 1.2), "shifted", id="two-slices"),
        pytest.param((1, 1, 90), (1.0, 1.0, 0.3), "salt-and-pepper", id="1d"),
    ],
)
def test_native_surface_distances_equal_scipy_kdtree(shape, spacing, kind):
    # Near voxels take the growing-box search, far ones (blobs, holes deep inside) the buckets:
    # every distance equals the k-d tree's over scipy's border voxels, in the same order.
    from fastseg.evaluate.surface import surface_distances

    rng = np.random.default_rng(sum(shape))
    ref = _blobs(rng, shape, 3, max(shape) / 5)
    if kind == "shifted":
        pred = np.roll(ref, 1, axis=-1)
    elif kind == "far-blobs":
        pred = ref.copy()
        pred[tuple(slice(0, max(1, n // 6)) for n in shape)] = True  # a blob in a corner
        pred[tuple(slice(n - max(1, n // 8), n) for n in shape)] = True
    else:
        pred = ref ^ (rng.random(shape) < 0.03)
    a, b = surface_distances(ref, pred, spacing)
    expected_a, expected_b = _scipy_surface_distances(ref, pred, spacing)
    assert a.shape == expected_a.shape and b.shape == expected_b.shape
    np.testing.assert_allclose(a, expected_a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b, expected_b, rtol=1e-12, atol=1e-12)
    assert a.max() > 0 and (kind != "far-blobs" or a.max() > 5)  # the far search was exercised


def test_native_surface_distances_refuse_bad_input():
    from fastseg._native import cpu

    mask = np.ones((3, 4, 5), bool)
    with pytest.raises(ValueError, match="non-empty"):
        cpu().surface_distances(mask, np.zeros_like(mask), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="one shape"):
        cpu().surface_distances(mask, mask[:, :, :4].copy(), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="spacing"):
        cpu().surface_distances(mask, mask, [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="bool or uint8"):
        cpu().surface_distances(mask.astype(np.int16), mask.astype(np.int16), [1.0, 1.0, 1.0])


def test_native_label_boxes_equal_numpy():
    from fastseg._native import cpu

    rng = np.random.default_rng(11)
    seg = np.zeros((7, 9, 11), np.int16)
    seg[1:3, 2:6, 4:5] = 1
    seg[6, 8, 10] = 2
    seg[rng.random(seg.shape) < 0.01] = 4
    seg[0, 0, 0] = -3  # outside 0..size: ignored
    boxes = cpu().label_boxes(seg, 6)
    for label in range(6):
        where = np.argwhere(seg == label)
        if len(where) == 0:
            assert boxes[label, 0] >= boxes[label, 3], label
        else:
            assert boxes[label].tolist() == [*where.min(0), *(where.max(0) + 1)], label


def test_surface_metric_conventions_for_empty_masks_and_2d():
    from fastseg.evaluate.surface import border, surface_metrics

    empty, blob = np.zeros((6, 8, 8), bool), np.zeros((6, 8, 8), bool)
    blob[2:4, 3:6, 3:6] = True
    assert all(math.isnan(v) for v in surface_metrics(empty, empty, (1, 1, 1), 1).values())
    assert surface_metrics(blob, empty, (1, 1, 1), 1) == {"HD95": math.inf, "ASSD": math.inf, "NSD": 0.0}
    assert surface_metrics(blob, blob, (1, 1, 1), 0) == {"HD95": 0.0, "ASSD": 0.0, "NSD": 1.0}
    # A 2D image stored as (1, y, x) is treated as 2D: its inner pixels are not border.
    square = np.zeros((1, 9, 9), bool)
    square[0, 2:7, 2:7] = True
    shifted = np.roll(square, 1, axis=2)
    got = surface_metrics(square, shifted, (1.0, 0.5, 0.5), 0.25)
    expected = _brute_force(square[0], shifted[0], (0.5, 0.5), 0.25)
    assert got["HD95"] == pytest.approx(expected["HD95"]) and got["NSD"] == pytest.approx(expected["NSD"])
    assert border(square[0]).sum() == 16


def test_evaluate_with_surface_metrics_adds_keys_and_keeps_nnunets(tmp_path, rng):
    pred_dir, ref_dir = _write_folders(tmp_path, rng, 3, cases=2)
    dataset_json = {"labels": LABELS, "file_ending": ".nii.gz"}
    plain = evaluate_folders(pred_dir, ref_dir, dataset_json, num_processes=1)
    ours = evaluate_folders(pred_dir, ref_dir, dataset_json, num_processes=1, nsd_tolerance_mm=1.0,
                            output=tmp_path / "summary.json")
    for case_plain, case in zip(plain["metric_per_case"], ours["metric_per_case"]):
        for k, m in case_plain["metrics"].items():
            assert {n: v for n, v in case["metrics"][k].items() if n in m} == pytest.approx(m, nan_ok=True)
            assert {"HD95", "ASSD", "NSD"} <= set(case["metrics"][k])
    ref_seg = fio.read_seg(ref_dir / "case_000.nii.gz")[0][0]
    pred_seg = fio.read_seg(pred_dir / "case_000.nii.gz")[0][0]
    expected = _brute_force(ref_seg == 1, pred_seg == 1, (2.0, 0.8, 0.8), 1.0)
    assert ours["metric_per_case"][0]["metrics"][1]["HD95"] == pytest.approx(expected["HD95"], rel=1e-5)
    assert load_summary_json(str(tmp_path / "summary.json"))["mean"][1]["NSD"] == pytest.approx(ours["mean"][1]["NSD"])
