"""`fastseg benchmark RAW_DATASET --against nnunet`: both tools run stage by stage, one table.

One run of plan, preprocess and evaluate on a tiny synthetic dataset (whose folder is not named
DatasetXXX_Name, so nnU-Net reads it as Dataset999_tiny_ct) is checked against the files both tools
wrote: the agreement figures in benchmark.json are recomputed here from nnU-Net's plans, its blosc2
arrays and its summary.json, independently of fastseg.benchmark.agreement; and the comparisons are
shown to report a difference when there is one. Then the argument handling: the two forms of the
command, a missing nnunetv2, a bad RAW_DATASET.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import fastseg_script

from fastseg import cli
from fastseg.benchmark.agreement import compare_plans, compare_preprocessed
from fastseg.benchmark.stages import STAGES, nnunet_dataset_name, parse_stages

CASES = 3
NAME = "Dataset999_tiny_ct"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """(raw dataset, output folder, the finished command) of one benchmark run, 1 worker each."""
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("benchmark_stages")
    raw = root / "tiny_ct"
    write_synthetic_dataset(raw, SyntheticConfig(num_cases=CASES, ct=True, shape=(12, 28, 24)), num_processes=1)
    out = root / "out"
    run = subprocess.run(
        [fastseg_script(), "benchmark", str(raw), "--against", "nnunet", "--stages", "plan,preprocess,evaluate",
         "-o", str(out), "-j", "1"],
        cwd=root, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return raw, out, run


def _result(out) -> dict:
    return json.loads((out / "benchmark.json").read_text())


def test_table_and_json_have_both_tools_and_ratios(bench):
    raw, out, run = bench
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"fastseg benchmark: {NAME} ({CASES} training cases), configuration 3d_fullres, 1 worker(s)")
    header = next(i for i, line in enumerate(lines) if line.startswith("stage"))
    for word in ("wall time", "throughput", "peak PSS", "agreement"):
        assert word in lines[header]
    result = _result(out)
    assert result["settings"]["nnunet_dataset"] == NAME and result["settings"]["raw_dataset"] == str(raw)
    assert result["settings"]["versions"]["nnunetv2"] and result["settings"]["workers"] == 1
    assert list(result["stages"]) == ["plan", "preprocess", "evaluate"]
    for name, stage in result["stages"].items():
        ours, theirs = stage["fastseg"], stage["nnunet"]
        for tool in (ours, theirs):
            assert tool["wall_s"] > 0 and tool["unit"] == "cases/s" and tool["peak_pss_bytes"] > 20 * 2**20
            assert tool["throughput"] == pytest.approx(CASES / tool["wall_s"])
        assert stage["throughput_ratio"] == pytest.approx(theirs["wall_s"] / ours["wall_s"])
        assert stage["memory_ratio"] == pytest.approx(ours["peak_pss_bytes"] / theirs["peak_pss_bytes"])
        assert stage["agreement"]["ok"] is True, (name, stage["agreement"])
        # The table's rows: the stage with fastseg's figures, nnU-Net's row, the ratio row.
        row = next(i for i, line in enumerate(lines) if line.startswith(f"{name} "))
        assert lines[row].split()[1] == "fastseg" and lines[row + 1].split()[0] == "nnU-Net"
        assert lines[row + 2].split()[0] == "ratio" and f"{stage['throughput_ratio']:.2f}x" in lines[row + 2]
        assert stage["agreement"]["summary"] in lines[row]


def _leaves(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def test_plans_agreement_is_what_the_two_plans_files_say(bench):
    _, out, _ = bench
    ours = json.loads((out / "fastseg" / "plans.json").read_text())
    theirs = json.loads((out / "nnunet" / "nnUNet_preprocessed" / NAME / "nnUNetPlans.json").read_text())
    assert ours["dataset_name"] == theirs["dataset_name"] == NAME
    # Every configuration equal key by key: patch, batch, spacing, topology, normalization.
    assert list(ours["configurations"]) == list(theirs["configurations"])
    for config, values in theirs["configurations"].items():
        assert ours["configurations"][config] == values, config
    a, b = dict(_leaves(ours)), dict(_leaves(theirs))
    differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    for key in differing:  # only the float32-rounded intensity statistics may differ
        assert key.startswith("foreground_intensity_properties_per_channel.") and key.split(".")[-1] in ("mean", "std")
        assert a[key] == pytest.approx(b[key], rel=1e-6)
    agreement = _result(out)["stages"]["plan"]["agreement"]
    assert agreement["plans"]["differing_keys"] == differing
    assert agreement["plans"]["undocumented_keys"] == [] and agreement["plans"]["compared"] == len(set(a) | set(b))


def _b2nd(path):
    import blosc2

    return np.asarray(blosc2.open(urlpath=str(path), mode="r")[...])


def test_preprocess_agreement_is_recomputed_from_both_tools_arrays(bench):
    _, out, _ = bench
    plans = json.loads((out / "fastseg" / "plans.json").read_text())
    folder = plans["configurations"]["3d_fullres"]["data_identifier"]
    ours_dir = out / "fastseg" / folder
    theirs_dir = out / "fastseg" / ".nnunet_reference" / "nnUNet_preprocessed" / NAME / folder
    cases = sorted(p.name[: -len(".b2nd")] for p in theirs_dir.glob("*.b2nd") if not p.name.endswith("_seg.b2nd"))
    assert cases == [f"case_{i:04d}" for i in range(CASES)]
    worst, equal, total = 0.0, 0, 0
    for case in cases:
        data, seg = np.load(ours_dir / f"{case}.npy"), np.load(ours_dir / f"{case}_seg.npy")
        ref, ref_seg = _b2nd(theirs_dir / f"{case}.b2nd"), _b2nd(theirs_dir / f"{case}_seg.b2nd")
        assert data.shape == ref.shape and seg.shape == ref_seg.shape
        np.testing.assert_array_equal(seg, ref_seg)
        diff = np.abs(data.astype(np.float64) - ref.astype(np.float64))
        worst = max(worst, diff.max() / (ref.max() - ref.min()))
        equal += int((data == ref).sum())
        total += data.size
    agreement = _result(out)["stages"]["preprocess"]["agreement"]
    assert agreement["cases"] == CASES and agreement["voxels"] == total and agreement["seg_differing_voxels"] == 0
    assert agreement["max_relative_difference"] == pytest.approx(worst, rel=1e-5, abs=1e-12)
    assert agreement["equal_voxel_fraction"] == pytest.approx(equal / total)
    assert worst <= 5e-6  # tests/test_preprocess.py's bound


def test_agreement_reports_differences_when_there_are_some(bench, tmp_path):
    _, out, _ = bench
    plans = json.loads((out / "fastseg" / "plans.json").read_text())
    folder = plans["configurations"]["3d_fullres"]["data_identifier"]
    copy = tmp_path / folder
    shutil.copytree(out / "fastseg" / folder, copy)
    data = np.load(copy / "case_0001.npy", mmap_mode="r+")
    seg = np.load(copy / "case_0001_seg.npy", mmap_mode="r+")
    theirs_dir = out / "fastseg" / ".nnunet_reference" / "nnUNet_preprocessed" / NAME / folder
    ref = _b2nd(theirs_dir / "case_0001.b2nd")
    span = float(ref.max() - ref.min())
    data[0, 1, 2, 3] = ref[0, 1, 2, 3] + 1e-3 * span
    seg[0, 0, 0, 0] = seg[0, 0, 0, 0] + 1
    data.flush()
    seg.flush()
    del data, seg
    found = compare_preprocessed(copy, theirs_dir)
    assert not found.ok and found.seg_differing_voxels == 1 and found.seg_differing_cases == ["case_0001"]
    assert found.max_relative_difference == pytest.approx(1e-3, rel=1e-3) and found.worst_case == "case_0001"

    theirs = json.loads((out / "nnunet" / "nnUNet_preprocessed" / NAME / "nnUNetPlans.json").read_text())
    theirs["configurations"]["3d_fullres"]["patch_size"][0] += 2
    found = compare_plans(plans, theirs)
    assert not found.ok and [d.path for d in found.undocumented] == ["configurations.3d_fullres.patch_size[0]"]


def test_evaluate_agreement_and_the_perturbed_predictions(bench):
    from fastseg import io as fio

    _, out, _ = bench
    folder = out / "evaluate"
    ours = json.loads((folder / "fastseg_summary.json").read_text())
    theirs = json.loads((folder / "nnunet_summary.json").read_text())
    # The prediction is an honest imperfect one: Dice well below 1, from files that differ.
    assert 0.1 < theirs["foreground_mean"]["Dice"] < 0.95
    for case in theirs["metric_per_case"]:
        pred, _ = fio.read_seg(case["prediction_file"])
        ref, _ = fio.read_seg(case["reference_file"])
        assert pred.shape == ref.shape and 0 < np.count_nonzero(pred != ref) < pred.size
        # nnU-Net's Dice of label 1, by hand (the synthetic cases all hold label 1).
        tp, size = np.count_nonzero((pred == 1) & (ref == 1)), np.count_nonzero(pred == 1) + np.count_nonzero(ref == 1)
        assert size > 0 and case["metrics"]["1"]["Dice"] == pytest.approx(2 * tp / size)
    n, worst = 0, 0.0
    cases = {os.path.basename(c["prediction_file"]): c["metrics"] for c in ours["metric_per_case"]}
    for case in theirs["metric_per_case"]:
        for label, metrics in case["metrics"].items():
            for metric, value in metrics.items():
                n += 1
                mine = cases[os.path.basename(case["prediction_file"])][label][metric]
                worst = max(worst, 0.0 if math.isnan(value) and math.isnan(mine) else abs(mine - value))
    n += sum(len(m) for m in theirs["mean"].values()) + len(theirs["foreground_mean"])
    agreement = _result(out)["stages"]["evaluate"]["agreement"]
    assert agreement["values"] == n and agreement["max_abs_difference"] == pytest.approx(worst, abs=1e-15)
    assert agreement["max_abs_difference"] <= 1e-6 and not agreement["missing"]
    assert any("perturbation" in note for note in _result(out)["stages"]["evaluate"]["notes"])


def test_chart_is_a_png_image(bench):
    from PIL import Image

    _, out, _ = bench
    with Image.open(out / "benchmark.png") as image:
        assert image.format == "PNG" and image.size[0] >= 300 and image.size[1] >= 200
        image.verify()


def test_without_nnunetv2_the_message_says_how_to_install_it(bench, tmp_path):
    raw, _, _ = bench
    blocked = textwrap.dedent(
        """
        import sys

        class HideNnunet:
            def find_spec(self, name, path=None, target=None):
                if name == "nnunetv2" or name.startswith("nnunetv2."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, HideNnunet())
        from fastseg.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", blocked, "benchmark", str(raw), "--against", "nnunet", "--stages", "plan", "-o", str(out)],
        cwd=tmp_path, env={**os.environ, "PYTHONSAFEPATH": "1"}, capture_output=True, text=True, encoding="utf-8",
        errors="replace", timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "nnunetv2" in run.stderr and "pip install nnunetv2" in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()  # stopped before any stage


def test_bad_raw_dataset_is_named(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert cli.main(["benchmark", str(missing), "--against", "nnunet", "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"RAW_DATASET {missing} not found" in err and "Traceback" not in err
    empty = tmp_path / "Dataset002_Empty"
    empty.mkdir()
    assert cli.main(["benchmark", str(empty), "--against", "nnunet", "-o", str(tmp_path / "out")]) == 1
    assert "dataset.json not found" in capsys.readouterr().err
    assert cli.main(["benchmark", str(empty), "--against", "itk"]) == 1
    assert "--against takes 'nnunet'" in capsys.readouterr().err


def test_dataset_form_and_stage_subcommands_parse(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["benchmark", "--against", "nnunet", "raw/Dataset001_X", "--stages", "preprocess,plan", "-j", "2"])
    assert args.raw_dataset == "raw/Dataset001_X" and args.against == "nnunet" and args.workers == 2
    assert args.stages == ("plan", "preprocess") and args.func.__name__ == "run_dataset"
    args = parser.parse_args(["benchmark", "raw/Dataset001_X"])
    assert args.stages == STAGES and args.against is None and args.output is None
    args = parser.parse_args(["benchmark", "loader", "work", "-c", "2d", "--against", "nnunet"])
    assert args.work_dir == "work" and args.configuration == "2d" and args.func.__name__ == "run_loader"
    args = parser.parse_args(["benchmark", "predict", "-m", "model", "-i", "images"])
    assert args.model == "model" and args.input == "images" and args.func.__name__ == "run_predict"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["benchmark", "raw", "--stages", "plan,preproces"])
    assert exit_info.value.code == 2 and "did you mean 'preprocess'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["benchmark", "raw", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--stages" in text and "fastseg benchmark predict" in text and "Example" in text
    assert cli.main(["benchmark"]) == 2
    assert "name a raw dataset" in capsys.readouterr().err


@pytest.mark.parametrize(
    "folder,expected",
    [
        pytest.param("Dataset004_Hippocampus", (4, "Dataset004_Hippocampus"), id="nnunet-name"),
        pytest.param("my data", (999, "Dataset999_my_data"), id="other-name"),
        pytest.param("Dataset1_Short", (999, "Dataset999_Dataset1_Short"), id="two-few-digits"),
    ],
)
def test_nnunet_dataset_name(tmp_path, folder, expected):
    assert nnunet_dataset_name(tmp_path / folder) == expected


def test_parse_stages_orders_and_rejects():
    assert parse_stages("evaluate, plan") == ("plan", "evaluate")
    with pytest.raises(ValueError, match="no stage"):
        parse_stages(",")


@pytest.mark.slow
def test_predict_and_evaluate_stages_with_a_model(models, tmp_path):
    """predict with a trained model (fastseg predict beside nnU-Net's predictor), then evaluate on
    its segmentations: the voxel agreement and Dice between the tools, and the metrics to 1e-6."""
    model, images = models["3d"]
    raw = images.parent  # a synthetic dataset folder named "test": imagesTr, labelsTr
    out = tmp_path / "out"
    run = subprocess.run(
        [fastseg_script(), "benchmark", str(raw), "--against", "nnunet", "--stages", "predict,evaluate", "-m", str(model),
         "--cases", "2", "-j", "1", "--threads", "1", "-o", str(out)],
        cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = _result(out)
    predict, evaluate = result["stages"]["predict"], result["stages"]["evaluate"]
    assert predict["agreement"]["cases"] == 2 and predict["agreement"]["equal_fraction"] >= 0.997
    assert predict["agreement"]["mean_dice"] >= 0.95 and predict["throughput_ratio"] > 0
    assert evaluate["agreement"]["ok"] and any("predict stage" in n for n in evaluate["notes"])
    assert sorted(p.name for p in (out / "evaluate" / "prediction").iterdir()) == sorted(
        p.name for p in (out / "predict" / "fastseg").glob("*.nii.gz"))
