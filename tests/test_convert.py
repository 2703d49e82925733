"""`fastseg convert medsam|dicom`: outputs verified, geometry and labels kept, bad inputs refused with
every problem named and nothing written."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.experiment_planning import verify_dataset_integrity as vdi
from nnunetv2.utilities import utils as nnunet_utils

from fastseg.commands import convert as convert_command
from fastseg.datasets.dicom import convert_dicom, list_dicom_series
from fastseg.datasets.medsam import convert_medsam
from fastseg.io import (
    DatasetError,
    load_raw_dataset,
    read_images,
    read_seg,
    verify_dataset,
)

# --- MedSAM .npz ----------------------------------------------------------------------------------


def npz_3d(
    path: Path, rng, shape=(5, 24, 20), values=(0, 3, 7), spacing=(0.8, 0.7, 3.0)
) -> tuple[np.ndarray, np.ndarray]:
    imgs = rng.integers(0, 256, shape, dtype=np.uint8)
    gts = rng.choice(np.array(values, np.uint8), size=shape)
    extra = {"spacing": np.array(spacing)} if spacing is not None else {}
    np.savez_compressed(path, imgs=imgs, gts=gts, **extra)
    return imgs, gts


def test_medsam_3d(tmp_path, rng):
    src = tmp_path / "npz" / "CT_Abd"
    src.mkdir(parents=True)
    a = npz_3d(src / "CT_Abd_case 1.npz", rng, values=(0, 3, 7))
    b = npz_3d(src / "CT_Abd_case2.npz", rng, shape=(4, 16, 16), values=(0, 12), spacing=(1.0, 1.0, 5.0))
    out = tmp_path / "Dataset501_Abd"
    report = convert_medsam([tmp_path / "npz"], out, num_processes=1, progress=False)
    assert report.ok, report.format()
    assert verify_dataset(out, 1, progress=False).ok
    content = json.loads((out / "dataset.json").read_text())
    assert content["labels"] == {"background": 0, "label_3": 1, "label_7": 2, "label_12": 3}
    assert (
        content["channel_names"] == {"0": "image"}
        and content["file_ending"] == ".nii.gz"
        and content["name"] == "Dataset501_Abd"
    )
    ds = load_raw_dataset(out)
    assert list(ds.cases) == ["CT_Abd_case2", "CT_Abd_case_1"]
    data, props = read_images(ds.cases["CT_Abd_case_1"].images)
    seg, _ = read_seg(ds.cases["CT_Abd_case_1"].label)
    np.testing.assert_array_equal(data[0], a[0])
    np.testing.assert_array_equal(seg[0], np.searchsorted([0, 3, 7, 12], a[1]))
    assert props["spacing"] == pytest.approx([3.0, 0.7, 0.8])  # MedSAM's (x, y, z) -> (z, y, x)
    assert props["sitk_stuff"]["spacing"] == pytest.approx((0.8, 0.7, 3.0))
    _, props_b = read_images(ds.cases["CT_Abd_case2"].images)
    assert props_b["spacing"] == pytest.approx([5.0, 1.0, 1.0])
    assert b is not None


class _SerialPool:
    """Runs nnU-Net's pooled checks in this process (workers importing nnunetv2 cost seconds each)."""

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


def test_medsam_2d_rgb_and_gray(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(vdi.multiprocessing, "get_context", lambda *_: _SerialContext())
    monkeypatch.setattr(nnunet_utils, "Pool", _SerialPool)
    for kind, imgs in (
        ("rgb", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)),
        ("gray", rng.integers(0, 256, (30, 40), dtype=np.uint8)),
    ):
        src = tmp_path / kind
        src.mkdir()
        gts = np.zeros((30, 40), np.uint8)
        gts[5:15, 5:20] = 1
        gts[20:25, 10:30] = 4
        np.savez_compressed(src / "x.npz", imgs=imgs, gts=gts)
        np.savez_compressed(src / "y.npz", imgs=imgs, gts=(gts > 0).astype(np.uint8))
        out = tmp_path / f"Dataset_{kind}"
        report = convert_medsam([src / "x.npz", src / "y.npz"], out, num_processes=1, progress=False)
        assert report.ok, report.format()
        vdi.verify_dataset_integrity(str(out), 1)  # nnU-Net accepts it too (raises otherwise)
        content = json.loads((out / "dataset.json").read_text())
        assert content["file_ending"] == ".png"
        assert content["labels"] == {"background": 0, "label_1": 1, "label_4": 2}
        data, props = read_images([out / "imagesTr" / "x_0000.png"])
        if kind == "rgb":
            assert content["channel_names"] == {"0": "R", "1": "G", "2": "B"}
            np.testing.assert_array_equal(data[:, 0], np.moveaxis(imgs, -1, 0))
        else:
            np.testing.assert_array_equal(data[0, 0], imgs)
        seg, _ = read_seg(out / "labelsTr" / "x.png")
        np.testing.assert_array_equal(seg[0, 0], np.searchsorted([0, 1, 4], gts))
        assert props["spacing"] == [999.0, 1.0, 1.0]


def test_medsam_bad_inputs_are_all_listed_and_nothing_written(tmp_path, rng):
    src = tmp_path / "npz"
    src.mkdir()
    npz_3d(src / "good.npz", rng)
    np.savez_compressed(src / "no_gts.npz", imgs=np.zeros((4, 8, 8), np.uint8))
    np.savez_compressed(src / "mismatch.npz", imgs=np.zeros((4, 8, 8), np.uint8), gts=np.zeros((4, 8, 9), np.uint8))
    np.savez_compressed(src / "fractional.npz", imgs=np.zeros((4, 8, 8), np.uint8), gts=np.full((4, 8, 8), 0.5))
    np.savez_compressed(src / "rgb2d.npz", imgs=np.zeros((8, 8, 3), np.uint8), gts=np.zeros((8, 8), np.uint8))
    (src / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        convert_medsam([src], out, num_processes=1, progress=False)
    text = str(err.value)
    for fragment in (
        "no_gts.npz: has no array ['gts']",
        "mismatch.npz: imgs (4, 8, 8) and gts (4, 8, 9) differ",
        "fractional.npz: gts holds non-integer",
        "broken.npz: cannot be read",
        "mix kinds ['2d-rgb', '3d']",
    ):
        assert fragment in text, text
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["npz"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_medsam([tmp_path / "nope"], out)


# --- DICOM series ---------------------------------------------------------------------------------

OBLIQUE = (0.9950041652780258, 0.0, 0.09983341664682815, 0.0, 1.0, 0.0, -0.09983341664682815, 0.0, 0.9950041652780258)


def write_series(
    folder: Path,
    volume: np.ndarray,
    spacing,
    origin,
    direction,
    uid: str,
    skip: tuple[int, ...] = (),
    description="toy",
) -> sitk.Image:
    """A DICOM series written slice by slice with SimpleITK, the tags GDCM needs to restack it."""
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(volume)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = "\\".join(
        str(v) for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
    )
    for i in range(img.GetDepth()):
        if i in skip:
            continue
        s = img[:, :, i]
        for tag, value in (
            ("0008|0060", "CT"),
            ("0020|000e", uid),
            ("0008|103e", description),
            ("0020|0037", orientation),
            ("0020|0032", "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, i)))),
            ("0020|0013", str(i + 1)),
        ):
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid[-3:]}_{i:03d}.dcm"))
        writer.Execute(s)
    return img


def test_dicom_series_to_nifti_keeps_geometry(tmp_path, rng):
    volume = (rng.normal(size=(7, 24, 30)) * 300).astype(np.int16)
    ref = write_series(
        tmp_path / "series", volume, (0.7, 0.8, 2.5), (-10.0, 20.0, -30.0), OBLIQUE, "1.2.826.0.1.3680043.2.1125.1.111"
    )
    out = convert_dicom(tmp_path / "series", tmp_path / "nifti" / "ct.nii.gz")
    img = sitk.ReadImage(str(out))
    assert img.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), volume)
    # NIfTI stores geometry in float32 (measured: spacing 1.7e-8 relative, origin equal, direction 1.7e-9).
    np.testing.assert_allclose(img.GetSpacing(), ref.GetSpacing(), rtol=2e-7)
    np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), rtol=0, atol=4e-6)
    np.testing.assert_allclose(img.GetDirection(), ref.GetDirection(), rtol=0, atol=1e-6)
    data, props = read_images([out])  # and fastseg reads it as any other case
    assert data.shape == (1, 7, 24, 30) and props["spacing"] == pytest.approx([2.5, 0.8, 0.7], rel=2e-7)


def test_dicom_refuses_gaps_and_ambiguity(tmp_path, rng):
    volume = rng.integers(-100, 100, size=(8, 16, 16)).astype(np.int16)
    write_series(
        tmp_path / "gap", volume, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), "1.2.3.4.555", skip=(4,)
    )
    with pytest.raises(ValueError, match="unevenly spaced: gap 4 mm .* a slice is missing"):
        convert_dicom(tmp_path / "gap", tmp_path / "gap.nii.gz")
    assert not (tmp_path / "gap.nii.gz").exists()
    assert convert_dicom(tmp_path / "gap", tmp_path / "gap.nii.gz", allow_irregular=True).exists()

    write_series(
        tmp_path / "two",
        volume,
        (1.0, 1.0, 2.0),
        (0.0, 0.0, 0.0),
        tuple(np.eye(3).ravel()),
        "1.2.3.4.601",
        description="first",
    )
    write_series(
        tmp_path / "two",
        volume[:5],
        (1.0, 1.0, 3.0),
        (0.0, 0.0, 0.0),
        tuple(np.eye(3).ravel()),
        "1.2.3.4.602",
        description="second",
    )
    assert [s.description for s in list_dicom_series(tmp_path / "two")] == ["first", "second"]
    with pytest.raises(
        ValueError, match=r"holds 2 series; choose one with --series-uid:\n  1.2.3.4.601  8 files  CT 'first'"
    ):
        convert_dicom(tmp_path / "two", tmp_path / "x.nii.gz")
    out = convert_dicom(tmp_path / "two", tmp_path / "second.nii.gz", series_uid="1.2.3.4.602")
    assert sitk.ReadImage(str(out)).GetSize() == (16, 16, 5)
    with pytest.raises(ValueError, match="no series '9.9'"):
        convert_dicom(tmp_path / "two", tmp_path / "x.nii.gz", series_uid="9.9")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no DICOM series found"):
        convert_dicom(tmp_path / "empty", tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match="output must end in one of"):
        convert_dicom(tmp_path / "two", tmp_path / "x.png")


# --- CLI ------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastseg")
    convert_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(tmp_path, rng, capsys):
    src = tmp_path / "npz"
    src.mkdir()
    npz_3d(src / "a.npz", rng)
    out = tmp_path / "Dataset502"
    assert _cli(["convert", "medsam", str(src), "-o", str(out), "--name", "Two", "-j", "1"]) == 0
    assert capsys.readouterr().out.startswith("OK:")
    assert json.loads((out / "dataset.json").read_text())["name"] == "Two"
    assert _cli(["convert", "medsam", str(src), "-o", str(out), "-j", "1"]) == 2
    assert "not empty" in capsys.readouterr().err

    write_series(
        tmp_path / "dcm",
        np.zeros((3, 8, 8), np.int16),
        (1.0, 1.0, 1.0),
        (0.0, 0.0, 0.0),
        tuple(np.eye(3).ravel()),
        "1.2.3.777",
    )
    assert _cli(["convert", "dicom", str(tmp_path / "dcm"), "-o", str(tmp_path / "ct.nii.gz")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ct.nii.gz")
    assert _cli(["convert", "dicom", str(tmp_path / "nothing"), "-o", str(tmp_path / "ct2.nii.gz")]) == 2
    assert "is not a folder" in capsys.readouterr().err
