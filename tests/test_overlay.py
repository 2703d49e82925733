"""`fastseg overlay` and the evaluation box plot: the slice picked, the pixels drawn (read back with
Pillow and compared with windowing, blending and magnification computed here by hand), the aspect
ratio, the legend, named errors that leave no file behind."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from fastseg import io as fio
from fastseg.commands import overlay as overlay_command
from fastseg.evaluate import evaluate_folders, to_json
from fastseg.evaluate import plots
from fastseg.evaluate.plots import OverlayStyle, overlay_folder, plot_summary

# Labels 1 and 2 are drawn red and green: written out here, not read from the module.
RED, GREEN = np.array([255, 0, 0]), np.array([0, 255, 0])
ALPHA = 0.4
SPACING = [3.0, 2.0, 1.0]  # z, y, x: a 10 x 20 slice of 2 x 1 mm voxels is 20 x 20 mm


def _window(volume: np.ndarray, values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(volume, [0.5, 99.5])
    return np.rint(np.clip((values.astype(np.float64) - lo) / (hi - lo), 0, 1) * 255)


def _expected(gray: np.ndarray, labels: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The image part: blend at the source resolution, then each voxel as a rows x cols block."""
    colour = np.zeros(labels.shape + (3,))
    colour[labels == 1], colour[labels == 2] = RED, GREEN
    g = gray[..., None]
    rgb = np.where((labels != 0)[..., None], np.rint((1 - ALPHA) * g + ALPHA * colour), g)
    return np.repeat(np.repeat(rgb, rows, axis=0), cols, axis=1).astype(np.uint8)


def _volume_case(tmp_path, seg_shape=(8, 10, 20), dataset_json=True):
    """One 3D case: each slice z has its own intensities (100 z + 5 y + x), so the gray of a picture
    tells which slice it shows. liver (1): 30 voxels in z=3, 20 in z=5; tumour (2): 40 in z=6, 8 in z=3."""
    images, pred = tmp_path / "images", tmp_path / "pred"
    images.mkdir()
    pred.mkdir()
    z, y, x = np.meshgrid(*[np.arange(n) for n in (8, 10, 20)], indexing="ij")
    image = (100 * z + 5 * y + x).astype(np.float32)
    seg = np.zeros(seg_shape, dtype=np.uint8)
    seg[3, 2:5, 3:13] = 1
    seg[5, 2:4, 3:13] = 1
    seg[1, 0, 0:10] = 1
    seg[6, 5:9, 2:12] = 2
    seg[3, 6:8, 4:8] = 2
    fio.write_image(image, images / "c1_0000.nii.gz", {"spacing": SPACING})
    fio.write_seg(seg, pred / "c1.nii.gz", {"spacing": SPACING})
    if dataset_json:
        labels = {"background": 0, "liver": 1, "tumour": 2}
        (pred / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz"}))
    return pred, images, image, seg


def _rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def test_slice_counts_and_fullest_slices_by_hand():
    seg = np.zeros((6, 4, 5), dtype=np.int16)
    seg[1, 0, :3] = 1  # 3 voxels
    seg[2, 1, :5] = 1  # 5
    seg[4, :, 0] = 1  # 4 ...
    seg[4, 0, 1] = 1  # ... + 1 = 5: ties with slice 2, which comes first
    seg[5, 3, 4] = 2
    counts = plots.slice_label_counts(seg)
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 7, (5, 6, 7)).astype(np.int16)
    brute = np.array([[np.count_nonzero(noisy[z] == v) for v in range(7)] for z in range(5)])
    np.testing.assert_array_equal(plots.slice_label_counts(noisy), brute)
    assert plots.largest_slices(counts, [1]) == [2]
    assert plots.largest_slices(counts, [1], 3) == [2, 4, 1]
    assert plots.largest_slices(counts, [1], 10) == [2, 4, 1]  # slices without the class are never chosen
    assert plots.largest_slices(counts, [2], 3) == [5]
    assert plots.largest_slices(counts, [3], 3) == []  # absent, and beyond the largest value
    assert plots.largest_slices(counts, [1, 2], 4) == [2, 4, 1, 5]  # a region counts all its members


@pytest.mark.parametrize(
    "shape, spacing, expected",
    [
        pytest.param((10, 20), (2.0, 1.0), (260, 260), id="aniso-2x1mm-square-in-mm"),
        pytest.param((10, 20), (1.0, 1.0), (130, 260), id="iso-magnified-13x"),
        pytest.param((10, 20), (1.0, 3.0), (50, 300), id="aniso-1x3mm-magnified-5x"),
        pytest.param((512, 512), (0.7, 0.7), (512, 512), id="ct-slice-as-is"),
        pytest.param((30, 40), (1.0, 1.0), (210, 280), id="2d-magnified-7x"),
    ],
)
def test_display_shape_keeps_mm_square(shape, spacing, expected):
    assert plots.display_shape(shape, spacing) == expected


def test_overlay_draws_the_fullest_slices_blended_and_pure_gray_elsewhere(tmp_path):
    pred, images, image, seg = _volume_case(tmp_path)
    out = tmp_path / "qc"
    (case,) = overlay_folder(pred, images, out, per_class=2, num_processes=1)
    assert sorted(p.name for p in out.iterdir()) == ["c1_liver.png", "c1_liver_2.png", "c1_tumour.png", "c1_tumour_2.png"]
    assert [(p.path.name, p.slice_index) for p in case.pictures] == [
        ("c1_liver.png", 3), ("c1_liver_2.png", 5), ("c1_tumour.png", 6), ("c1_tumour_2.png", 3)
    ]
    assert case.absent == []
    for name, z in [("c1_liver.png", 3), ("c1_liver_2.png", 5), ("c1_tumour.png", 6), ("c1_tumour_2.png", 3)]:
        rgb = _rgb(out / name)
        # 10 x 20 voxels of 2 x 1 mm: 20 x 20 mm, magnified 13x: 260 x 260, plus the legend column.
        assert rgb.shape == (260, 260 + plots.LEGEND_WIDTH, 3)
        panel, legend = rgb[:, :260], rgb[:, 260:]
        expected = _expected(_window(image, image[z]), seg[z], 26, 13)
        np.testing.assert_array_equal(panel, expected)
        outside = np.repeat(np.repeat(seg[z] == 0, 26, axis=0), 13, axis=1)
        assert (panel[outside][:, 0] == panel[outside][:, 1]).all() and (panel[outside][:, 1] == panel[outside][:, 2]).all()
        # The legend has a swatch for exactly the labels in the slice.
        has = {tuple(c) for c in legend.reshape(-1, 3)}
        assert ((255, 0, 0) in has) == bool((seg[z] == 1).any())
        assert ((0, 255, 0) in has) == bool((seg[z] == 2).any())


def test_overlay_contours_are_full_colour_on_the_outline(tmp_path):
    images, pred = tmp_path / "images", tmp_path / "pred"
    images.mkdir()
    pred.mkdir()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (30, 40)).astype(np.uint8)
    seg = np.zeros((30, 40), dtype=np.uint8)
    seg[5:15, 10:25] = 1
    fio.write_image(image, images / "c_0000.png", {})
    fio.write_seg(seg, pred / "c.png", {})
    out = tmp_path / "qc"
    overlay_folder(pred, images, out, style=OverlayStyle(contours=True), num_processes=1)
    rgb = _rgb(out / "c_label_1.png")  # no dataset.json: the labels found, named label_<v>
    assert rgb.shape == (210, 280 + plots.LEGEND_WIDTH, 3)  # 2D PNG, square pixels, 7x
    gray = _window(image.astype(np.float32), image)
    inside = np.rint(0.6 * gray[5, 10] + 0.4 * RED)
    # Rectangle rows 5..14, columns 10..24 -> pixels 35..104, 70..174.
    assert tuple(rgb[35, 100]) == (255, 0, 0) and tuple(rgb[104, 100]) == (255, 0, 0)
    assert tuple(rgb[60, 70]) == (255, 0, 0) and tuple(rgb[60, 174]) == (255, 0, 0)
    assert tuple(rgb[36, 71]) == tuple(inside)
    assert tuple(rgb[34, 100]) == (gray[4, 14],) * 3 and tuple(rgb[60, 175]) == (gray[8, 25],) * 3


def test_overlay_classes_of_plain_and_region_datasets():
    classes, names = plots.overlay_classes({"labels": {"background": 0, "liver": 1, "tumour": 2, "ignore": 3}})
    assert [(c.name, c.members) for c in classes] == [("liver", (1,)), ("tumour", (2,))]
    assert names == {1: "liver", 2: "tumour", 3: "ignore"}
    regions = {"labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}, "regions_class_order": [1, 2, 3]}
    classes, names = plots.overlay_classes(regions)
    assert [(c.name, c.members) for c in classes] == [("whole", (1, 2, 3)), ("core", (2, 3)), ("enhancing", (3,))]
    assert names == {1: "whole", 2: "core", 3: "enhancing"}
    with pytest.raises(ValueError, match="regions_class_order"):
        plots.overlay_classes({"labels": regions["labels"]})


def test_absent_class_is_reported_not_drawn(tmp_path):
    pred, images, _, _ = _volume_case(tmp_path, dataset_json=False)
    ds = {"labels": {"background": 0, "liver": 1, "tumour": 2, "spleen": 3}, "file_ending": ".nii.gz"}
    (case,) = overlay_folder(pred / "c1.nii.gz", images, tmp_path / "qc", dataset_json=ds, num_processes=1)
    assert case.absent == ["spleen"]
    assert sorted(p.name for p in (tmp_path / "qc").iterdir()) == ["c1_liver.png", "c1_tumour.png"]


def test_missing_image_is_named_and_nothing_is_written(tmp_path):
    pred, images, _, seg = _volume_case(tmp_path)
    fio.write_seg(seg, pred / "c2.nii.gz", {"spacing": SPACING})  # c1 has an image, c2 has none
    out = tmp_path / "qc"
    with pytest.raises(ValueError, match=r"no image for 1 case\(s\).*c2 \(expected .*c2_0000\.nii\.gz\)"):
        overlay_folder(pred, images, out, num_processes=1)
    assert not out.exists()


def test_shape_mismatch_is_named_and_leaves_no_file(tmp_path):
    pred, images, _, _ = _volume_case(tmp_path, seg_shape=(8, 10, 21))
    out = tmp_path / "qc"
    with pytest.raises(ValueError, match=r"c1\.nii\.gz has shape \[8, 10, 21\] but its image .*c1_0000\.nii\.gz has \[8, 10, 20\]"):
        overlay_folder(pred, images, out, num_processes=1)
    assert list(out.iterdir()) == []  # no picture, no temporary


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        pytest.param({"per_class": 0}, ValueError, "per_class must be >= 1", id="per-class-0"),
        pytest.param({"dataset_json": "nowhere.json"}, FileNotFoundError, "nowhere.json not found", id="no-dataset-json"),
        pytest.param({"output_dir": "pred"}, ValueError, "is an input folder", id="output-is-input"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, error, match):
    pred, images, _, _ = _volume_case(tmp_path)
    output = tmp_path / kwargs.pop("output_dir", "qc")
    if "dataset_json" in kwargs:
        kwargs["dataset_json"] = tmp_path / kwargs["dataset_json"]
    with pytest.raises(error, match=match):
        overlay_folder(pred, images, output, num_processes=1, **kwargs)
    assert not (tmp_path / "qc").exists()
    assert sorted(p.name for p in pred.iterdir()) == ["c1.nii.gz", "dataset.json"]


def _command(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fastseg")
    overlay_command.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["overlay", *argv])


def test_command_writes_pictures_and_reports_errors(tmp_path, capsys):
    pred, images, _, _ = _volume_case(tmp_path)
    out = tmp_path / "qc"
    args = _command([str(pred), str(images), "-o", str(out), "--contours", "--alpha", "0.5", "-j", "1"])
    assert args.func(args) == 0
    assert "wrote 2 picture(s) of 1 case(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["c1_liver.png", "c1_tumour.png"]
    args = _command([str(pred), str(tmp_path / "missing"), "-o", str(out)])
    assert args.func(args) == 1
    assert "error: image folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _command([str(pred), str(images), "-o", str(out), "--alpha", "0"])


def _summaries(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    seg = np.zeros((6, 10, 12), dtype=np.uint8)
    seg[1:4, 2:7, 2:8] = 1
    seg[2:5, 6:9, 5:11] = 2
    for i in range(4):
        fio.write_seg(seg, ref / f"c{i}.nii.gz", {"spacing": SPACING})
        fio.write_seg(np.roll(seg, i, axis=2), pred / f"c{i}.nii.gz", {"spacing": SPACING})
    ds = {"labels": {"background": 0, "liver": 1, "tumour": 2}, "file_ending": ".nii.gz"}
    overlap = evaluate_folders(pred, ref, ds, num_processes=1, progress=False)
    surface = evaluate_folders(pred, ref, ds, num_processes=1, progress=False, nsd_tolerance_mm=1.0)
    return overlap, surface


def test_plot_summary_writes_a_png_with_an_hd95_panel_when_there_is_one(tmp_path):
    overlap, surface = _summaries(tmp_path)
    assert "HD95" in surface["metric_per_case"][0]["metrics"][1] and "HD95" not in overlap["metric_per_case"][0]["metrics"][1]
    sizes = {}
    for name, summary in [("dice.png", overlap), ("both.png", surface), ("json.png", to_json(surface))]:
        path = plot_summary(summary, tmp_path / name, names={1: "liver", 2: "tumour"})
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            sizes[name] = im.size
    assert sizes["both.png"][1] > sizes["dice.png"][1]  # two panels are taller than one
    assert sizes["json.png"] == sizes["both.png"]  # summary.json's string keys plot the same


@pytest.mark.parametrize(
    "summary, name, match",
    [
        pytest.param({"mean": {1: {"Dice": 0.9}}, "foreground_mean": {"Dice": 0.9}}, "p.png", "no per-case results", id="no-per-case"),
        pytest.param({"metric_per_case": []}, "p.png", "no per-case results", id="empty-per-case"),
        pytest.param({"metric_per_case": [{"reference_file": "a"}]}, "p.png", "no per-case results", id="case-without-metrics"),
        pytest.param({"metric_per_case": [{"metrics": {1: {"Dice": 1.0}}}]}, "p.pdf", "ending in .png", id="not-png"),
    ],
)
def test_plot_summary_rejects_what_it_cannot_plot(tmp_path, summary, name, match):
    with pytest.raises(ValueError, match=match):
        plot_summary(summary, tmp_path / name)
    assert list(tmp_path.iterdir()) == []
