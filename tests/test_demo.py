"""`fastseg demo`, `fastseg plan` and `fastseg preprocess` through the command line parser."""

from __future__ import annotations

import json
import re

import pytest

from fastseg import cli

COMMANDS = cli.COMMANDS


def run_cli(*argv) -> int:
    """`fastseg ARGS...` in this process."""
    return cli.main([str(a) for a in argv])


def test_demo_quick_runs_the_whole_job_and_reuses_its_work(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_cli("demo", "--quick", "-o", out, "-j", 1) == 0
    text = capsys.readouterr().out
    assert "generating 6 training and 2 held-out CT-like cases" in text
    for stage in ("generate", "verify", "fingerprint", "plan", "preprocess", "train", "predict", "evaluate", "overlay", "total"):
        assert re.search(rf"^{stage}\s+\d+\.\d\d s", text, re.MULTILINE), stage
    summary = json.loads((out / "predictions" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 2 and "HD95" in summary["mean"]["1"]
    dice = summary["foreground_mean"]["Dice"]
    assert f"foreground mean Dice on the held-out cases: {dice:.3f}" in text
    assert dice > 0.05  # trained for 20 iterations: above chance, far from done (the full demo is measured in benchmarks/)
    model = out / "work" / "Dataset900_FastsegDemo" / "results" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_all"
    assert (model / "checkpoint_final.pth").is_file() and (model / "progress.png").is_file()
    assert any((out / "overlays").glob("*.png"))

    assert run_cli("demo", "--quick", "-o", out, "-j", 1) == 0
    text = capsys.readouterr().out
    assert "reusing the generated dataset" in text and "reusing the trained model" in text
    assert "preprocessed 0 case(s), reused 6" in text


def test_plan_and_preprocess_commands(tmp_path, capsys):
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    raw = tmp_path / "Dataset002_Small"
    write_synthetic_dataset(raw, SyntheticConfig(num_cases=2, shape=(12, 32, 32)), num_processes=1)
    work = tmp_path / "work"
    assert run_cli("plan", raw, "-o", work, "--planner", "resenc-l", "-j", 1) == 0
    text = capsys.readouterr().out
    assert "next: fastseg preprocess" in text
    plans = json.loads((work / "plans.json").read_text())
    assert plans["experiment_planner_used"] == "nnUNetPlannerResEncL" and plans["dataset_name"] == "Dataset002_Small"
    assert json.loads((work / "source.json").read_text())["raw_dataset_dir"] == str(raw.resolve())
    assert run_cli("preprocess", work, "-c", "3d_fullres", "-j", 1) == 0
    assert "3d_fullres: 2 cases preprocessed, 0 already done" in capsys.readouterr().out
    assert run_cli("preprocess", work, "-c", "3d_fullres", "-j", 1) == 0
    assert "0 cases preprocessed, 2 already done" in capsys.readouterr().out


def test_command_errors_are_one_line_messages(tmp_path, capsys):
    assert run_cli("plan", tmp_path / "missing", "-o", tmp_path / "w") == 1
    assert "error:" in capsys.readouterr().err
    assert run_cli("preprocess", tmp_path / "nothing-planned") == 1
    err = capsys.readouterr().err
    assert "plans.json not found" in err and "fastseg plan" in err
    with pytest.raises(SystemExit):
        run_cli("plan", tmp_path, "-o", tmp_path / "w", "--planner", "huge")
    with pytest.raises(SystemExit):
        run_cli("preprocess", tmp_path, "-j", 0)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(command, "--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Example" in text and f"fastseg {command}" in text
