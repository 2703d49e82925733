"""fastseg.io.verify_dataset and `fastseg verify`: every kind of bad input gives its message naming the
file, all problems land in one report, nothing is written, and the exit status is 2."""

from __future__ import annotations

import argparse
import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import hook_fail_on_c1, hook_shape_and_labels
from fastseg.commands import verify as verify_command
from fastseg.io import verify_dataset

SHAPE = (4, 6, 5)
SPACING = (0.8, 0.8, 2.5)  # SimpleITK order (x, y, z)
IDENTITY = tuple(np.eye(3).ravel())


def write_nii(path: Path, array: np.ndarray, spacing=SPACING, origin=(0.0, 0.0, 0.0), direction=IDENTITY) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


def make_dataset(
    root: Path, cases=("c0", "c1", "c2"), channels: int = 2, labels: dict | None = None, test_cases=("t0",)
) -> Path:
    """A valid dataset: float32 channels, uint8 labels 0..2 (each case has all labels)."""
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    for case in cases:
        for c in range(channels):
            write_nii(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
        seg = np.zeros(SHAPE, np.uint8)
        seg[1:3, 1:4, 1:3] = 1
        seg[2, 2, 2] = 2
        write_nii(root / "labelsTr" / f"{case}.nii.gz", seg)
    for case in test_cases:
        for c in range(channels):
            write_nii(root / "imagesTs" / f"{case}_{c:04d}.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
    content = {
        "channel_names": {str(c): f"MR{c}" for c in range(channels)},
        "labels": labels or {"background": 0, "a": 1, "b": 2},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(content, indent=2))
    return root


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def edit_json(root: Path, **changes) -> None:
    content = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            content.pop(key, None)
        else:
            content[key] = value
    (root / "dataset.json").write_text(json.dumps(content))


def seg_with(value) -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint8)
    seg[0, 0, 0] = value
    seg[1, 1, 1] = 1
    return seg


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# Each breakage: (mutate(root), expected file in the report, message fragment, severity)
BREAKAGES: list = [
    pytest.param(
        lambda r: (r / "imagesTr" / "c1_0001.nii.gz").unlink(),
        "imagesTr/c1_0001.nii.gz",
        "has no file for channel 1",
        "error",
        id="missing-channel",
    ),
    pytest.param(
        lambda r: (r / "labelsTr" / "c2.nii.gz").unlink(),
        "labelsTr/c2.nii.gz",
        "has no label file",
        "error",
        id="missing-label",
    ),
    pytest.param(
        lambda r: (r / "imagesTr" / "notes.txt").write_text("x"),
        "imagesTr/notes.txt",
        "stray file",
        "error",
        id="stray-other-ending",
    ),
    pytest.param(
        lambda r: (r / "imagesTr" / "c0_0000.nii.gz").rename(r / "imagesTr" / "c0_0000.nii"),
        "imagesTr/c0_0000.nii",
        "stray file",
        "error",
        id="stray-wrong-ending",
    ),
    pytest.param(
        lambda r: write_nii(r / "imagesTr" / "c9.nii.gz", np.zeros(SHAPE, np.float32)),
        "imagesTr/c9.nii.gz",
        "does not end in _XXXX",
        "error",
        id="stray-no-channel",
    ),
    pytest.param(
        lambda r: write_nii(r / "labelsTr" / "c7.nii.gz", seg_with(1)),
        "labelsTr/c7.nii.gz",
        "label without images",
        "error",
        id="label-without-images",
    ),
    pytest.param(
        lambda r: (r / "imagesTr" / ".DS_Store").write_text("x"),
        "imagesTr/.DS_Store",
        "hidden file ignored",
        "warning",
        id="hidden-file",
    ),
    pytest.param(
        lambda r: write_nii(r / "labelsTr" / "c1.nii.gz", np.zeros((4, 6, 6), np.uint8)),
        "labelsTr/c1.nii.gz",
        "shape (4, 6, 6) of labelsTr/c1.nii.gz differs",
        "error",
        id="label-shape",
    ),
    pytest.param(
        lambda r: write_nii(r / "labelsTr" / "c1.nii.gz", seg_with(1), spacing=(0.8, 0.8, 3.0)),
        "labelsTr/c1.nii.gz",
        "spacing (3, 0.8, 0.8) of labelsTr/c1.nii.gz differs",
        "error",
        id="label-spacing",
    ),
    pytest.param(
        lambda r: write_nii(r / "imagesTr" / "c1_0001.nii.gz", np.zeros((5, 6, 5), np.float32)),
        "imagesTr/c1_0001.nii.gz",
        "shape (5, 6, 5) of imagesTr/c1_0001.nii.gz differs",
        "error",
        id="channel-shape",
    ),
    pytest.param(
        lambda r: write_nii(r / "imagesTr" / "c1_0001.nii.gz", np.zeros(SHAPE, np.float32), spacing=(0.9, 0.8, 2.5)),
        "imagesTr/c1_0001.nii.gz",
        "spacing",
        "error",
        id="channel-spacing",
    ),
    pytest.param(
        lambda r: write_nii(r / "labelsTr" / "c0.nii.gz", seg_with(1), origin=(10.0, 0.0, 0.0)),
        "labelsTr/c0.nii.gz",
        "origin (10, 0, 0)",
        "warning",
        id="label-origin",
    ),
    pytest.param(
        lambda r: write_nii(
            r / "imagesTr" / "c0_0001.nii.gz",
            np.zeros(SHAPE, np.float32),
            direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0),
        ),
        "imagesTr/c0_0001.nii.gz",
        "direction",
        "warning",
        id="channel-direction",
    ),
    pytest.param(
        lambda r: write_nii(r / "labelsTr" / "c2.nii.gz", seg_with(7)),
        "labelsTr/c2.nii.gz",
        "label values [7] that dataset.json does not declare",
        "error",
        id="undeclared-label",
    ),
    pytest.param(
        lambda r: write_nii(r / "imagesTr" / "c0_0000.nii.gz", np.full(SHAPE, np.nan, np.float32)),
        "imagesTr/c0_0000.nii.gz",
        "120 NaN/Inf voxels",
        "error",
        id="nan-nifti",
    ),
    pytest.param(
        lambda r: write_nii(r / "imagesTs" / "t0_0001.nii.gz", np.full(SHAPE, np.inf, np.float32)),
        "imagesTs/t0_0001.nii.gz",
        "NaN/Inf",
        "error",
        id="inf-test-image",
    ),
    pytest.param(
        lambda r: write_nii(r / "labelsTr" / "c0.nii.gz", seg_with(1).astype(np.float32) + 0.5),
        "labelsTr/c0.nii.gz",
        "non-integer values",
        "error",
        id="fractional-label",
    ),
    pytest.param(
        lambda r: truncate(r / "imagesTr" / "c2_0000.nii.gz"),
        "imagesTr/c2_0000.nii.gz",
        "truncated",
        "error",
        id="truncated-image",
    ),
    pytest.param(
        lambda r: truncate(r / "labelsTr" / "c2.nii.gz"),
        "labelsTr/c2.nii.gz",
        "truncated",
        "error",
        id="truncated-label",
    ),
    pytest.param(
        lambda r: (r / "imagesTr" / "c1_0000.nii.gz").write_bytes(b"garbage"),
        "imagesTr/c1_0000.nii.gz",
        "cannot be read",
        "error",
        id="unreadable",
    ),
    pytest.param(
        lambda r: write_nii(r / "labelsTr" / "c0.nii.gz", np.zeros(SHAPE, np.uint8)),
        "labelsTr/c0.nii.gz",
        "only background",
        "warning",
        id="empty-label",
    ),
    pytest.param(
        lambda r: edit_json(r, numTraining=5),
        "dataset.json",
        "numTraining is 5 but 3 training cases",
        "error",
        id="num-training",
    ),
    pytest.param(
        lambda r: edit_json(r, numTraining=None, labels=None),
        "dataset.json",
        "missing required keys ['labels', 'numTraining']",
        "error",
        id="missing-keys",
    ),
    pytest.param(
        lambda r: edit_json(r, channel_names={"0": "MR0"}),
        "imagesTr/c0_0000.nii.gz",
        "declares 1",
        "error",
        id="channel-count",
    ),
    pytest.param(
        lambda r: edit_json(r, file_ending=".jpg"),
        "dataset.json",
        "unsupported file ending '.jpg'",
        "error",
        id="bad-ending",
    ),
    pytest.param(
        lambda r: edit_json(r, labels={"background": 0, "a": 1, "b": 3}),
        "dataset.json",
        "consecutive",
        "error",
        id="labels-gap",
    ),
    pytest.param(
        lambda r: edit_json(r, labels={"background": 0, "a": 1, "b": 2, "ignore": 4}),
        "dataset.json",
        "ignore label must be",
        "error",
        id="ignore-not-last",
    ),
    pytest.param(
        lambda r: edit_json(r, labels={"background": 0, "ab": [1, 2], "b": 2}),
        "dataset.json",
        "regions_class_order",
        "error",
        id="regions-without-order",
    ),
    pytest.param(
        lambda r: (r / "dataset.json").write_text('{"labels": {,}'),
        "dataset.json",
        "not valid JSON",
        "error",
        id="invalid-json",
    ),
    pytest.param(lambda r: (r / "dataset.json").unlink(), "dataset.json", "not found", "error", id="no-dataset-json"),
    pytest.param(
        lambda r: shutil.rmtree(r / "labelsTr"), "labelsTr", "folder labelsTr is missing", "error", id="no-labelsTr"
    ),
]


@pytest.mark.parametrize("mutate, file, fragment, severity", BREAKAGES)
def test_each_problem_is_reported_with_its_file(tmp_path, mutate: Callable, file: str, fragment: str, severity: str):
    root = make_dataset(tmp_path / "Dataset001_Toy")
    mutate(root)
    before = snapshot(root)
    report = verify_dataset(root, num_processes=1, progress=False)
    assert snapshot(root) == before, "verification must not write"
    found = [p for p in report.problems if p.file == file and fragment in p.message]
    assert found, f"no {severity} for {file} containing {fragment!r} in:\n{report.format()}"
    assert found[0].severity == severity
    assert report.ok == (severity == "warning"), report.format()


def test_good_dataset_passes_and_nnunet_agrees(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "Dataset001_Toy")
    report = verify_dataset(root, num_processes=1, progress=False)
    assert report.ok and not report.problems, report.format()
    assert (report.num_training, report.num_test) == (3, 1)
    assert report.format().startswith("OK:")


def test_regions_accept_union_of_members(tmp_path):
    labels = {"background": 0, "whole": [1, 2], "core": [2]}
    root = make_dataset(tmp_path / "ds", labels=labels)
    edit_json(root, regions_class_order=[1, 2])
    assert verify_dataset(root, num_processes=1, progress=False).ok
    write_nii(root / "labelsTr" / "c1.nii.gz", seg_with(3))
    report = verify_dataset(root, num_processes=1, progress=False)
    assert [str(p) for p in report.errors] == [
        "labelsTr/c1.nii.gz: holds label values [3] that dataset.json does not declare (declared: [0, 1, 2]); fix the labels or declare them"
    ]


def test_ignore_label_is_allowed(tmp_path):
    root = make_dataset(tmp_path / "ds", labels={"background": 0, "a": 1, "b": 2, "ignore": 3})
    write_nii(root / "labelsTr" / "c1.nii.gz", seg_with(3))
    report = verify_dataset(root, num_processes=1, progress=False)
    assert report.ok, report.format()


def test_all_problems_in_one_report_and_parallel_agrees(tmp_path):
    root = make_dataset(tmp_path / "ds", cases=("c0", "c1", "c2", "c3"))
    (root / "imagesTr" / "c1_0001.nii.gz").unlink()
    write_nii(root / "labelsTr" / "c2.nii.gz", seg_with(9))
    write_nii(root / "imagesTr" / "c3_0000.nii.gz", np.full(SHAPE, np.nan, np.float32))
    (root / "imagesTr" / "stray.png").write_bytes(b"x")
    serial = verify_dataset(root, num_processes=1, progress=False)
    parallel = verify_dataset(root, num_processes=2, progress=False)
    assert serial.problems == parallel.problems
    files = {p.file for p in serial.errors}
    assert {"imagesTr/c1_0001.nii.gz", "labelsTr/c2.nii.gz", "imagesTr/c3_0000.nii.gz", "imagesTr/stray.png"} <= files
    text = serial.format()
    assert text.startswith("FAILED") and text.count("\n  - ") == len(serial.problems)


def test_listed_cases_are_checked(tmp_path):
    root = make_dataset(tmp_path / "ds", cases=("c0",), test_cases=())
    listed = {
        "c0": {"images": ["imagesTr/c0_0000.nii.gz", "imagesTr/c0_0001.nii.gz"], "label": "labelsTr/c0.nii.gz"},
        "gone": {
            "images": ["${DATA}/imagesTr/gone_0000.nii.gz", "imagesTr/gone_0001.nii.gz"],
            "label": "labelsTr/gone.nii.gz",
        },
    }
    edit_json(root, dataset=listed, numTraining=2)
    report = verify_dataset(root, num_processes=1, env={"DATA": str(root)}, progress=False)
    assert {p.file for p in report.errors} == {
        "imagesTr/gone_0000.nii.gz",
        "imagesTr/gone_0001.nii.gz",
        "labelsTr/gone.nii.gz",
    }


def test_invalid_num_processes(tmp_path):
    with pytest.raises(ValueError, match="num_processes must be >= 1, got 0"):
        verify_dataset(tmp_path, num_processes=0)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastseg")
    verify_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_exit_codes_and_report(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    assert _cli(["verify", str(root), "-j", "1"]) == 0
    assert capsys.readouterr().out.startswith("OK:")
    write_nii(root / "labelsTr" / "c2.nii.gz", seg_with(5))
    (root / "imagesTr" / "c0_0001.nii.gz").unlink()
    assert _cli(["verify", str(root), "-j", "1"]) == 2
    out = capsys.readouterr().out
    assert "labelsTr/c2.nii.gz: holds label values [5]" in out and "imagesTr/c0_0001.nii.gz" in out
    assert "Traceback" not in out
    assert _cli(["verify", str(root), "-j", "1", "--json"]) == 2
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["ok"] is False and len(parsed["errors"]) == 2
    assert _cli(["verify", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().out


# --- the analyze hook (fastseg plan fingerprints while it verifies) -------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "2-workers"])
def test_analyze_hook_sees_verified_training_cases_as_read(tmp_path, workers):
    from fastseg.io import read_images, read_seg
    from fastseg.plan.fingerprint import (
        analyze_case,
        extract_fingerprint,
        fingerprint_from_cases,
        fingerprint_verified_case,
        samples_per_case,
    )

    root = make_dataset(tmp_path / "ds", cases=("c0", "c1", "c2", "c3"))
    write_nii(root / "labelsTr" / "c2.nii.gz", seg_with(9))  # fails verification: not analyzed
    report = verify_dataset(root, num_processes=workers, progress=False, analyze=hook_shape_and_labels)
    assert not report.ok
    assert report.analyses == {c: (c, "float32", (2, *SHAPE), (1, *SHAPE), 4) for c in ("c0", "c1", "c3")}
    assert "t0" not in report.analyses  # test cases have no label: never analyzed
    assert verify_dataset(root, num_processes=1, progress=False).analyses == {}

    # The fingerprint hook gives what extract_fingerprint computes from the files.
    write_nii(root / "labelsTr" / "c2.nii.gz", seg_with(2))
    hook = functools.partial(fingerprint_verified_case, total_samples=2e4)
    report = verify_dataset(root, num_processes=workers, progress=False, analyze=hook)
    assert report.ok and sorted(report.analyses) == ["c0", "c1", "c2", "c3"]
    data, props = read_images(sorted((root / "imagesTr").glob("c1_*.nii.gz")))
    expected = analyze_case(data, read_seg(root / "labelsTr" / "c1.nii.gz")[0], props["spacing"], samples_per_case(4, 2e4))
    got = report.analyses["c1"]
    assert got.shape_after_crop == expected.shape_after_crop and got.spacing == expected.spacing
    for a, b in zip(got.samples, expected.samples):  # ValueCounts: sorted values and their counts
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.counts, b.counts)
    from fastseg.io import load_raw_dataset

    dataset = load_raw_dataset(root)
    expected_fingerprint = extract_fingerprint(dataset, 1, total_samples=2e4, progress=False)
    assert json.dumps(fingerprint_from_cases(dataset, report.analyses)) == json.dumps(expected_fingerprint)
    assert fingerprint_from_cases(dataset, {k: v for k, v in report.analyses.items() if k != "c0"}) is None


def test_analyze_hook_errors_name_the_case(tmp_path):
    from fastseg.io.verify import CaseAnalysisError

    root = make_dataset(tmp_path / "ds")
    with pytest.raises(CaseAnalysisError, match=r"case 'c1': ZeroDivisionError: boom") as info:
        verify_dataset(root, num_processes=2, progress=False, analyze=hook_fail_on_c1)
    assert info.value.case == "c1"


def test_plan_fails_before_writing_when_verification_fails(tmp_path):
    from fastseg.workflow import plan_dataset

    root = make_dataset(tmp_path / "ds")
    write_nii(root / "labelsTr" / "c1.nii.gz", seg_with(7))
    work = tmp_path / "work"
    with pytest.raises(ValueError, match="dataset verification failed"):
        plan_dataset(root, work, num_processes=2, progress=False)
    assert not work.exists() or not any(work.iterdir())


@pytest.mark.parametrize(
    "values",
    [[0], [0, 1, 2], [0, 3], [-1, 0, 5], list(range(0, 40, 3)), [0, 70000]],
    ids=["background-only", "consecutive", "gap", "negative", "wide-range", "huge-range"],
)
def test_label_values_match_unique(values):
    from fastseg.io.verify import _label_values

    seg = np.resize(np.array(values, np.int32), (3, 5, 7))[None]
    np.testing.assert_array_equal(_label_values(seg), np.unique(seg))
    np.testing.assert_array_equal(_label_values(np.zeros((1, 0, 2, 2), np.int16)), np.zeros(0))
