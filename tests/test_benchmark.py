"""`fastseg benchmark predict`: both tools run and measured, outputs compared.

The measurement pieces are checked against known quantities (a child process that holds a known
amount of memory; segmentation folders with a known number of differing voxels), and the command
itself runs fastseg and nnU-Net's predictor on a small trained model (tests/conftest.py `models`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import fastseg_script

from fastseg import io as fio
from fastseg.benchmark.measure import run_measured
from fastseg.benchmark.predict import compare_outputs

_ALLOCATE = textwrap.dedent(
    """
    import multiprocessing as mp, time
    import numpy as np

    def hold(mib):
        block = np.ones(mib * 2**20 // 8)  # touched: resident
        time.sleep(1.0)

    if __name__ == "__main__":
        ctx = mp.get_context("fork")
        workers = [ctx.Process(target=hold, args=(200,)) for _ in range(2)]
        for w in workers: w.start()
        for w in workers: w.join()
    """
)


def test_measured_memory_sums_the_process_tree():
    """Two forked workers holding 200 MiB each: the tree's peak PSS is at least 400 MiB; the same
    program without the allocation peaks far lower."""
    loaded = run_measured([sys.executable, "-c", _ALLOCATE], interval=0.02)
    idle = run_measured([sys.executable, "-c", _ALLOCATE.replace("(200,)", "(0,)")], interval=0.02)
    assert loaded.returncode == 0 and idle.returncode == 0, loaded.stderr + idle.stderr
    assert loaded.peak_pss_bytes >= 400 * 2**20
    assert idle.peak_pss_bytes < loaded.peak_pss_bytes - 350 * 2**20
    assert loaded.wall_s >= 1.0


def _write(folder, name, seg, spacing=(2.0, 1.0, 1.0)):
    folder.mkdir(exist_ok=True)
    fio.write_seg(seg, folder / name, {"spacing": list(spacing)})


def test_compare_outputs_counts_voxels_geometry_and_missing_files(tmp_path, rng):
    a, b = tmp_path / "a", tmp_path / "b"
    seg = rng.integers(0, 3, (10, 12, 14)).astype(np.uint8)
    other = seg.copy()
    other.flat[[5, 77, 900]] = (other.flat[[5, 77, 900]] + 1) % 3  # 3 voxels differ
    _write(a, "x.nii.gz", seg)
    _write(b, "x.nii.gz", other)
    _write(a, "y.nii.gz", seg)
    _write(b, "y.nii.gz", seg)
    _write(a, "z.nii.gz", seg)
    _write(b, "z.nii.gz", seg, spacing=(2.0, 1.0, 1.5))  # another grid
    _write(a, "only_a.nii.gz", seg)
    result = compare_outputs(a, b, ".nii.gz")
    assert result.cases == 2 and result.voxels == 2 * seg.size
    assert result.equal_fraction == (2 * seg.size - 3) / (2 * seg.size)
    assert result.worst_case == ("x.nii.gz", (seg.size - 3) / seg.size)
    assert result.geometry_mismatches == ["z.nii.gz"]
    assert result.missing == ["only_a.nii.gz"]


@pytest.mark.slow
def test_benchmark_predict_against_nnunet(models, tmp_path):
    model, images = models["3d"]
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [fastseg_script(), "benchmark", "predict", "-m", str(model), "-i", str(images), "--against", "nnunet",
         "--threads", "1", "--processes", "1", "--json", str(out), "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for text in ("wall time", "peak memory (PSS)", "network", "agreement:", "geometry identical"):
        assert text in run.stdout, run.stdout
    result = json.loads(out.read_text())
    assert result["settings"]["threads"] == 1 and result["settings"]["cases"] == 2
    for tool in ("fastseg", "nnunet"):
        assert result[tool]["wall_s"] > 0 and result[tool]["peak_pss_bytes"] > 50 * 2**20
        assert result[tool]["stages_s"]["network"] > 0 and min(result[tool]["stages_s"].values()) >= 0, result[tool]
    # nnU-Net's stage clock works in its spawned workers too: every stage was timed.
    assert all(result["nnunet"]["stages_s"][s] > 0 for s in ("preprocess", "network", "export")), result["nnunet"]
    agreement = result["agreement"]
    assert agreement["cases"] == 2 and not agreement["missing"] and not agreement["geometry_mismatches"]
    assert agreement["equal_fraction"] >= 0.997  # nnU-Net sums tiles in float16 (see test_predict.py)
    assert result["wall_ratio"] == pytest.approx(result["nnunet"]["wall_s"] / result["fastseg"]["wall_s"])
    # The outputs stay where --work-dir says, one folder per tool.
    assert sorted(p.name for p in (tmp_path / "work" / "fastseg").glob("*.nii.gz")) == sorted(
        p.name for p in (tmp_path / "work" / "nnunet").glob("*.nii.gz")
    )


def test_benchmark_predict_bad_input_is_named(tmp_path):
    run = subprocess.run(
        [fastseg_script(), "benchmark", "predict", "-m", str(tmp_path / "nope"), "-i", str(tmp_path)],
        capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120,
    )
    assert run.returncode == 1 and "model folder" in run.stderr and "nope" in run.stderr
    assert "Traceback" not in run.stderr
    run = subprocess.run(
        [fastseg_script(), "benchmark", "predict", "-m", str(tmp_path), "-i", str(tmp_path), "--against", "itk"],
        capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120,
    )
    assert run.returncode == 1 and "--against takes 'nnunet'" in run.stderr
