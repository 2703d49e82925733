"""fastseg.io readers, writers and raw-dataset layout against nnunetv2's reader classes and utilities.

Real files where a package ships them: nilearn's MNI152 T1 (a NIfTI with a non-identity direction)
and stardist's 2D/3D nuclei TIFFs with instance labels.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from nnunetv2.imageio import natural_image_reader_writer as nnunet_natural
from nnunetv2.imageio import nibabel_reader_writer as nnunet_nib
from nnunetv2.imageio import simpleitk_reader_writer as nnunet_sitk
from nnunetv2.imageio import tif_reader_writer as nnunet_tif
from nnunetv2.utilities import utils
from nnunetv2.utilities.label_handling import label_handling
from PIL import Image

from fastseg.io import (
    DatasetError,
    ImageFileError,
    LabelSpec,
    load_raw_dataset,
    read_images,
    read_seg,
    reader_for,
    split_ending,
    write_image,
    write_seg,
)


OBLIQUE = tuple(
    np.array([[0.9, -0.3, 0.316227766], [0.3, 0.95, 0.0842701], [-0.316227766, 0.0842701, 0.944911]]).ravel()
)


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing it (stardist needs csbdeep).
    tests/conftest.py stops the session when nilearn or stardist's images are missing."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
    return Path(list(spec.submodule_search_locations)[0], *parts)


MNI_T1 = package_file("nilearn", "datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
STARDIST_IMG2D = package_file("stardist", "data", "images", "img2d.tif")
STARDIST_MASK2D = package_file("stardist", "data", "images", "mask2d.tif")
STARDIST_IMG3D = package_file("stardist", "data", "images", "img3d.tif")
STARDIST_MASK3D = package_file("stardist", "data", "images", "mask3d.tif")


def orthonormal(direction) -> np.ndarray:
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    u, _, vt = np.linalg.svd(d)
    return u @ vt


def sitk_image(array: np.ndarray, spacing, origin, direction) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


# --- SimpleITK formats vs nnU-Net's SimpleITKIO ---------------------------------------------------


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha", ".gipl"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32], ids=lambda d: np.dtype(d).name)
def test_sitk_read_matches_nnunet(tmp_path, rng, ending, dtype):
    arr = (rng.normal(size=(7, 12, 17)) * 40 + 60).astype(dtype)
    direction = tuple(orthonormal(OBLIQUE).ravel())
    path = tmp_path / f"img{ending}"
    sitk.WriteImage(sitk_image(arr, (0.7, 0.8, 3.0), (-10.5, 20.25, 5.0), direction), str(path))
    ours, props = read_images([path])
    ref, ref_props = nnunet_sitk.SimpleITKIO().read_images([str(path)])
    assert ours.dtype == np.float32 and ours.shape == (1, 7, 12, 17)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_allclose(props["spacing"], ref_props["spacing"])
    assert props["spacing"] == pytest.approx([3.0, 0.8, 0.7])
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(props["sitk_stuff"][key], ref_props["sitk_stuff"][key])


@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
def test_2d_sitk_file_reads_like_nnunet(tmp_path, rng, ending):
    arr = rng.integers(0, 300, size=(31, 23)).astype(np.int16)
    path = tmp_path / f"slice{ending}"
    sitk.WriteImage(sitk_image(arr, (0.5, 0.75), (1.0, 2.0), (1.0, 0.0, 0.0, 1.0)), str(path))
    ours, props = read_images([path])
    ref, ref_props = nnunet_sitk.SimpleITKIO().read_images([str(path)])
    assert ours.shape == (1, 1, 31, 23)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_allclose(props["spacing"], ref_props["spacing"])  # (999 * 0.75, 0.75, 0.5)
    seg = (arr > 150).astype(np.uint8)
    write_seg(seg[None], tmp_path / f"seg{ending}", props)  # (1, y, x) as nnU-Net's exporter passes it
    back = sitk.ReadImage(str(tmp_path / f"seg{ending}"))
    assert back.GetDimension() == 2 and back.GetSpacing() == (0.5, 0.75) and back.GetOrigin() == (1.0, 2.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), seg)


def test_4d_file_is_channels(tmp_path, rng):
    arr = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    path = tmp_path / "multi.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=False), str(path))
    ours, props = read_images([path])
    ref, ref_props = nnunet_sitk.SimpleITKIO().read_images([str(path)])
    assert ours.shape == (2, 5, 6, 7)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_allclose(props["spacing"], ref_props["spacing"])
    write_seg(np.ones((5, 6, 7), np.uint8), tmp_path / "seg.nii.gz", props)  # 4D geometry reduced to 3D
    assert sitk.ReadImage(str(tmp_path / "seg.nii.gz")).GetSize() == (7, 6, 5)


def _write_nibabel(path: Path, array_zyx: np.ndarray, *, endianness: str = "<", slope: float | None = None) -> None:
    nib = pytest.importorskip("nibabel")
    header = nib.Nifti1Header(endianness=endianness)
    header.set_data_dtype(array_zyx.dtype.newbyteorder(endianness))
    image = nib.Nifti1Image(array_zyx.T, np.diag([0.8, 0.9, 2.5, 1.0]), header)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    nib.save(image, str(path))


@pytest.mark.parametrize(
    "name,make",
    [
        pytest.param("f32.nii.gz", lambda p, a: sitk.WriteImage(sitk_image(a, (0.7, 0.8, 3.0), (-1.0, 2.0, 5.0), tuple(orthonormal(OBLIQUE).ravel())), str(p)), id="float32-nii.gz-oblique"),
        pytest.param("f64.nii", lambda p, a: sitk.WriteImage(sitk.GetImageFromArray(a.astype(np.float64)), str(p)), id="float64-nii"),
        pytest.param("slice.nii.gz", lambda p, a: sitk.WriteImage(sitk.GetImageFromArray(a[0]), str(p)), id="2d"),
        pytest.param("t.nii.gz", lambda p, a: sitk.WriteImage(sitk.GetImageFromArray(np.stack([a, -a]), isVector=False), str(p)), id="4d"),
        pytest.param("be.nii.gz", lambda p, a: _write_nibabel(p, a, endianness=">"), id="big-endian"),
        pytest.param("scaled.nii.gz", lambda p, a: _write_nibabel(p, a, slope=2.0), id="scl_slope-2"),
        pytest.param("i16.nii.gz", lambda p, a: sitk.WriteImage(sitk.GetImageFromArray(np.nan_to_num(a, posinf=0.0, neginf=0.0).astype(np.int16)), str(p)), id="int16"),
        pytest.param("f32.nrrd", lambda p, a: sitk.WriteImage(sitk.GetImageFromArray(a), str(p)), id="float32-nrrd"),
    ],
)
def test_counting_read_is_simpleitk_read_plus_the_nan_it_hides(tmp_path, rng, name, make):
    from fastseg.io.sitk_format import SimpleITKFormat

    arr = (rng.normal(size=(5, 6, 7)) * 40).astype(np.float32)
    arr[1, 2, 3], arr[4, 0, 0], arr[0, 5, 6] = np.nan, np.inf, -np.inf
    path = tmp_path / name
    make(path, arr)
    from fastseg.io.sitk_format import _read_with_sitk

    fmt = SimpleITKFormat()
    got, props, hidden = fmt.read_counting_nonfinite(path, "image")
    ref, ref_props = _read_with_sitk(path)  # sitk.ReadImage + GetArrayFromImage
    for array, properties in ((got, props), fmt.read(path, "image")):
        assert array.dtype == ref.dtype and array.shape == ref.shape and array.dtype.isnative
        np.testing.assert_array_equal(array, ref)
        assert properties == ref_props
    images, _ = read_images([path])  # what the rest of fastseg gets: a float32 array of its own
    assert images.flags.writeable and images.flags.c_contiguous and images.dtype == np.float32
    image = sitk.ReadImage(str(path))
    is_float_nifti = ".nii" in name and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64)
    written = {"slice.nii.gz": arr[0], "t.nii.gz": np.stack([arr, -arr])}.get(name, arr)
    n_source = int((~np.isfinite(written)).sum())
    assert hidden == (n_source if is_float_nifti else 0)
    if name.endswith(".nrrd"):
        assert int((~np.isfinite(got)).sum()) == n_source  # kept in the array: verification counts it there


def test_gunzip_is_gzip_decompress(rng):
    import gzip
    import zlib

    from fastseg.io.integrity import gunzip

    payload = rng.normal(size=20000).astype(np.float32).tobytes()
    one = gzip.compress(payload)
    assert gunzip(one) == payload
    assert gunzip(one + gzip.compress(b"tail")) == payload + b"tail"  # several members
    with pytest.raises((EOFError, OSError, zlib.error)):
        gunzip(one[: len(one) // 2])  # cut short: the standard library's error


def test_counting_read_of_a_truncated_file_is_an_error_naming_it(tmp_path, rng):
    from fastseg.io.sitk_format import SimpleITKFormat

    path = tmp_path / "img.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(rng.normal(size=(8, 32, 32)).astype(np.float32)), str(path))
    cut = _truncate(path)
    with pytest.raises(ImageFileError, match=cut.name):
        SimpleITKFormat().read_counting_nonfinite(cut, "image")


@pytest.mark.parametrize("name,shape", [("a.nii.gz", (5, 6, 7)), ("b.nii", (3, 4, 5)), ("c.nii.gz", (2, 3, 4, 5)), ("d.nrrd", (5, 6, 7))])
def test_image_voxels_from_the_header(tmp_path, name, shape):
    from fastseg.io.images import image_voxels

    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.int16), isVector=False), str(path))
    assert image_voxels(path) == int(np.prod(shape))


def test_multichannel_case_stacks_in_order(tmp_path, rng):
    arrays = [rng.normal(size=(4, 9, 11)).astype(np.float32) + 10 * c for c in range(3)]
    paths = []
    for c, a in enumerate(arrays):
        paths.append(tmp_path / f"case_{c:04d}.nii.gz")
        sitk.WriteImage(sitk_image(a, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())), str(paths[-1]))
    ours, _ = read_images(paths)
    ref, _ = nnunet_sitk.SimpleITKIO().read_images([str(p) for p in paths])
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(ours, np.stack(arrays))


def test_real_mni_t1_matches_nnunet_and_round_trips(tmp_path):
    data, props = read_images([MNI_T1])
    ref, ref_props = nnunet_sitk.SimpleITKIO().read_images([str(MNI_T1)])
    np.testing.assert_array_equal(data, ref)
    assert props["sitk_stuff"]["direction"] == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    np.testing.assert_allclose(props["spacing"], ref_props["spacing"])

    write_image(data[0], tmp_path / "t1.nii.gz", props)
    back, back_props = read_images([tmp_path / "t1.nii.gz"])
    np.testing.assert_array_equal(back, data)
    assert back_props["sitk_stuff"] == props["sitk_stuff"]

    mask = (data[0] > np.percentile(data[0], 80)).astype(np.uint8) + (data[0] > np.percentile(data[0], 95))
    write_seg(mask, tmp_path / "mask.nii.gz", props)
    seg, seg_props = read_seg(tmp_path / "mask.nii.gz")
    assert seg.dtype == np.int16 and seg.shape == (1, *mask.shape)
    np.testing.assert_array_equal(seg[0], mask)
    assert seg_props["sitk_stuff"] == props["sitk_stuff"]
    # nnU-Net reads what we wrote, and we read what nnU-Net writes
    nn_seg, nn_props = nnunet_sitk.SimpleITKIO().read_seg(str(tmp_path / "mask.nii.gz"))
    np.testing.assert_array_equal(nn_seg, seg)
    nnunet_sitk.SimpleITKIO().write_seg(mask, str(tmp_path / "nn.nii.gz"), ref_props)
    seg2, props2 = read_seg(tmp_path / "nn.nii.gz")
    np.testing.assert_array_equal(seg2[0], mask)
    assert props2["sitk_stuff"] == props["sitk_stuff"]


def test_write_seg_with_nnunet_nibabel_properties(tmp_path, rng):
    """Properties from nnU-Net's NibabelIO (its reader for .nii) carry a RAS affine; we write the same grid."""
    direction = tuple(orthonormal(OBLIQUE).ravel())
    path = tmp_path / "img.nii.gz"
    sitk.WriteImage(
        sitk_image(rng.random((5, 7, 9)).astype(np.float32), (0.7, 0.9, 2.0), (3.0, -4.0, 5.0), direction), str(path)
    )
    _, nib_props = nnunet_nib.NibabelIO().read_images([str(path)])
    seg = rng.integers(0, 3, (5, 7, 9)).astype(np.uint8)
    write_seg(seg, tmp_path / "ours.nii.gz", nib_props)
    nnunet_nib.NibabelIO().write_seg(seg, str(tmp_path / "theirs.nii.gz"), nib_props)
    ours, theirs = sitk.ReadImage(str(tmp_path / "ours.nii.gz")), sitk.ReadImage(str(tmp_path / "theirs.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):  # equal today
        np.testing.assert_allclose(getattr(ours, get)(), getattr(theirs, get)(), rtol=0, atol=1e-6)
    # NIfTI stores the rotation as a float32 quaternion: measured 2.7e-8 from the one written.
    np.testing.assert_allclose(ours.GetDirection(), direction, rtol=0, atol=1e-6)


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_keeps_oblique_geometry(tmp_path, rng, ending):
    direction = tuple(orthonormal(OBLIQUE).ravel())
    seg = rng.integers(0, 4, size=(6, 10, 8)).astype(np.uint8)
    props = {
        "spacing": [2.5, 0.6, 0.7],
        "sitk_stuff": {"spacing": (0.7, 0.6, 2.5), "origin": (-101.5, 33.3, 7.0), "direction": direction},
    }
    write_seg(seg, tmp_path / f"seg{ending}", props)
    back, back_props = read_seg(tmp_path / f"seg{ending}")
    np.testing.assert_array_equal(back[0], seg)
    np.testing.assert_allclose(back_props["sitk_stuff"]["spacing"], props["sitk_stuff"]["spacing"])
    # NIfTI stores the origin in float32: within half an ulp at |x| ~ 100 (3.8e-6; measured 7.6e-7).
    np.testing.assert_allclose(back_props["sitk_stuff"]["origin"], props["sitk_stuff"]["origin"], rtol=0, atol=4e-6)
    np.testing.assert_allclose(back_props["sitk_stuff"]["direction"], direction, atol=1e-6)
    assert back_props["spacing"] == pytest.approx(props["spacing"])

    probs = rng.random((6, 10, 8)).astype(np.float32)
    write_image(probs, tmp_path / f"prob{ending}", props)
    img = sitk.ReadImage(str(tmp_path / f"prob{ending}"))
    assert img.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), probs)


def test_write_seg_uses_nnunet_dtype_rule(tmp_path):
    props = {"spacing": [1.0, 1.0, 1.0]}
    write_seg(np.full((2, 3, 4), 254, np.int64), tmp_path / "a.nii.gz", props)
    write_seg(np.full((2, 3, 4), 255, np.int64), tmp_path / "b.nii.gz", props)
    write_seg(np.full((2, 3, 4), 70000, np.int64), tmp_path / "c.nii.gz", props)
    assert sitk.ReadImage(str(tmp_path / "a.nii.gz")).GetPixelID() == sitk.sitkUInt8
    assert sitk.ReadImage(str(tmp_path / "b.nii.gz")).GetPixelID() == sitk.sitkUInt16
    assert sitk.ReadImage(str(tmp_path / "c.nii.gz")).GetPixelID() == sitk.sitkUInt32
    seg, _ = read_seg(tmp_path / "c.nii.gz")
    assert seg.dtype == np.int32 and int(seg.max()) == 70000
    # without sitk_stuff: spacing (z, y, x) from properties, origin 0, identity direction
    img = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    assert img.GetOrigin() == (0.0, 0.0, 0.0) and img.GetDirection() == tuple(np.eye(3).ravel())


def test_write_is_atomic_and_validates(tmp_path):
    props = {"spacing": [1.0, 1.0, 1.0]}
    target = tmp_path / "seg.nii.gz"
    write_seg(np.ones((2, 2, 2), np.uint8), target, props)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="negative label -1"):
        write_seg(-np.ones((2, 2, 2), np.int16), target, props)
    with pytest.raises(ValueError, match="non-integer"):
        write_seg(np.full((2, 2, 2), 0.5), target, props)
    with pytest.raises(ValueError, match=r"got shape \(2, 2, 2, 2\)"):
        write_seg(np.ones((2, 2, 2, 2)), target, props)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]  # no temporary left behind
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_seg(np.ones((2, 2, 2), np.uint8), tmp_path / "missing" / "seg.nii.gz", props)


# --- segmentation dtype and content ---------------------------------------------------------------


def test_read_seg_returns_integers(tmp_path):
    props = {"spacing": [1.0, 1.0, 1.0]}
    path = tmp_path / "float_labels.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.array([[[0.0, 1.0], [2.0, 3.0]]], np.float32)), str(path))
    seg, _ = read_seg(path)
    assert seg.dtype == np.int16
    np.testing.assert_array_equal(seg, [[[[0, 1], [2, 3]]]])
    ref, _ = nnunet_sitk.SimpleITKIO().read_seg(str(path))
    np.testing.assert_array_equal(seg, ref)  # same values as nnU-Net's float32

    for name, values, message in [
        ("frac.nii.gz", [0.0, 1.5], r"non-integer values \(e.g. 1.5\)"),
        ("nan.nrrd", [0.0, np.nan], "1 NaN"),  # NIfTI readers turn NaN into 0: see test_verify
        ("inf.mha", [np.inf, 1.0], "1 Inf"),
    ]:
        sitk.WriteImage(sitk.GetImageFromArray(np.array([[values]], np.float32)), str(tmp_path / name))
        with pytest.raises(ImageFileError, match=message) as err:
            read_seg(tmp_path / name)
        assert name in str(err.value)
    write_seg(np.zeros((1, 2, 2), np.uint8), tmp_path / "ok.nii.gz", props)


# --- natural 2D images vs nnU-Net's NaturalImage2DIO ----------------------------------------------


def _natural_files(tmp_path, rng) -> dict[str, Path]:
    gray = rng.integers(0, 256, (21, 34), dtype=np.uint8)
    rgb = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (21, 34, 4), dtype=np.uint8)
    g16 = rng.integers(0, 65535, (21, 34), dtype=np.uint16)
    files = {
        "gray.png": gray,
        "rgb.png": rgb,
        "rgba.png": rgba,
        "gray16.png": g16,
        "gray.bmp": gray,
        "rgb.bmp": rgb,
    }
    out = {}
    for name, a in files.items():
        Image.fromarray(a).save(tmp_path / name)
        out[name] = tmp_path / name
    tifffile.imwrite(tmp_path / "gray.tif", g16)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    out["gray.tif"], out["rgb.tif"] = tmp_path / "gray.tif", tmp_path / "rgb.tif"
    return out


def test_natural_images_match_nnunet(tmp_path, rng):
    for name, path in _natural_files(tmp_path, rng).items():
        ours, props = read_images([path])
        ref, ref_props = nnunet_natural.NaturalImage2DIO().read_images([str(path)])
        assert ours.dtype == np.float32 and ours.shape == ref.shape, name
        np.testing.assert_array_equal(ours, ref, err_msg=name)
        assert props["spacing"] == list(ref_props["spacing"]) == [999, 1, 1]


def test_natural_seg_round_trip_and_palette(tmp_path, rng):
    seg = rng.integers(0, 5, (17, 19)).astype(np.uint8)
    write_seg(seg, tmp_path / "seg.png", {"spacing": [999, 1, 1]})
    back, props = read_seg(tmp_path / "seg.png")
    assert back.shape == (1, 1, 17, 19) and props["spacing"] == [999, 1, 1]
    np.testing.assert_array_equal(back[0, 0], seg)
    ref, _ = nnunet_natural.NaturalImage2DIO().read_seg(str(tmp_path / "seg.png"))
    np.testing.assert_array_equal(back, ref)

    palette = Image.fromarray(seg, mode="L").convert("P")  # VOC-style label PNG: pixel = palette index
    palette.putpalette([v for i in range(256) for v in (i * 40 % 256, i * 80 % 256, i * 120 % 256)])
    palette.save(tmp_path / "palette.png")
    back, _ = read_seg(tmp_path / "palette.png")
    np.testing.assert_array_equal(back[0, 0], np.asarray(palette))
    image, _ = read_images([tmp_path / "palette.png"])
    assert image.shape == (3, 1, 17, 19)  # as an image, the palette is applied (as nnU-Net reads it)

    with pytest.raises(ImageFileError, match="3 color channels"):
        Image.fromarray(rng.integers(0, 3, (5, 6, 3), dtype=np.uint8)).save(tmp_path / "rgbseg.png")
        read_seg(tmp_path / "rgbseg.png")
    with pytest.raises(ValueError, match="stores whole numbers"):
        write_image(np.full((4, 4), 0.5, np.float32), tmp_path / "float.png", {"spacing": [999, 1, 1]})


@pytest.mark.parametrize(
    "name, image",
    [
        pytest.param("rgb.png", np.arange(3 * 20 * 30, dtype=np.uint8).reshape(3, 1, 20, 30), id="png-rgb"),
        pytest.param("gray16.png", np.arange(20 * 30, dtype=np.uint16).reshape(1, 20, 30) * 50, id="png-16bit"),
        pytest.param("rgb.tif", np.arange(3 * 20 * 30, dtype=np.uint8).reshape(3, 1, 20, 30), id="tif-rgb"),
        pytest.param("float.tif", np.linspace(-1, 1, 600, dtype=np.float32).reshape(20, 30), id="tif-float"),
        pytest.param("gray.bmp", np.arange(600, dtype=np.uint8).reshape(20, 30), id="bmp"),
    ],
)
def test_write_image_round_trips_natural_formats(tmp_path, name, image):
    write_image(image, tmp_path / name, {"spacing": [999, 1, 1]})
    back, props = read_images([tmp_path / name])
    expected = image.reshape(-1, 1, 20, 30)
    assert back.shape == expected.shape and props["spacing"] == [999, 1, 1]
    np.testing.assert_array_equal(back, expected.astype(np.float32))
    ref, _ = nnunet_natural.NaturalImage2DIO().read_images([str(tmp_path / name)])
    np.testing.assert_array_equal(back, ref)


def test_real_stardist_2d_nuclei(tmp_path):
    ours, props = read_images([STARDIST_IMG2D])
    ref, ref_props = nnunet_natural.NaturalImage2DIO().read_images([str(STARDIST_IMG2D)])
    np.testing.assert_array_equal(ours, ref)
    assert props["spacing"] == list(ref_props["spacing"])
    seg, _ = read_seg(STARDIST_MASK2D)
    ref_seg, _ = nnunet_natural.NaturalImage2DIO().read_seg(str(STARDIST_MASK2D))
    np.testing.assert_array_equal(seg, ref_seg)
    assert seg.dtype == np.int16 and len(np.unique(seg)) > 100  # instance labels
    write_seg(seg[0], tmp_path / "mask.png", props)
    back, _ = read_seg(tmp_path / "mask.png")
    np.testing.assert_array_equal(back, seg)


# --- 3D TIFF vs nnU-Net's Tiff3DIO ------------------------------------------------------------------


def test_tiff3d_matches_nnunet(tmp_path, rng):
    vol = rng.integers(0, 1000, (6, 13, 11)).astype(np.uint16)
    lab = rng.integers(0, 3, (6, 13, 11)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "case_0000.tif", vol)
    tifffile.imwrite(tmp_path / "case.tif", lab)
    (tmp_path / "case.json").write_text(json.dumps({"spacing": [4.0, 0.5, 0.5]}))
    ours, props = read_images([tmp_path / "case_0000.tif"])
    ref, ref_props = nnunet_tif.Tiff3DIO().read_images([str(tmp_path / "case_0000.tif")])
    np.testing.assert_array_equal(ours, ref)
    assert props["spacing"] == ref_props["spacing"] == [4.0, 0.5, 0.5]
    seg, seg_props = read_seg(tmp_path / "case.tif")
    ref_seg, ref_seg_props = nnunet_tif.Tiff3DIO().read_seg(str(tmp_path / "case.tif"))
    np.testing.assert_array_equal(seg, ref_seg)
    assert seg_props["spacing"] == ref_seg_props["spacing"]

    (tmp_path / "out").mkdir()
    write_seg(lab, tmp_path / "out" / "pred.tif", props)
    assert json.loads((tmp_path / "out" / "pred.json").read_text()) == {"spacing": [4.0, 0.5, 0.5]}
    back, back_props = read_seg(tmp_path / "out" / "pred.tif")
    np.testing.assert_array_equal(back[0], lab)
    assert back_props["spacing"] == [4.0, 0.5, 0.5]


def test_real_stardist_3d_stack_without_sidecar(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        ours, props = read_images([STARDIST_IMG3D])
    assert "no spacing sidecar" in caplog.text
    ref, _ = nnunet_tif.Tiff3DIO().read_images([str(STARDIST_IMG3D)])
    np.testing.assert_array_equal(ours, ref)
    assert props["spacing"] == [1.0, 1.0, 1.0]
    seg, _ = read_seg(STARDIST_MASK3D)
    np.testing.assert_array_equal(seg[0], tifffile.imread(STARDIST_MASK3D))


# --- broken files ---------------------------------------------------------------------------------


def _truncate(path: Path, fraction: float = 0.6) -> Path:
    data = path.read_bytes()
    out = path.with_name("cut_" + path.name)
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".gipl", ".nrrd", ".mha", ".png", ".tif"])
def test_truncated_file_is_an_error_naming_it(tmp_path, rng, ending):
    if ending == ".png":
        path = tmp_path / "img.png"
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    elif ending == ".tif":
        path = tmp_path / "img_0000.tif"
        tifffile.imwrite(path, rng.integers(0, 256, (8, 32, 32), dtype=np.uint8))
    else:
        path = tmp_path / f"img{ending}"
        sitk.WriteImage(sitk.GetImageFromArray(rng.normal(size=(8, 32, 32)).astype(np.float32)), str(path))
    cut = _truncate(path)
    with pytest.raises(ImageFileError) as err:
        read_images([cut])
    assert cut.name in str(err.value)
    read_images([path])  # the intact file reads


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(ImageFileError, match="junk.nii.gz"):
        read_images([tmp_path / "junk.nii.gz"])
    with pytest.raises(ImageFileError, match="file not found"):
        read_seg(tmp_path / "nothing.nii.gz")
    with pytest.raises(ValueError, match="at least one file"):
        read_images([])


def test_channels_must_share_a_grid(tmp_path, rng, caplog):
    def write(name, shape=(4, 5, 6), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)):
        sitk.WriteImage(
            sitk_image(rng.random(shape).astype(np.float32), spacing, origin, tuple(np.eye(3).ravel())),
            str(tmp_path / name),
        )
        return tmp_path / name

    a = write("a_0000.nii.gz")
    with pytest.raises(ImageFileError, match=r"shape \(4, 5, 7\) of b_0001.nii.gz differs"):
        read_images([a, write("b_0001.nii.gz", shape=(4, 5, 7))])
    with pytest.raises(ImageFileError, match="spacing .* of c_0001.nii.gz differs"):
        read_images([a, write("c_0001.nii.gz", spacing=(1.0, 1.0, 3.0))])
    with caplog.at_level(logging.WARNING):
        data, _ = read_images([a, write("d_0001.nii.gz", origin=(5.0, 0.0, 0.0))])
    assert data.shape == (2, 4, 5, 6) and "origin" in caplog.text
    with pytest.raises(ValueError, match="share one file ending"):
        read_images([a, tmp_path / "x.png"])


# --- reader choice --------------------------------------------------------------------------------


def test_reader_for_and_split_ending():
    assert reader_for(".nii.gz").name == "SimpleITK"
    assert reader_for(".NII.GZ").name == "SimpleITK"
    assert reader_for(".png").name == "NaturalImage2D"
    assert reader_for(".tiff").name == "TIFF"
    with pytest.raises(ValueError, match=r"unsupported file ending '\.ni\.gz'.*Did you mean '\.nii\.gz'"):
        reader_for(".ni.gz")
    with pytest.raises(ValueError, match="unsupported file ending '.jpg'"):
        reader_for(".jpg")
    assert split_ending("/a/b/case_0000.nii.gz") == ("case_0000", ".nii.gz")
    assert split_ending("case.PNG") == ("case", ".PNG")
    assert split_ending("notes.txt") == ("notes", ".txt")


# --- raw dataset layout vs nnU-Net's get_filenames_of_train_images_and_targets ------------------


def _toy_dataset(root: Path, cases=("b_case", "a_case", "c_1"), channels=2, ending=".nii.gz", extra_json=None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    img = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32))
    for case in cases:
        for c in range(channels):
            sitk.WriteImage(img, str(root / "imagesTr" / f"{case}_{c:04d}{ending}"))
        sitk.WriteImage(sitk.Cast(img, sitk.sitkUInt8), str(root / "labelsTr" / f"{case}{ending}"))
    for c in range(channels):
        sitk.WriteImage(img, str(root / "imagesTs" / f"test1_{c:04d}{ending}"))
    content = {
        "channel_names": {str(c): f"MR{c}" for c in range(channels)},
        "labels": {"background": 0, "whole": [1, 2], "core": [2], "ignore": 3},
        "regions_class_order": [1, 2],
        "numTraining": len(cases),
        "file_ending": ending,
        **(extra_json or {}),
    }
    (root / "dataset.json").write_text(json.dumps(content))
    return root


def test_load_raw_dataset_matches_nnunet(tmp_path):
    root = _toy_dataset(tmp_path / "Dataset001_Toy")
    ds = load_raw_dataset(root)
    ref = utils.get_filenames_of_train_images_and_targets(str(root))
    assert list(ds.cases) == sorted(ref) == ["a_case", "b_case", "c_1"]
    for case, files in ds.cases.items():
        assert [str(p) for p in files.images] == ref[case]["images"]
        assert str(files.label) == ref[case]["label"]
    assert list(ds.test_cases) == ["test1"] and ds.test_cases["test1"].label is None
    assert ds.num_channels == 2 and ds.file_ending == ".nii.gz" and ds.name == "Dataset001_Toy"
    manager = label_handling.LabelManager(ds.dataset_json["labels"], regions_class_order=ds.regions_class_order)
    assert ds.has_regions == manager.has_regions is True
    assert ds.ignore_label == manager.ignore_label == 3
    assert ds.all_labels == list(manager.all_labels) == [0, 1, 2]
    assert ds.label_spec.regions == [tuple(r) if isinstance(r, (list, tuple)) else r for r in manager.all_regions]
    assert ds.labels == {"background": 0, "whole": (1, 2), "core": (2,), "ignore": 3}


def test_load_raw_dataset_with_listed_cases_and_env(tmp_path, monkeypatch):
    root = _toy_dataset(tmp_path / "ds", cases=("x",), channels=1)
    listed = {"x": {"images": ["$DATA/imagesTr/x_0000.nii.gz"], "label": "labelsTr/x.nii.gz"}}
    content = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**content, "dataset": listed}))
    ds = load_raw_dataset(root, env={"DATA": str(root)})
    assert ds.cases["x"].images == [root / "imagesTr" / "x_0000.nii.gz"]
    assert ds.cases["x"].label == (root / "labelsTr" / "x.nii.gz").resolve()
    # nnU-Net resolves the same files (it expands from os.environ)
    with monkeypatch.context() as patch:
        patch.setenv("DATA", str(root))
        ref = utils.get_filenames_of_train_images_and_targets(str(root))
    assert [str(p) for p in ds.cases["x"].images] == ref["x"]["images"]
    with pytest.raises(DatasetError, match=r"\$DATA/imagesTr/x_0000.nii.gz"):
        load_raw_dataset(root)  # without env the variable is not expanded: the file is missing


def test_load_raw_dataset_raises_with_every_problem(tmp_path):
    root = _toy_dataset(tmp_path / "ds")
    (root / "imagesTr" / "a_case_0001.nii.gz").unlink()
    (root / "labelsTr" / "b_case.nii.gz").unlink()
    with pytest.raises(DatasetError) as err:
        load_raw_dataset(root)
    text = str(err.value)
    assert "imagesTr/a_case_0001.nii.gz" in text and "labelsTr/b_case.nii.gz" in text and "fastseg verify" in text
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="dataset.json: not found"):
        load_raw_dataset(tmp_path / "empty")


@pytest.mark.parametrize(
    "labels, order, problem",
    [
        pytest.param({"background": 0, "a": 1, "b": 3}, None, "consecutive", id="gap"),
        pytest.param({"a": 1}, None, "no 'background'", id="no-background"),
        pytest.param({"background": 0, "a": 1, "ignore": 3}, None, "max(labels) + 1 = 2", id="ignore-not-last"),
        pytest.param({"background": 0, "a": [1, 2], "b": 2}, None, "no 'regions_class_order'", id="regions-no-order"),
        pytest.param(
            {"background": 0, "a": [1, 2], "b": 2}, [1], "1 entries but labels define 2", id="regions-order-length"
        ),
        pytest.param({"background": 0, "a": "x"}, None, "not an integer", id="not-int"),
    ],
)
def test_label_spec_problems(labels, order, problem):
    spec = LabelSpec.from_json(labels, order)
    assert any(problem in p for p in spec.problems), spec.problems


def test_label_spec_agrees_with_nnunet():
    cases = [
        ({"background": 0, "liver": 1, "tumor": 2}, None),
        ({"background": 0, "whole": (1, 2, 3), "core": (2, 3), "et": 3}, [1, 2, 3]),
        ({"background": 0, "a": 1, "ignore": 2}, None),
        ({"background": 0, "a": [1], "b": 2}, None),
    ]
    for labels, order in cases:
        ours = LabelSpec.from_json(labels, order)
        ref = label_handling.LabelManager(labels, regions_class_order=order)
        assert not ours.problems
        assert ours.has_regions == ref.has_regions
        assert ours.all_labels == list(ref.all_labels)
        assert ours.ignore_label == ref.ignore_label
        assert ours.foreground_labels == [v for v in ref.all_labels if v != 0]
