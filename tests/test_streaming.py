"""Streamed 3D prediction (`fastseg predict --memory-budget-gb`) against the in-memory prediction.

The reference is fastseg's own in-memory path (`Predictor.predict_array`), itself tested against
nnU-Net in tests/test_predict.py, on the small trained models of tests/model_factory.py. Where the
halo rule is exact -- no resampling along z, or z resampled with order 0 (the separate-z rule these
anisotropic plans trigger, for the image and for the logits) -- the labels must be equal voxel for
voxel; that holds for every case here, so the tests ask for equality (and say so when it fails with
the agreement, which must be >= 99.99 % in any case). Cubic resampling along z, the one place where
a slab's result is not bit-exact (`fastseg.ops.resample_rows`, within float32 rounding), is tested
on its own against the whole-axis pass.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import fastseg_script

from fastseg import io as fio
from fastseg.ops import resample
from fastseg.ops.resample_rows import resample_rows, rows_needed
from fastseg.predict import Predictor
from fastseg.predict.streaming import StreamingError, scratch_folder, stream_case


def _volume(images: Path, path: Path, spacing_zyx, z_reps: int = 3, in_plane_reps: int = 1) -> Path:
    """A test image tiled along z (mirrored every other copy) and in-plane, air (-1000) around part
    of it and zeros (cropped away) around the rest, written with `spacing_zyx`."""
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(sorted(images.glob("*.nii.gz"))[0]))).astype(np.int16)
    parts = [a if k % 2 == 0 else a[::-1] for k in range(z_reps)]
    big = np.concatenate(parts, axis=0)
    big = np.tile(big, (1, in_plane_reps, in_plane_reps))
    big = np.pad(big, ((0, 0), (6, 9), (4, 7)), constant_values=-1000)
    big[:, :, :4] = 0
    big[:2] = 0
    img = sitk.GetImageFromArray(big)
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    img.SetOrigin((3.0, -2.0, 7.5))
    sitk.WriteImage(img, str(path), True)
    return path


def _plans_spacing(model: Path) -> list[float]:
    plans = json.loads((model / "plans.json").read_text())
    return plans["configurations"]["3d_fullres"]["spacing"]


def _minimum_budget(predictor: Predictor, case: Path, out: Path) -> float:
    """The minimum the budget error names (it must name one)."""
    with pytest.raises(StreamingError) as err:
        stream_case(predictor, [case], out, budget=1 << 16, progress=False, case="tiny")
    message = str(err.value)
    assert "case tiny" in message and "one slab with its halo" in message
    found = re.search(r"--memory-budget-gb ([0-9.]+)", message)
    assert found, message
    assert not out.exists() and not scratch_folder(out).joinpath("labels.nii.gz").exists()
    return float(found.group(1))


@pytest.mark.parametrize(
    "name, spacing",
    [
        pytest.param("3d", "plans", id="3d_fullres-plans-spacing"),
        pytest.param("2d", "plans", id="2d"),
        pytest.param("3d", (2.2, 0.9, 0.6), id="3d_fullres-resampled"),
    ],
)
def test_streamed_equals_in_memory(models, tmp_path, name, spacing):
    """At least 4 slabs; labels equal to the in-memory prediction's voxel for voxel (the halo rule
    is exact for these: z not resampled, or resampled with order 0), geometry equal."""
    model, images = models[name]
    zyx = _plans_spacing(models["3d"][0]) if spacing == "plans" else spacing
    case = _volume(images, tmp_path / "case_0000.nii.gz", zyx, z_reps=3)
    predictor = Predictor.from_model_folder(model, tta=False, batch_size=8 if name == "2d" else 2)
    out = tmp_path / "out" / "case.nii.gz"
    out.parent.mkdir()
    minimum = _minimum_budget(predictor, case, out)
    t = time.perf_counter()
    info = stream_case(predictor, [case], out, budget=int(minimum * 2**30), progress=False)  # the minimum suffices
    total = time.perf_counter() - t
    assert info["slabs"] >= 4, info
    assert set(info["seconds"]) == {"read", "write"}, info
    assert 0 < info["seconds"]["read"] and 0 < info["seconds"]["write"]
    assert info["seconds"]["read"] + info["seconds"]["write"] < total
    data, props = fio.read_images([case])
    reference = predictor.predict_array(data, props)
    assert len(np.unique(reference)) > 2, "the model predicts almost nothing: the comparison would say little"
    written = sitk.ReadImage(str(out))
    labels = sitk.GetArrayFromImage(written)
    assert labels.shape == reference.shape and labels.dtype == np.uint8
    agreement = float(np.mean(labels == reference))
    assert agreement >= 0.9999
    assert np.array_equal(labels, reference), f"{agreement:.6f} of voxels equal where the halo rule is exact"
    source = sitk.ReadImage(str(case))
    assert written.GetSpacing() == source.GetSpacing() and written.GetOrigin() == source.GetOrigin()
    assert written.GetDirection() == source.GetDirection()
    assert not scratch_folder(out).exists()


def test_2d_configuration_streams_by_default_with_the_in_memory_labels(models, tmp_path, caplog):
    """Without a memory budget a 2d configuration predicts a 3D NIfTI case in slabs (within
    `SLAB_BUDGET_2D`, raised to the minimum one slab needs) and writes the in-memory labels; with
    probabilities asked for, or an explicit budget the case fits, it is predicted in memory."""
    from fastseg.predict.inputs import InputCase

    model, images = models["2d"]
    case = _volume(images, tmp_path / "case_0000.nii.gz", _plans_spacing(models["3d"][0]), z_reps=3)
    predictor = Predictor.from_model_folder(model, tta=False, batch_size=8)
    data, props = fio.read_images([case])
    reference = predictor.predict_array(data, props)
    assert len(np.unique(reference)) > 2, "the model predicts almost nothing: the comparison would say little"
    outputs = {}
    for name, kwargs, budget in (("default", {}, None), ("probabilities", {"save_probabilities": True}, None),
                                 ("budget", {}, 4.0)):
        predictor.memory_budget = None if budget is None else int(budget * 2**30)
        out = tmp_path / name / "case.nii.gz"
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fastseg.predict"):
            report = predictor.predict_cases([InputCase("case", [case])], [out], progress=False, **kwargs)
        assert report.written == [out] and not report.failed
        outputs[name] = (sitk.GetArrayFromImage(sitk.ReadImage(str(out))), "streaming in" in caplog.text)
        assert not scratch_folder(out).exists()
    assert outputs["default"][1] and not outputs["probabilities"][1] and not outputs["budget"][1]
    for name, (labels, _) in outputs.items():
        assert np.array_equal(labels, reference), name


def test_2d_case_that_streaming_refuses_is_predicted_in_memory(models, tmp_path, monkeypatch):
    """A layout streaming does not take (here: refused at once) falls back to the in-memory
    prediction, which is written as without streaming."""
    import fastseg.predict.streaming as streaming
    from fastseg.predict.inputs import InputCase

    model, images = models["2d"]
    case = _volume(images, tmp_path / "case_0000.nii.gz", _plans_spacing(models["3d"][0]), z_reps=1)
    predictor = Predictor.from_model_folder(model, tta=False, batch_size=8)
    refused = []

    def refuse(*args, **kwargs):
        refused.append(kwargs.get("case"))
        raise StreamingError("case case: a layout streaming does not handle")

    monkeypatch.setattr(streaming, "stream_case", refuse)
    out = tmp_path / "out" / "case.nii.gz"
    report = predictor.predict_cases([InputCase("case", [case])], [out], progress=False)
    assert refused == ["case"] and report.written == [out] and not report.failed
    data, props = fio.read_images([case])
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), predictor.predict_array(data, props))


def test_streamed_tiff_output_equals_the_nifti_output(models, tmp_path, monkeypatch):
    """An output ending in .ome.tif is a tiled OME-TIFF (one tiled page per z plane, zlib) with the
    labels of the NIfTI output, the voxel size in its OME-XML (micrometres) and its resolution tags;
    an interrupted TIFF run resumed with `resume=True` writes the same labels."""
    import tifffile

    import fastseg.predict.streaming as streaming

    model, images = models["3d"]
    spacing = (2.2, 0.9, 0.6)
    case = _volume(images, tmp_path / "case_0000.nii.gz", spacing, z_reps=3)
    predictor = Predictor.from_model_folder(model, tta=False, batch_size=2)
    nifti = tmp_path / "nifti" / "case.nii.gz"
    nifti.parent.mkdir()
    budget = int(_minimum_budget(predictor, case, nifti) * 2**30)
    info = stream_case(predictor, [case], nifti, budget=budget, progress=False)
    assert info["slabs"] >= 4, info
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti)))
    tiff = tmp_path / "tiff" / "case.ome.tif"
    tiff.parent.mkdir()
    real = streaming._run_batch
    calls = [0]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 10:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(streaming, "_run_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stream_case(predictor, [case], tiff, budget=budget, progress=False)
    monkeypatch.setattr(streaming, "_run_batch", real)
    assert not tiff.exists() and json.loads((scratch_folder(tiff) / "progress.json").read_text())["slab"] >= 1
    info = stream_case(predictor, [case], tiff, budget=budget, resume=True, progress=False)
    assert info["resumed_from"] >= 1
    with tifffile.TiffFile(tiff) as tif:
        assert tif.is_ome and len(tif.pages) == expected.shape[0]
        series = tif.series[0]
        assert series.axes == "ZYX" and series.shape == expected.shape
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256) and page.compression == 8
        labels = series.asarray()
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        num, den = page.tags["XResolution"].value
        assert page.tags["ResolutionUnit"].value == 3 and num / den == pytest.approx(10 / spacing[2], rel=1e-6)
    assert labels.dtype == expected.dtype and np.array_equal(labels, expected)
    for axis, mm in zip("ZYX", spacing):
        assert pixels[f"PhysicalSize{axis}"] == pytest.approx(mm * 1000) and pixels[f"PhysicalSize{axis}Unit"] == "µm"
    assert not scratch_folder(tiff).exists()


def test_command_writes_ome_tiff_for_an_ome_tif_output(models, tmp_path):
    """`fastseg predict -i case -o case.ome.tif` streams the case into a tiled OME-TIFF (whatever its
    size) whose labels equal the in-memory prediction."""
    import tifffile

    model, images = models["3d"]
    case = _volume(images, tmp_path / "case_0000.nii.gz", _plans_spacing(model), z_reps=1)
    out = tmp_path / "pred" / "case.ome.tif"
    run = _run(fastseg_script(), "predict", "-m", model, "-i", case, "-o", out, "--no-tta", "--batch-size", "2")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "writing a tiled OME-TIFF, streamed in slabs" in run.stderr, run.stderr[-2000:]
    predictor = Predictor.from_model_folder(model, tta=False, batch_size=2)
    reference = predictor.predict_array(*fio.read_images([case]))
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.pages[0].is_tiled
        np.testing.assert_array_equal(tif.series[0].asarray(), reference)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_rows_equals_the_whole_axis_pass(order):
    """Windows of rows resampled along z with the whole axis's mapping: orders 0 and 1 bit for bit,
    order 3 (prefilter started inside the line, CUBIC_HALO rows away) within float32 rounding."""
    rng = np.random.default_rng(order)
    x = rng.normal(size=(2, 61, 7, 9)).astype(np.float32)
    for n_out in (23, 61, 97):
        whole = resample(x, (n_out, 7, 9), (1, 1, 1), (1, 1, 1), order=order, clip_joint=False)
        for start in range(0, n_out, 9):
            stop = min(n_out, start + 9)
            lo, hi = rows_needed(61, n_out, start, stop, order)
            part = resample_rows(x[:, lo:hi], lo, 61, n_out, start, stop, order)
            if order < 3:
                assert np.array_equal(part, whole[:, start:stop])
            else:
                np.testing.assert_allclose(part, whole[:, start:stop], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="need input rows"):
        resample_rows(x[:, 10:20], 10, 61, 97, 0, 5, order)


def test_budget_too_small_is_a_named_error(models, tmp_path):
    model, images = models["3d"]
    case = _volume(images, tmp_path / "big_0000.nii.gz", _plans_spacing(model), z_reps=2)
    predictor = Predictor.from_model_folder(model, tta=False, batch_size=4, memory_budget_gb=0.0001)
    from fastseg.predict.inputs import InputCase

    report = predictor.predict_cases([InputCase("big", [case])], [tmp_path / "out" / "big.nii.gz"], progress=False)
    assert not report.written
    message = report.failed["big"]
    assert "case big" in message and re.search(r"give at least --memory-budget-gb [0-9.]+", message), message
    assert not any(p.name == "big.nii.gz" for p in (tmp_path / "out").iterdir())


def test_interrupted_stream_resumes_where_it_stopped(models, tmp_path, monkeypatch, caplog):
    """A run stopped after some slabs resumes from its record (same file bytes as an uninterrupted
    run); a record of another budget is not used (the run starts over, same labels)."""
    import fastseg.predict.streaming as streaming

    model, images = models["3d"]
    case = _volume(images, tmp_path / "case_0000.nii.gz", _plans_spacing(model), z_reps=3)
    predictor = Predictor.from_model_folder(model, tta=False, batch_size=2)
    out = tmp_path / "out" / "case.nii.gz"
    out.parent.mkdir()
    budget = int(_minimum_budget(predictor, case, out) * 2**30)
    whole = tmp_path / "whole" / "case.nii.gz"
    whole.parent.mkdir()
    stream_case(predictor, [case], whole, budget=budget, progress=False)
    real = streaming._run_batch

    def interrupt_after(n):
        calls = [0]

        def run_batch(*args, **kwargs):
            calls[0] += 1
            if calls[0] > n:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        return run_batch

    monkeypatch.setattr(streaming, "_run_batch", interrupt_after(12))
    with pytest.raises(KeyboardInterrupt):
        stream_case(predictor, [case], out, budget=budget, progress=False)
    monkeypatch.setattr(streaming, "_run_batch", real)
    assert not out.exists()
    stopped_at = json.loads((scratch_folder(out) / "progress.json").read_text())["slab"]
    assert stopped_at >= 1
    with caplog.at_level(logging.INFO, logger="fastseg.predict.streaming"):
        info = stream_case(predictor, [case], out, budget=budget, resume=True, progress=False)
    assert info["resumed_from"] == stopped_at and f"resuming at slab {stopped_at + 1}" in caplog.text
    assert out.read_bytes() == whole.read_bytes()

    out.unlink()
    monkeypatch.setattr(streaming, "_run_batch", interrupt_after(12))
    with pytest.raises(KeyboardInterrupt):
        stream_case(predictor, [case], out, budget=budget, progress=False)
    monkeypatch.setattr(streaming, "_run_batch", real)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fastseg.predict.streaming"):
        info = stream_case(predictor, [case], out, budget=budget + 4096, resume=True, progress=False)
    assert info["resumed_from"] == 0 and "starting over" in caplog.text
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), sitk.GetArrayFromImage(sitk.ReadImage(str(whole))))


# --- whole runs of the command -------------------------------------------------------------------

_MEASURE = """
import sys
from fastseg.cli import main
code = main(sys.argv[1:])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print("VmHWM_KB", hwm, file=sys.stderr)
sys.exit(code)
"""

_BASELINE = """
import sys
import torch
from fastseg.cli import main
from fastseg.predict import Predictor
# The command itself on a case of one tile, in memory: the interpreter, torch, the model, the modules
# and library code a prediction runs (reading and writing NIfTI, the kernels and their thread pools).
model, batch, tiny, out, threads = sys.argv[1:6]
code = main(["predict", "-m", model, "-i", tiny, "-o", out, "--no-tta", "--batch-size", batch, "--step-size", "1",
             "--threads", threads])
assert code == 0, code
# The forward passes of a whole batch (the one-tile case ran one tile at a time).
p = Predictor.from_model_folder(model, tta=False, batch_size=int(batch))
with torch.inference_mode():
    x = torch.zeros((p.batch_size, p.model.num_input_channels, *p.patch_size))
    for _ in range(3):
        p.networks[0](x)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print("VmHWM_KB", hwm, file=sys.stderr)
"""


def _one_tile_case(source: Path, folder: Path, patch) -> Path:
    """The first patch of `source` (its rows and columns from the middle), for the baseline run."""
    image = sitk.ReadImage(str(source))
    a = sitk.GetArrayFromImage(image)
    z, y, x = (min(p, n) for p, n in zip(patch, a.shape))
    y0, x0 = (a.shape[1] - y) // 2, (a.shape[2] - x) // 2
    tiny = sitk.GetImageFromArray(np.ascontiguousarray(a[2 : 2 + z, y0 : y0 + y, x0 : x0 + x]))
    tiny.SetSpacing(image.GetSpacing())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny_0000.nii.gz"
    sitk.WriteImage(tiny, str(path), True)
    return path


def _hwm(run: subprocess.CompletedProcess) -> int:
    found = re.search(r"VmHWM_KB (\d+)", run.stderr)
    assert found, run.stdout[-2000:] + run.stderr[-3000:]
    return int(found.group(1)) * 1024


def _run(*args, timeout=600) -> subprocess.CompletedProcess:
    from fastseg.runtime.workers import child_import_environment

    # `python -c` from the repository root would import the source folder, not the installed package
    return subprocess.run([*map(str, args)], capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=timeout, env=child_import_environment(os.environ))


def baseline_hwm(model: Path, batch: int, source: Path, folder: Path, threads: int = 2) -> int:
    """VmHWM of the baseline process (`_BASELINE`): the command on a one-tile case cut from `source`."""
    patch = Predictor.from_model_folder(model, tta=False).patch_size
    tiny = _one_tile_case(source, folder / "tiny", patch)
    return _hwm(_run(sys.executable, "-c", _BASELINE, model, batch, tiny.parent, folder / "tiny_out", threads))


@pytest.mark.slow  # two processes that import torch, and some 3000 tiles: minutes on 2 shared cores
def test_peak_rss_stays_under_the_budget_plus_the_model(models, tmp_path):
    """The issue's rule: a volume whose float32 image is at least 8x the budget is streamed with the
    command's peak RSS at most the budget above the baseline, the same command predicting a case of
    one tile in memory plus the forward passes of a whole batch (`_BASELINE`: the interpreter, torch,
    the model, the code a prediction runs). An in-memory run of this volume would add its whole float32
    image (127 MiB) and more."""
    model, images = models["3d"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    case = _volume(images, inputs / "long_0000.nii.gz", _plans_spacing(model), z_reps=132)
    shape = sitk.ReadImage(str(case)).GetSize()
    predictor = Predictor.from_model_folder(model, tta=False, batch_size=4, step_size=1.0)
    budget_gb = 0.016
    assert _minimum_budget(predictor, case, tmp_path / "probe" / "long.nii.gz") < budget_gb
    image_bytes = 4 * int(np.prod(shape))
    assert image_bytes >= 8 * budget_gb * 2**30, (shape, image_bytes, budget_gb)
    common = ["--no-tta", "--batch-size", "4", "--step-size", "1", "--threads", "2"]
    run = _run(sys.executable, "-c", _MEASURE, "predict", "-m", model, "-i", inputs, "-o", tmp_path / "out",
               "--memory-budget-gb", budget_gb, *common)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "streaming it in slabs" in run.stderr
    peak = _hwm(run)
    base = baseline_hwm(model, 4, case, tmp_path / "baseline")
    extra = peak - base
    assert extra <= budget_gb * 2**30, (
        f"peak RSS {peak / 2**20:.1f} MiB = baseline {base / 2**20:.1f} MiB + {extra / 2**20:.1f} MiB, "
        f"budget {budget_gb * 1024:.0f} MiB, image {image_bytes / 2**20:.0f} MiB"
    )
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "long.nii.gz")))
    assert labels.shape == tuple(shape[::-1]) and len(np.unique(labels)) > 1


@pytest.mark.slow  # four runs of the command
def test_killed_streamed_run_resumes_to_the_same_bytes(models, tmp_path):
    """SIGKILL after a few slabs, then --continue: the same file bytes as an uninterrupted run; no
    visible output file is ever incomplete; a changed setting starts over."""
    model, images = models["3d"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    _volume(images, inputs / "case_0000.nii.gz", _plans_spacing(model), z_reps=6)
    common = ["--no-tta", "--batch-size", "4", "--memory-budget-gb", "0.02"]
    whole = tmp_path / "whole"
    run = _run(fastseg_script(), "predict", "-m", model, "-i", inputs, "-o", whole, *common)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = (whole / "case.nii.gz").read_bytes()

    out = tmp_path / "out"
    record = scratch_folder(out / "case.nii.gz") / "progress.json"
    proc = subprocess.Popen([fastseg_script(), "predict", "-m", str(model), "-i", str(inputs), "-o", str(out), *common],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    slab = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            visible = [p for p in out.glob("*.nii.gz") if not p.name.startswith(".")] if out.is_dir() else []
            for p in visible:  # the name appears only when the file is whole
                assert sitk.GetArrayFromImage(sitk.ReadImage(str(p))).size
            try:
                slab = json.loads(record.read_text()).get("slab", 0)
            except (OSError, ValueError):
                slab = 0
            if slab >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert slab >= 3, "the run ended before three slabs were recorded"
    assert not (out / "case.nii.gz").exists()
    total = json.loads(record.read_text())["plan"]["slabs"]
    assert len(total) > slab, "nothing left to resume"
    run = _run(fastseg_script(), "predict", "-m", model, "-i", inputs, "-o", out, *common, "--continue")
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"resuming at slab [4-9]|resuming at slab \d\d", run.stderr), run.stderr[-2000:]
    assert (out / "case.nii.gz").read_bytes() == expected
    assert not scratch_folder(out / "case.nii.gz").exists()

    # A record of other settings is not resumed: the run starts over and still gives the same labels.
    again = tmp_path / "again"
    proc = subprocess.Popen([fastseg_script(), "predict", "-m", str(model), "-i", str(inputs), "-o", str(again), *common],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = scratch_folder(again / "case.nii.gz") / "progress.json"
    deadline = time.monotonic() + 120
    with_slab = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                with_slab = json.loads(record.read_text()).get("slab", 0) >= 1
            if with_slab:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert with_slab, "the run ended before a slab was recorded"
    other = [a if a != "0.02" else "0.021" for a in common]
    run = _run(fastseg_script(), "predict", "-m", model, "-i", inputs, "-o", again, *other, "--continue")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "starting over" in run.stderr and "resuming" not in run.stderr, run.stderr[-2000:]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(again / "case.nii.gz"))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(whole / "case.nii.gz"))))
