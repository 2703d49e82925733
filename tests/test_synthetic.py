"""fastseg.datasets.synthetic: deterministic, anatomically plausible, fast, and accepted by nnU-Net's
own verify_dataset_integrity."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from nnunetv2.experiment_planning import verify_dataset_integrity as vdi
from nnunetv2.utilities import utils as nnunet_utils
from nnunetv2.utilities.label_handling import label_handling
from scipy import ndimage

from fastseg.commands import convert as convert_command
from fastseg.datasets import synthetic
from fastseg.datasets.synthetic import (
    LESION,
    NEIGHBOUR,
    ORGAN,
    TUBE,
    SyntheticConfig,
    generate_case,
    write_synthetic_dataset,
)
from fastseg.io import load_raw_dataset, read_images, read_seg


class _SerialPool:
    """Stands in for multiprocessing pools so nnU-Net's checks run in this process (spawning workers
    that import nnunetv2 and torch costs seconds each)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def starmap(self, fn, iterable):
        return [fn(*args) for args in iterable]


class _SerialContext:
    Pool = _SerialPool


@pytest.fixture
def nnunet_verify(monkeypatch):
    """nnunetv2's verify_dataset_integrity, run in-process."""
    monkeypatch.setattr(vdi.multiprocessing, "get_context", lambda *_: _SerialContext())
    monkeypatch.setattr(nnunet_utils, "Pool", _SerialPool)
    return vdi.verify_dataset_integrity


VARIANTS = [
    pytest.param(dict(num_cases=3, shape=(24, 48, 40), ct=True), id="3d-ct"),
    pytest.param(
        dict(num_cases=3, num_test_cases=1, shape=(20, 40, 36), num_channels=3, regions=True, ignore_label=True),
        id="3d-mr-3ch-regions-ignore",
    ),
    pytest.param(dict(num_cases=3, two_d=True, shape=(64, 56), num_channels=2), id="2d-png-2ch"),
    pytest.param(
        dict(num_cases=2, two_d=True, shape=(48, 40), ct=True, file_ending=".nii.gz", ignore_label=True),
        id="2d-ct-nifti",
    ),
    pytest.param(dict(num_cases=2, shape=(12, 32, 28), file_ending=".tif"), id="3d-tiff-sidecar"),
]


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_variants_are_verified_and_accepted_by_nnunet(tmp_path, nnunet_verify, kwargs):
    config = SyntheticConfig(**kwargs)
    out = tmp_path / "Dataset900_Synthetic"
    report = write_synthetic_dataset(out, config, num_processes=1, progress=False)
    assert report.ok and not report.warnings, report.format()
    nnunet_verify(str(out), 1)  # raises on any problem

    content = json.loads((out / "dataset.json").read_text())
    manager = label_handling.LabelManager(content["labels"], regions_class_order=content.get("regions_class_order"))
    assert manager.has_regions == config.regions
    assert manager.has_ignore_label == config.ignore_label
    ds = load_raw_dataset(out)
    assert len(ds.cases) == config.num_cases and len(ds.test_cases) == config.num_test_cases
    first = next(iter(ds.cases.values()))
    data, props = read_images(first.images)
    seg, _ = read_seg(first.label)
    assert data.shape[0] == config.num_channels and seg.shape[1:] == data.shape[1:]
    if config.two_d:  # nnU-Net's 2D convention: a dummy first axis with spacing 999 x the largest
        assert data.shape[1] == 1 and props["spacing"][0] == pytest.approx(999 * max(props["spacing"][1:]))
    if config.num_test_cases:
        assert sorted(p.name for p in (out / "labelsTs").iterdir()) == [f"case_{config.num_cases:04d}.nii.gz"]


def test_cases_are_deterministic_and_independent():
    config = SyntheticConfig(num_cases=3, shape=(16, 32, 32), num_channels=2)
    a, b = generate_case(config, 1), generate_case(SyntheticConfig(num_cases=7, shape=(16, 32, 32), num_channels=2), 1)
    for x, y in zip(a.images + [a.seg], b.images + [b.seg]):
        np.testing.assert_array_equal(x, y)
    assert a.properties == b.properties
    c = generate_case(SyntheticConfig(num_cases=3, shape=(16, 32, 32), num_channels=2, seed=1), 1)
    assert c.seg.shape != a.seg.shape or not np.array_equal(c.seg, a.seg)
    assert not np.array_equal(a.images[0], a.images[1])  # channels are different contrasts


def test_parallel_writing_gives_the_same_files(tmp_path):
    config = SyntheticConfig(num_cases=3, shape=(10, 24, 20))
    write_synthetic_dataset(tmp_path / "serial", config, num_processes=1, progress=False)
    write_synthetic_dataset(tmp_path / "parallel", config, num_processes=2, progress=False)
    for name in ("imagesTr/case_0002_0000.nii.gz", "labelsTr/case_0001.nii.gz"):
        x, _ = read_images([tmp_path / "serial" / name])
        y, _ = read_images([tmp_path / "parallel" / name])
        np.testing.assert_array_equal(x, y)


def test_anatomy_nested_touching_and_tubular():
    config = SyntheticConfig(num_cases=4, shape=(32, 64, 64))
    for index in range(4):
        seg = generate_case(config, index).seg
        assert set(np.unique(seg)) == {0, ORGAN, LESION, NEIGHBOUR, TUBE}, index
        lesion, organ = seg == LESION, seg == ORGAN
        rim = ndimage.binary_dilation(lesion) & ~lesion
        assert (seg[rim] == ORGAN).mean() > 0.9, "lesions sit inside the organ"
        assert (ndimage.binary_dilation(seg == NEIGHBOUR) & organ).any(), "the neighbour touches the organ"
        slices_with_tube = (seg == TUBE).any(axis=(1, 2)).mean()
        assert slices_with_tube > 0.8, "the tube runs along z"
        assert 0.02 < organ.mean() < 0.2


def _nonzero_bbox_fraction(image: np.ndarray) -> float:
    nz = np.nonzero(image)
    extent = [int(i.max() - i.min() + 1) for i in nz]
    return float(np.prod(extent) / image.size)


def test_ct_like_intensities_and_field_of_view():
    config = SyntheticConfig(num_cases=3, shape=(40, 96, 96), ct=True)
    for index in range(3):
        case = generate_case(config, index)
        img, seg = case.images[0], case.seg
        assert img.dtype == np.int16
        inside = img != 0
        assert img.min() >= -1024 and (img[inside] < -900).mean() > 0.05, "air around the body is around -1000 HU"
        assert abs(np.median(img[seg == ORGAN]) - 60) < 25
        assert np.median(img[seg == TUBE]) > 300, "bone-like tube"
        assert _nonzero_bbox_fraction(img) < 0.97, "cropping to nonzero removes the field-of-view border"
        corners = img[:, [0, 0, -1, -1], [0, -1, 0, -1]]
        assert not corners.any() and not seg[:, [0, 0, -1, -1], [0, -1, 0, -1]].any(), "outside the field of view: 0"
        padding = ~inside.any(axis=(1, 2))
        assert not seg[padding].any(), "no labels on padding slices"
        spacing = case.properties["spacing"]
        assert spacing[0] / spacing[1] >= 2, "anisotropic: thick slices"
        assert case.properties["sitk_stuff"]["spacing"] == (spacing[2], spacing[1], spacing[0])


def test_mr_like_is_zero_outside_the_body():
    case = generate_case(SyntheticConfig(num_cases=1, shape=(24, 64, 64), num_channels=2), 0)
    for img in case.images:
        assert img.dtype == np.int16 and img.min() >= 0
        assert _nonzero_bbox_fraction(img) < 0.8, "the body's bounding box is well inside the image"


def test_ignore_label_marks_whole_slices():
    seg = generate_case(SyntheticConfig(num_cases=1, shape=(30, 32, 32), ignore_label=True), 0).seg
    ignored = (seg == synthetic.IGNORE).all(axis=(1, 2))
    assert 0.25 < ignored.mean() < 0.55
    assert not (seg[~ignored] == synthetic.IGNORE).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param(dict(num_cases=0), "num_cases must be >= 1, got 0", id="no-cases"),
        pytest.param(dict(shape=(4, 32, 32)), r"at least 8 voxels, got \(4, 32, 32\)", id="too-small"),
        pytest.param(dict(two_d=True, shape=(32, 32, 32)), r"2 sizes \(y, x\)", id="2d-needs-2-sizes"),
        pytest.param(dict(two_d=True, ct=True), "cannot be stored in .png", id="ct-png"),
        pytest.param(dict(file_ending=".png"), "2D images only", id="png-3d"),
        pytest.param(dict(file_ending=".jpg"), "unsupported file ending", id="jpg"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**kwargs)


def test_nothing_is_written_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    real = synthetic.generate_case

    def flaky(config, index):
        if index == 2:
            raise RuntimeError("boom")
        return real(config, index)

    monkeypatch.setattr(synthetic, "generate_case", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        write_synthetic_dataset(out, SyntheticConfig(num_cases=3, shape=(8, 16, 16)), num_processes=1, progress=False)
    assert list(tmp_path.iterdir()) == []  # no dataset, no staging folder

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic_dataset(out, SyntheticConfig(num_cases=1, shape=(8, 16, 16)), num_processes=1, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    write_synthetic_dataset(
        out, SyntheticConfig(num_cases=1, shape=(8, 16, 16)), num_processes=1, overwrite=True, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastseg")
    convert_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(tmp_path, capsys):
    out = tmp_path / "Dataset901_Synth"
    assert (
        _cli(
            [
                "convert",
                "synthetic",
                "-o",
                str(out),
                "--cases",
                "2",
                "--shape",
                "8",
                "24",
                "24",
                "--ct",
                "--regions",
                "-j",
                "1",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("OK:")
    content = json.loads((out / "dataset.json").read_text())
    assert content["channel_names"] == {"0": "CT"} and content["regions_class_order"] == [1, 2, 3, 4]
    assert _cli(["convert", "synthetic", "-o", str(tmp_path / "x"), "--2d", "--ct"]) == 2
    err = capsys.readouterr().err
    assert "cannot be stored in .png" in err and not (tmp_path / "x").exists()
    assert _cli(["convert", "synthetic", "-o", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
