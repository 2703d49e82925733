"""A DICOM series folder -> one NIfTI (or other SimpleITK format) file.

SimpleITK's `ImageSeriesReader` (GDCM) finds the series in a folder, sorts each series' slices by
position and stacks them with the spacing, origin and direction of the patient coordinate system.
Before reading we check what GDCM would only warn about: slices whose positions along the slice
normal are not evenly spaced (a missing or duplicated slice), which would otherwise give a volume
with the wrong geometry. After writing we read the file back and compare size, geometry and voxels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fastseg.io.errors import ImageFileError
from fastseg.io.formats import split_ending
from fastseg.io.sitk_format import SimpleITKFormat, read_sitk_image, write_sitk_image

logger = logging.getLogger(__name__)

_TAGS = {"description": "0008|103e", "modality": "0008|0060", "position": "0020|0032"}


@dataclass(frozen=True)
class DicomSeries:
    """One series in a folder.

    Attributes:
        uid: SeriesInstanceUID.
        files: slice files, sorted by GDCM.
        description: SeriesDescription ("" when absent).
        modality: Modality ("" when absent).
    """

    uid: str
    files: tuple[str, ...]
    description: str = ""
    modality: str = ""


def _header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return reader


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    tag = _TAGS[key]
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """The DICOM series directly in `folder` (not its sub-folders), sorted by UID."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass the folder holding the series' .dcm files")
    out = []
    for uid in sorted(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))):
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        if not files:
            continue
        try:
            head = _header(files[0])
            out.append(DicomSeries(uid, files, _tag(head, "description"), _tag(head, "modality")))
        except RuntimeError:
            out.append(DicomSeries(uid, files))
    return out


def slice_spacing_problem(series: DicomSeries, direction: tuple[float, ...], rtol: float = 0.2) -> str | None:
    """Says where slice positions are unevenly spaced along the slice normal, or returns None.

    Args:
        series: the series, slices in GDCM's order.
        direction: the volume's direction cosines (its third column is the slice normal).
        rtol: allowed relative deviation of a gap from the median gap (default 0.2).
    """
    if len(series.files) < 3:
        return None
    normal = np.asarray(direction, dtype=float).reshape(3, 3)[:, 2]
    positions = []
    for f in series.files:
        value = _tag(_header(f), "position")
        if not value:
            return None  # no positions to check (e.g. a multi-frame file): trust GDCM
        positions.append(float(np.dot([float(v) for v in value.split("\\")], normal)))
    gaps = np.diff(np.sort(positions))
    median = float(np.median(gaps))
    if median <= 0:
        return "several slices share one position (duplicated slices?)"
    bad = np.flatnonzero(np.abs(gaps - median) > rtol * median)
    if bad.size == 0:
        return None
    i = int(bad[0])
    return (
        f"slice positions are unevenly spaced: gap {gaps[i]:.4g} mm between slices {i} and {i + 1} vs a median of "
        f"{median:.4g} mm ({bad.size} irregular gap(s)); a slice is missing or duplicated"
    )


def convert_dicom(
    series_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    allow_irregular: bool = False,
) -> Path:
    """Reads one DICOM series and writes it as a single image file, then checks the written file.

    Args:
        series_dir: folder holding the series' files.
        out_path: output file, `.nii.gz` (or another SimpleITK ending: .nii .nrrd .mha); its folder
            is created.
        series_uid: which series when the folder holds several (default None: there must be one).
        allow_irregular: write even when slice gaps are uneven (default False: refuse).

    Returns:
        The written path.

    Raises:
        FileNotFoundError: no folder, or no DICOM series in it.
        ValueError: several series and no `series_uid` (the message lists them), an unknown UID, an
            unsupported output ending, or uneven slice spacing.
        ImageFileError: the series cannot be read, or the written file does not read back identically.
    """
    out_path = Path(out_path)
    ending = split_ending(out_path)[1].lower()
    if ending not in SimpleITKFormat.file_endings:
        raise ValueError(
            f"output must end in one of {SimpleITKFormat.file_endings} (e.g. CT.nii.gz), got {out_path.name!r}"
        )
    series = list_dicom_series(series_dir)
    if not series:
        raise FileNotFoundError(f"no DICOM series found in {series_dir}; pass the folder that holds the .dcm files")
    if series_uid is None:
        if len(series) > 1:
            listed = "\n".join(f"  {s.uid}  {len(s.files)} files  {s.modality} {s.description!r}" for s in series)
            raise ValueError(f"{series_dir} holds {len(series)} series; choose one with --series-uid:\n{listed}")
        chosen = series[0]
    else:
        matches = [s for s in series if s.uid == series_uid]
        if not matches:
            raise ValueError(f"no series {series_uid!r} in {series_dir}; found {[s.uid for s in series]}")
        chosen = matches[0]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ImageFileError(
            f"{series_dir}: series {chosen.uid} cannot be read ({str(e).strip().splitlines()[-1]})"
        ) from None
    if image.GetDimension() == 3:
        problem = slice_spacing_problem(chosen, image.GetDirection())
        if problem and not allow_irregular:
            raise ValueError(
                f"{series_dir}: {problem}; fix the series or pass allow_irregular=True (--allow-irregular)"
            )
        if problem:
            logger.warning("%s: %s", series_dir, problem)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_sitk_image(image, out_path)
    _check_written(image, out_path)
    logger.info(
        "wrote %s: %d slices, size %s, spacing %s", out_path, len(chosen.files), image.GetSize(), image.GetSpacing()
    )
    return out_path


def _check_written(image: sitk.Image, path: Path) -> None:
    back = read_sitk_image(path)
    same = (
        back.GetSize() == image.GetSize()
        and np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-4)
        and np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-3)
        and np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
        and np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    )
    if not same:
        path.unlink(missing_ok=True)
        raise ImageFileError(
            f"{path}: the written file does not read back identically to the DICOM series; it was removed"
        )
