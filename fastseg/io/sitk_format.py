"""SimpleITK formats: .nii.gz, .nii, .nrrd, .mha, .gipl.

Axis conventions (the same as nnU-Net's SimpleITKIO, so properties written by either are
interchangeable):

- SimpleITK sizes, spacings and origins are (x, y, z); `GetArrayFromImage` returns (z, y, x). The
  'spacing' property is SimpleITK's reversed, i.e. (z, y, x), made positive.
- A 2D file reads as (1, 1, y, x) with spacing (999 * max(spacing), sy, sx): the first axis is a
  dummy slice that a 3D planner must never resample.
- A 4D file reads as channels (t, z, y, x) with spacing (z, y, x).
- 'sitk_stuff' keeps {'spacing', 'origin', 'direction'} exactly as SimpleITK reports them; writing
  restores them, so a prediction lands on the input's physical grid.

Float NIfTI files (.nii, .nii.gz) are read in one pass by `fastseg.io.integrity.read_float_nifti`
(libdeflate decompresses them when the `deflate` package is installed), with the geometry from
SimpleITK's header read: the arrays and properties `sitk.ReadImage` gives, plus the number of
NaN/Inf voxels that ITK's reader turns into 0, which verification reports. Other files, and float
NIfTI files whose header asks for intensity scaling, are read by SimpleITK.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from fastseg.io.atomic import atomic_path
from fastseg.io.dtypes import image_storage_array, seg_storage_dtype
from fastseg.io.errors import ImageFileError
from fastseg.io.format_base import Role
from fastseg.io.integrity import nifti_nonfinite_voxels, read_float_nifti, truncation_problem

if TYPE_CHECKING:
    import SimpleITK as sitk

# SimpleITK is imported where it is used: listing a dataset picks this format by file ending
# (`fastseg.io.reader_for`) without reading an image, and importing SimpleITK takes a few tenths of
# a second -- on the critical path of a command's main process before its workers start. Worker
# processes preload it (their fork server imports it once).

#: nnU-Net's spacing for the dummy axis of 2D images is this factor times the largest in-plane spacing.
DUMMY_SPACING_FACTOR = 999


def _sitk_message(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "rror" in ln]
    return (errors or lines or [type(err).__name__])[-1]


def _check_readable(path: Path) -> None:
    """Raises `ImageFileError` for a missing or truncated file."""
    if not path.is_file():
        raise ImageFileError(f"{path}: file not found")
    problem = truncation_problem(path)
    if problem:
        raise ImageFileError(f"{path}: {problem}")


def read_sitk_image(path: Path) -> sitk.Image:
    """`sitk.ReadImage` with our truncation check and an `ImageFileError` that names the file."""
    import SimpleITK as sitk

    path = Path(path)
    _check_readable(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ImageFileError(f"{path}: cannot be read as an image ({_sitk_message(e)})") from None


def write_sitk_image(image: sitk.Image, path: Path) -> None:
    """`sitk.WriteImage` (compressed where the format allows), atomically."""
    import SimpleITK as sitk

    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), True)
        except RuntimeError as e:
            raise OSError(f"cannot write {path}: {_sitk_message(e)}") from None


def _check_components(path: Path, components: int) -> None:
    if components != 1:
        raise ImageFileError(
            f"{path}: has {components} components per voxel (a vector/RGB image); "
            "store each channel as its own file (case_0000, case_0001, ...)"
        )


def _as_channels(path: Path, array: np.ndarray, spacing, origin, direction) -> tuple[np.ndarray, dict]:
    """SimpleITK's (z, y, x) array as (C, z, y, x) with the properties `read` returns."""
    if array.ndim == 2:
        array = array[None, None]
        zyx = [max(spacing) * DUMMY_SPACING_FACTOR, spacing[1], spacing[0]]
    elif array.ndim == 3:
        array = array[None]
        zyx = list(spacing[::-1])
    elif array.ndim == 4:
        zyx = list(spacing[::-1][1:])
    else:
        raise ImageFileError(f"{path}: has {array.ndim} dimensions; expected a 2D, 3D or 4D image")
    props = {
        "spacing": [abs(float(s)) for s in zyx],
        "sitk_stuff": {"spacing": tuple(spacing), "origin": tuple(origin), "direction": tuple(direction)},
    }
    return array, props


def _read_with_sitk(path: Path) -> tuple[np.ndarray, dict]:
    import SimpleITK as sitk

    image = read_sitk_image(path)
    _check_components(path, image.GetNumberOfComponentsPerPixel())
    return _as_channels(path, sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection())


class SimpleITKFormat:
    """Reads and writes the formats SimpleITK handles, keeping their physical geometry."""

    name = "SimpleITK"
    file_endings = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl")

    def read(self, path: Path, role: Role) -> tuple[np.ndarray, dict]:
        """What `sitk.ReadImage` reads, as (C, z, y, x) and properties. A float NIfTI file's voxels
        are read by `fastseg.io.integrity.read_float_nifti` (the same values, decompressed faster;
        the array is then a read-only view of the decompressed file unless NaN/Inf had to be
        zeroed: `read_images` and `read_seg` return copies), its geometry by SimpleITK from the
        header."""
        array, props, _ = self.read_counting_nonfinite(path, role)
        return array, props

    def read_counting_nonfinite(self, path: Path, role: Role) -> tuple[np.ndarray, dict, int]:
        """`read`, plus the number of NaN/Inf voxels the reader turned into 0 (NIfTI only; other
        formats keep them in the array). A float NIfTI file is read once for both: its voxels by
        `fastseg.io.integrity.read_float_nifti`, its geometry from SimpleITK's header read."""
        import SimpleITK as sitk

        path = Path(path)
        name = path.name.lower()
        if not name.endswith((".nii", ".nii.gz")):
            return (*_read_with_sitk(path), 0)
        _check_readable(path)
        try:
            nifti = read_float_nifti(path)
        except (OSError, EOFError, zlib.error, ValueError) as e:
            raise ImageFileError(f"{path}: cannot be read as an image ({e}); the file is truncated or corrupt") from None
        if nifti is None:  # not float data (nothing hidden), or scaled: SimpleITK's read, then a count
            array, props = _read_with_sitk(path)
            return array, props, nifti_nonfinite_voxels(path) if array.dtype.kind == "f" else 0
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            raise ImageFileError(f"{path}: cannot be read as an image ({_sitk_message(e)})") from None
        _check_components(path, reader.GetNumberOfComponents())
        size = reader.GetSize()
        expected_id = sitk.sitkFloat32 if nifti.voxels.dtype == np.float32 else sitk.sitkFloat64
        if reader.GetPixelID() != expected_id or math.prod(size) != nifti.voxels.size:
            # A layout SimpleITK interprets differently from the header fields read here: its own read.
            return (*_read_with_sitk(path), nifti.nonfinite)
        array = nifti.voxels.reshape(size[::-1])
        return (*_as_channels(path, array, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()), nifti.nonfinite)

    def write(self, array: np.ndarray, path: Path, properties: dict, role: Role) -> None:
        import SimpleITK as sitk

        spacing, origin, direction = _geometry(array, properties)
        if len(spacing) == 2 and array.ndim == 3:
            if array.shape[0] != 1:
                raise ValueError(
                    f"cannot write {path}: the properties describe a 2D image but the array has shape {array.shape}; "
                    "pass (y, x) or (1, y, x)"
                )
            array = array[0]
        elif len(spacing) == 3 and array.ndim == 2:
            array = array[None]
        if role == "seg":
            array = array.astype(seg_storage_dtype(array), copy=False)
        else:
            array = image_storage_array(array)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
        write_sitk_image(image, path)


# NIfTI affines are RAS, SimpleITK's geometry is LPS: flip the first two world axes.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _from_nibabel(stuff: dict) -> tuple[tuple, tuple, tuple]:
    """SimpleITK geometry from nnU-Net NibabelIO's 'nibabel_stuff' (a RAS voxel-to-world affine of the
    file's (x, y, z) axes; NibabelIO's arrays are (z, y, x), the same layout as ours)."""
    if "reoriented_affine" in stuff:
        raise ValueError(
            "properties come from nnU-Net's NibabelIOWithReorient (reoriented to RAS); write with that class, "
            "or re-read the input with fastseg.io.read_images to get SimpleITK geometry"
        )
    affine = np.asarray(stuff["original_affine"], dtype=float)
    columns = affine[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    direction = _RAS_TO_LPS @ (columns / spacing)
    origin = _RAS_TO_LPS @ affine[:3, 3]
    return tuple(map(float, spacing)), tuple(map(float, origin)), tuple(map(float, direction.ravel()))


def _geometry(array: np.ndarray, properties: dict) -> tuple[tuple, tuple, tuple]:
    """(spacing, origin, direction) in SimpleITK order for writing `array`.

    From 'sitk_stuff' when present (a 4D source is reduced to its first three axes), else from
    nnU-Net NibabelIO's 'nibabel_stuff' affine; otherwise from 'spacing' (z, y, x) with origin 0 and
    identity direction, 2D when the array is (y, x) or a single slice whose dummy spacing marks a 2D
    image.
    """
    if "sitk_stuff" not in properties and "nibabel_stuff" in properties:
        return _from_nibabel(properties["nibabel_stuff"])
    stuff = properties.get("sitk_stuff")
    if stuff is not None:
        spacing, origin, direction = tuple(stuff["spacing"]), tuple(stuff["origin"]), tuple(stuff["direction"])
        if len(spacing) == 4:
            d = np.asarray(direction, dtype=float).reshape(4, 4)[:3, :3]
            spacing, origin, direction = spacing[:3], origin[:3], tuple(d.ravel())
        if len(spacing) not in (2, 3) or len(origin) != len(spacing) or len(direction) != len(spacing) ** 2:
            raise ValueError(
                f"properties['sitk_stuff'] is inconsistent: spacing {spacing}, origin {origin}, direction {direction}; "
                "pass the properties returned by read_images/read_seg"
            )
        return tuple(map(float, spacing)), tuple(map(float, origin)), tuple(map(float, direction))
    if "spacing" not in properties:
        raise ValueError(
            "properties need 'sitk_stuff' or 'spacing' to write a SimpleITK image; pass the reader's properties"
        )
    zyx = [float(s) for s in properties["spacing"]]
    two_d = array.ndim == 2 or (array.ndim == 3 and array.shape[0] == 1 and zyx[0] >= DUMMY_SPACING_FACTOR)
    xyz = tuple(zyx[::-1][:2]) if two_d else tuple(zyx[::-1])
    n = len(xyz)
    return xyz, (0.0,) * n, tuple(np.eye(n).ravel())
