"""`fastseg ensemble` against numpy's average + argmax and against nnunetv2's own `ensemble_folders`,
run here on the same probability folders (written in nnU-Net's format: `<case>.npz` + `<case>.pkl`)."""

from __future__ import annotations

import argparse
import json
import logging
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.ensembling.ensemble import ensemble_folders as nnunet_ensemble_folders
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from fastseg.commands import ensemble as ensemble_command
from fastseg.predict.ensemble import ensemble_folders, probabilities_to_labels
from fastseg.runtime.workers import CaseError

LABELS = {"background": 0, "liver": 1, "tumor": 2, "vessel": 3}
REGIONS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}
PLANS = {"image_reader_writer": "SimpleITKIO", "label_manager": "LabelManager"}
SHAPE = (5, 9, 11)  # z, y x
GEOMETRY = {  # SimpleITK order (x, y, z); a flipped, rotated grid so that a lost direction shows
    "spacing": (0.8, 0.7, 2.5),
    "origin": (12.5, -40.0, 3.25),
    "direction": (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0),
}


def _dataset_json(regions: bool) -> dict:
    content = {"labels": REGIONS if regions else LABELS, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}}
    if regions:
        content["regions_class_order"] = [1, 2, 3]
    return content


def _properties() -> dict:
    """What nnU-Net's predictor pickles beside the probabilities (SimpleITKIO's properties plus the
    preprocessing's; the writer uses 'sitk_stuff')."""
    return {
        "sitk_stuff": dict(GEOMETRY),
        "spacing": [GEOMETRY["spacing"][2], GEOMETRY["spacing"][1], GEOMETRY["spacing"][0]],
        "shape_before_cropping": SHAPE,
        "bbox_used_for_cropping": [[0, s] for s in SHAPE],
        "shape_after_cropping_and_before_resampling": SHAPE,
    }


def _probabilities(rng, regions: bool, shape=SHAPE) -> np.ndarray:
    logits = rng.normal(0, 2, (3 if regions else len(LABELS), *shape)).astype(np.float32)
    if regions:
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


def _write_folder(folder, cases: dict, dataset_json: dict | None, plans: dict | None = PLANS):
    """A prediction folder as nnU-Net leaves it: <case>.npz, <case>.pkl, dataset.json, plans.json."""
    folder.mkdir(parents=True)
    for case, probs in cases.items():
        np.savez_compressed(folder / f"{case}.npz", probabilities=probs)
        (folder / f"{case}.pkl").write_bytes(pickle.dumps(_properties()))
    if dataset_json is not None:
        (folder / "dataset.json").write_text(json.dumps(dataset_json))
    if plans is not None:
        (folder / "plans.json").write_text(json.dumps(plans))
    return folder


def _folders(tmp_path, regions: bool, n_folders=2, cases=("case_000", "case_001"), seed=0):
    rng = np.random.default_rng(seed)
    probs = [{c: _probabilities(rng, regions) for c in cases} for _ in range(n_folders)]
    folders = [_write_folder(tmp_path / f"pred_{k}", p, _dataset_json(regions)) for k, p in enumerate(probs)]
    return folders, probs


def _read(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def _files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("num_processes", [pytest.param(1, id="in-process"), pytest.param(2, id="two-workers")])
def test_equals_numpy_average_and_argmax_on_the_pkl_geometry(tmp_path, num_processes):
    folders, probs = _folders(tmp_path, regions=False, n_folders=3)
    out = tmp_path / "ens"
    report = ensemble_folders(folders, out, num_processes=num_processes)
    assert report.written == [out / "case_000.nii.gz", out / "case_001.nii.gz"]
    for case in ("case_000", "case_001"):
        expected = np.mean([p[case].astype(np.float64) for p in probs], axis=0).argmax(0)
        labels, image = _read(out / f"{case}.nii.gz")
        np.testing.assert_array_equal(labels, expected)
        assert len(np.unique(labels)) == len(LABELS)  # the test data exercises every class
        assert image.GetSpacing() == pytest.approx(GEOMETRY["spacing"])
        assert image.GetOrigin() == pytest.approx(GEOMETRY["origin"])
        assert image.GetDirection() == pytest.approx(GEOMETRY["direction"])
    assert json.loads((out / "dataset.json").read_text()) == _dataset_json(False)
    assert not [n for n in _files(out) if n.startswith(".")]  # no staging folder or temporary left


def test_saved_probabilities_are_the_average(tmp_path):
    folders, probs = _folders(tmp_path, regions=True, cases=("c1",))
    out = tmp_path / "ens"
    ensemble_folders(folders, out, num_processes=1, save_probabilities=True)
    with np.load(out / "c1.npz") as npz:
        np.testing.assert_allclose(npz["probabilities"], (probs[0]["c1"] + probs[1]["c1"]) / 2, rtol=1e-6)
    assert pickle.loads((out / "c1.pkl").read_bytes())["sitk_stuff"] == GEOMETRY


def test_postprocessing_is_applied_to_the_labels_as_nnunet_applies_it(tmp_path):
    # random probabilities give labels in many small components: keeping the largest changes them
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation

    labels = np.zeros(SHAPE, np.int64)
    labels[1:4, 1:5, 1:5] = 2  # the larger part
    labels[1:3, 7:9, 8:10] = 2  # a smaller part, apart
    labels[0, :, 6] = 1
    onehot = np.stack([labels == c for c in range(len(LABELS))]).astype(np.float32)
    rng = np.random.default_rng(3)
    folders = [_write_folder(tmp_path / f"pred_{k}", {"c1": (0.8 * onehot + 0.05 * rng.random(onehot.shape)).astype(np.float32)},
                             _dataset_json(False)) for k in range(2)]
    steps = tmp_path / "postprocessing.json"
    steps.write_text(json.dumps({"steps": [{"remove_all_but_largest_component": {"labels_or_regions": 2, "background_label": 0}}]}))
    ensemble_folders(folders, tmp_path / "plain", num_processes=1)
    ensemble_folders(folders, tmp_path / "pp", num_processes=1, postprocessing=steps)
    plain, _ = _read(tmp_path / "plain" / "c1.nii.gz")
    pp, _ = _read(tmp_path / "pp" / "c1.nii.gz")
    expected = remove_all_but_largest_component_from_segmentation(plain, 2)
    np.testing.assert_array_equal(pp, expected)
    assert (pp != plain).any()


@pytest.mark.parametrize("regions", [pytest.param(False, id="softmax"), pytest.param(True, id="regions")])
def test_identical_to_nnunet_ensemble_folders(tmp_path, regions):
    folders, _ = _folders(tmp_path, regions=regions, cases=("a_001", "a_002", "b_003"), seed=3)
    ours, theirs = tmp_path / "ours", tmp_path / "nnunet"
    ensemble_folders(folders, ours, num_processes=1)
    nnunet_ensemble_folders([str(f) for f in folders], str(theirs), num_processes=1)
    assert _files(ours) == _files(theirs) + ["plans.json"]  # nnU-Net leaves dataset.json only
    for case in ("a_001", "a_002", "b_003"):
        a, image_a = _read(ours / f"{case}.nii.gz")
        b, image_b = _read(theirs / f"{case}.nii.gz")
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
        assert (image_a.GetSpacing(), image_a.GetOrigin(), image_a.GetDirection()) == (
            image_b.GetSpacing(), image_b.GetOrigin(), image_b.GetDirection()
        )
    if regions:  # the regions overlap: later ones must win, and all three labels occur
        assert set(np.unique(a)) == {0, 1, 2, 3}


def test_labels_rule_equals_nnunet_label_manager_with_ties_and_overlaps():
    rng = np.random.default_rng(7)
    probs = rng.integers(0, 3, (4, 6, 7, 8)).astype(np.float32) / 4  # many exact ties
    manager = LabelManager(LABELS, None)
    np.testing.assert_array_equal(probabilities_to_labels(probs), manager.convert_probabilities_to_segmentation(probs))
    regions = probs[:3]  # overlapping regions, and 0.5 exactly (not above the threshold)
    manager = LabelManager(REGIONS, [1, 2, 3])
    np.testing.assert_array_equal(
        probabilities_to_labels(regions, [1, 2, 3]), manager.convert_probabilities_to_segmentation(regions)
    )


def test_shapes_that_differ_name_both_files_and_write_nothing(tmp_path):
    rng = np.random.default_rng(1)
    good = {c: _probabilities(rng, False) for c in ("c1", "c2")}
    bad = {"c1": _probabilities(rng, False), "c2": _probabilities(rng, False, shape=(5, 9, 10))}
    a = _write_folder(tmp_path / "a", good, _dataset_json(False))
    b = _write_folder(tmp_path / "b", bad, None)
    out = tmp_path / "ens"
    with pytest.raises(ValueError, match="different shapes") as err:
        ensemble_folders([a, b], out, num_processes=1)
    assert str(a / "c2.npz") in str(err.value) and str(b / "c2.npz") in str(err.value)
    assert "(4, 5, 9, 11)" in str(err.value) and "(4, 5, 9, 10)" in str(err.value)
    assert not out.exists()


def test_wrong_channel_count_is_named(tmp_path):
    folders, _ = _folders(tmp_path, regions=True, cases=("c1",))
    with pytest.raises(ValueError, match=r"c1\.npz has shape \(3, 5, 9, 11\): expected .* C = 4"):
        ensemble_folders(folders, tmp_path / "ens", dataset_json=_dataset_json(False), num_processes=1)


def test_folder_without_npz_is_named(tmp_path):
    folders, _ = _folders(tmp_path, regions=False, cases=("c1",))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "c1.nii.gz").write_bytes(b"")  # labels only: predicted without --save-probabilities
    with pytest.raises(ValueError, match=rf"{empty} holds no \.npz probability files; predict with --save-probabilities"):
        ensemble_folders([folders[0], empty], tmp_path / "ens", num_processes=1)
    assert not (tmp_path / "ens").exists()


def test_missing_dataset_json_is_named(tmp_path):
    rng = np.random.default_rng(2)
    cases = {"c1": _probabilities(rng, False)}
    a = _write_folder(tmp_path / "a", cases, None, plans=None)
    b = _write_folder(tmp_path / "b", cases, _dataset_json(False))  # only the first folder's is read
    with pytest.raises(FileNotFoundError, match=rf"{a / 'dataset.json'} not found.*--dataset-json"):
        ensemble_folders([a, b], tmp_path / "ens", num_processes=1)
    with pytest.raises(FileNotFoundError, match="nowhere.json not found"):
        ensemble_folders([a, b], tmp_path / "ens", dataset_json=tmp_path / "nowhere.json", num_processes=1)
    assert not (tmp_path / "ens").exists()
    ensemble_folders([a, b], tmp_path / "ens", dataset_json=b / "dataset.json", num_processes=1)
    assert _files(tmp_path / "ens") == ["c1.nii.gz", "dataset.json"]  # no plans.json in the first folder


def test_missing_cases_are_an_error_or_left_out_with_a_warning(tmp_path, caplog):
    rng = np.random.default_rng(4)
    a = _write_folder(tmp_path / "a", {c: _probabilities(rng, False) for c in ("c1", "c2", "c3")}, _dataset_json(False))
    b = _write_folder(tmp_path / "b", {c: _probabilities(rng, False) for c in ("c1", "c3")}, None)
    with pytest.raises(ValueError, match=rf"do not hold the same cases: c2 \(not in {b}\)"):
        ensemble_folders([a, b], tmp_path / "ens", num_processes=1)
    assert not (tmp_path / "ens").exists()
    with caplog.at_level(logging.WARNING, logger="fastseg.predict.ensemble"):
        report = ensemble_folders([a, b], tmp_path / "ens", num_processes=1, allow_missing=True)
    assert [p.name for p in report.written] == ["c1.nii.gz", "c3.nii.gz"]
    assert report.left_out == {"c2": [b]}
    assert "left out: c2" in caplog.text


def test_a_failing_case_leaves_the_output_folder_as_it_was(tmp_path):
    folders, _ = _folders(tmp_path, regions=False, cases=("c1", "c2", "c3"))
    (folders[0] / "c3.pkl").write_bytes(b"not a pickle")
    out = tmp_path / "ens"
    out.mkdir()
    (out / "c1.nii.gz").write_bytes(b"an older result")
    with pytest.raises(CaseError, match=r"case 'c3'.*c3\.pkl is not a readable properties pickle"):
        ensemble_folders(folders, out, num_processes=2)
    assert _files(out) == ["c1.nii.gz"] and (out / "c1.nii.gz").read_bytes() == b"an older result"


def test_bad_arguments(tmp_path):
    folders, _ = _folders(tmp_path, regions=False, cases=("c1",))
    with pytest.raises(ValueError, match="at least two input folders"):
        ensemble_folders(folders[:1], tmp_path / "ens")
    with pytest.raises(ValueError, match="given twice"):
        ensemble_folders([folders[0], folders[0]], tmp_path / "ens")
    with pytest.raises(ValueError, match="output folder .* is one of the input folders"):
        ensemble_folders(folders, folders[1])
    with pytest.raises(ValueError, match="'NibabelIOWithReorient'.*nnUNetv2_ensemble"):
        ensemble_folders(folders, tmp_path / "ens", plans={"image_reader_writer": "NibabelIOWithReorient"})
    assert not (tmp_path / "ens").exists()


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastseg")
    ensemble_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ensemble", *argv])
    return args.func(args)


def test_command(tmp_path, capsys):
    folders, _ = _folders(tmp_path, regions=True, cases=("c1", "c2"))
    out = tmp_path / "ens"
    assert _cli(["-i", *map(str, folders), "-o", str(out), "-j", "1", "--save-probabilities"]) == 0
    assert "ensembled 2 case(s) from 2 folders" in capsys.readouterr().out
    assert _files(out) == ["c1.nii.gz", "c1.npz", "c1.pkl", "c2.nii.gz", "c2.npz", "c2.pkl", "dataset.json", "plans.json"]
    (folders[0] / "dataset.json").unlink()
    assert _cli(["-i", *map(str, folders), "-o", str(tmp_path / "ens2")]) == 1
    assert f"error: {folders[0] / 'dataset.json'} not found" in capsys.readouterr().err
    assert not (tmp_path / "ens2").exists()
