"""Bad input and faults: broken links in a raw dataset, damaged work-folder files, damaged finished
cases, and a full disk. Each gives one message naming the file and what to do, never a traceback,
and leaves no half-written output behind."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from fastseg.cli import main as cli_main

SHAPE = (4, 6, 5)


def write_nii(path: Path, array: np.ndarray) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(img, str(path))


def tiny_dataset(root: Path, cases=("c0", "c1", "c2"), channels: int = 1) -> Path:
    """A valid dataset of 4x6x5 float32 channels and labels 0..1."""
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for case in cases:
        for c in range(channels):
            write_nii(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
        seg = np.zeros(SHAPE, np.uint8)
        seg[1:3, 1:4, 1:3] = 1
        write_nii(root / "labelsTr" / f"{case}.nii.gz", seg)
    content = {
        "channel_names": {str(c): f"MR{c}" for c in range(channels)},
        "labels": {"background": 0, "a": 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(content))
    return root


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli_main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line and not line.startswith(("INFO", "DEBUG", "WARNING"))]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --- 1. broken links and extra channel files in a raw dataset ----------------------------------------------------


def dangling(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.parent / "gone" / path.name)


def looping(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)  # points at itself


@pytest.mark.parametrize("breaks", [dangling, looping], ids=["dangling", "loop"])
@pytest.mark.parametrize("file", ["imagesTr/c1_0000.nii.gz", "labelsTr/c1.nii.gz"], ids=["channel", "label"])
def test_verify_reports_a_broken_link(tmp_path, breaks, file):
    from fastseg.io import verify_dataset

    root = tiny_dataset(tmp_path / "ds")
    breaks(root / file)
    report = verify_dataset(root, num_processes=1, progress=False)
    assert not report.ok
    found = [p for p in report.errors if p.file == file]
    assert found and "broken symbolic link" in found[0].message, report.format()
    assert {p.file for p in report.errors} == {file}, report.format()


def test_verify_reports_a_broken_link_listed_in_dataset_json(tmp_path):
    from fastseg.io import verify_dataset

    root = tiny_dataset(tmp_path / "ds", cases=("c0", "c1"))
    link = tmp_path / "elsewhere" / "c1_0000.nii.gz"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "gone.nii.gz")
    content = json.loads((root / "dataset.json").read_text())
    content["dataset"] = {
        c: {"images": [str(link) if c == "c1" else f"imagesTr/{c}_0000.nii.gz"], "label": f"labelsTr/{c}.nii.gz"}
        for c in ("c0", "c1")
    }
    (root / "dataset.json").write_text(json.dumps(content))
    report = verify_dataset(root, num_processes=1, progress=False)
    assert [(p.file, p.case) for p in report.errors] == [(str(link), "c1")], report.format()
    assert "is a broken symbolic link" in report.errors[0].message


def test_plan_refuses_a_dangling_channel_link(tmp_path, capsys):
    root = tiny_dataset(tmp_path / "ds")
    dangling(root / "imagesTr" / "c1_0000.nii.gz")
    work = tmp_path / "work"
    rc, _, err = run_cli(["plan", str(root), "-o", str(work), "-j", "1"], capsys)
    assert rc == 1
    line = err[err.index("error: ") :]
    assert "Traceback" not in err and "IndexError" not in err, err
    assert "imagesTr/c1_0000.nii.gz" in line and "broken symbolic link" in line, err
    assert not work.exists(), "a refused plan must not create the work folder"


def test_plan_without_verification_refuses_a_dangling_link(tmp_path):
    from fastseg.workflow import plan_dataset

    root = tiny_dataset(tmp_path / "ds")
    dangling(root / "imagesTr" / "c2_0000.nii.gz")
    with pytest.raises(ValueError, match=r"c2_0000.nii.gz: broken symbolic link"):
        plan_dataset(root, tmp_path / "work", num_processes=1, run_verification=False, progress=False)
    assert not (tmp_path / "work").exists()


def test_extra_channel_file_blames_its_own_case(tmp_path):
    from fastseg.io import verify_dataset

    root = tiny_dataset(tmp_path / "ds", cases=("c0", "c1", "c2", "c3"))
    shutil.copy(root / "imagesTr" / "c1_0000.nii.gz", root / "imagesTr" / "c1_0001.nii.gz")
    report = verify_dataset(root, num_processes=1, progress=False)
    assert [(p.file, p.case) for p in report.errors] == [("imagesTr/c1_0001.nii.gz", "c1")], report.format()
    assert "extra file" in report.errors[0].message and "channel_names declares 1" in report.errors[0].message


def test_extra_channel_file_beyond_the_majority(tmp_path):
    """Without channel_names to go by (an RGB dataset declares 3 channels in one file), the channel
    most cases lack is the extra one."""
    from fastseg.io import verify_dataset

    root = tiny_dataset(tmp_path / "ds", cases=("c0", "c1", "c2"), channels=2)
    (root / "imagesTr" / "c0_0001.nii.gz").unlink()
    (root / "imagesTr" / "c2_0001.nii.gz").unlink()
    content = json.loads((root / "dataset.json").read_text())
    content["channel_names"] = {"0": "R", "1": "G", "2": "B"}
    (root / "dataset.json").write_text(json.dumps(content))
    report = verify_dataset(root, num_processes=1, progress=False)
    layout = [p for p in report.errors if p.kind == "layout"]
    assert [(p.file, p.case) for p in layout] == [("imagesTr/c1_0001.nii.gz", "c1")], report.format()
    assert "only 1 of 3 cases" in layout[0].message


def test_missing_channel_file_still_blames_the_case_lacking_it(tmp_path):
    from fastseg.io import verify_dataset

    root = tiny_dataset(tmp_path / "ds", cases=("c0", "c1", "c2"), channels=2)
    (root / "imagesTr" / "c1_0001.nii.gz").unlink()
    report = verify_dataset(root, num_processes=1, progress=False)
    assert [(p.file, p.case) for p in report.errors] == [("imagesTr/c1_0001.nii.gz", "c1")], report.format()
    assert "has no file for channel 1" in report.errors[0].message


# --- a planned work folder shared by the tests below --------------------------------------------------------------


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[Path, Path]:
    """(raw dataset, work folder after `plan` and `preprocess -c 3d_fullres`), both read-only templates."""
    from helpers import planned_dataset

    return planned_dataset(tmp_path_factory.mktemp("planned"), preprocess_3d_fullres=True)


@pytest.fixture
def work(planned, tmp_path) -> Path:
    """A copy of the planned and preprocessed work folder."""
    return Path(shutil.copytree(planned[1], tmp_path / "work", symlinks=True))


def data_folder(work: Path) -> Path:
    return work / "nnUNetPlans_3d_fullres"


def hidden_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


# --- 2. damaged work-folder files ---------------------------------------------------------------------------------


def _edit(path: Path, change) -> None:
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


DAMAGE = [
    pytest.param("plans.json", lambda p: p.write_text('{\n"configurations": \n'), "not valid JSON", id="plans-truncated"),
    pytest.param("plans.json", lambda p: p.write_text("\nx"), "line 2", id="plans-garbage"),
    pytest.param("plans.json", lambda p: p.write_text("{}"), "missing key 'configurations'", id="plans-empty"),
    pytest.param("plans.json", lambda p: p.write_text("[1, 2]"), "JSON object", id="plans-list"),
    pytest.param("plans.json", lambda p: p.write_bytes(b"\xff\xfe{"), "cannot be read", id="plans-binary"),
    pytest.param(
        "plans.json", lambda p: _edit(p, lambda c: c.pop("transpose_forward")), "missing key 'transpose_forward'", id="plans-no-transpose"
    ),
    pytest.param(
        "plans.json",
        lambda p: _edit(p, lambda c: c["configurations"]["3d_fullres"].pop("spacing")),
        "configuration '3d_fullres'",
        id="plans-config-no-spacing",
    ),
    pytest.param(
        "plans.json",
        lambda p: _edit(p, lambda c: c["configurations"].__setitem__("3d_fullres", [])),
        "configuration '3d_fullres'",
        id="plans-config-not-object",
    ),
    pytest.param("dataset.json", lambda p: p.write_text('{"labels": '), "not valid JSON", id="dataset-json-truncated"),
    pytest.param("dataset.json", lambda p: _edit(p, lambda c: c.pop("labels")), "missing key 'labels'", id="dataset-json-no-labels"),
    pytest.param("dataset_fingerprint.json", lambda p: p.write_text("{"), "not valid JSON", id="fingerprint-truncated"),
    pytest.param(
        "dataset_fingerprint.json", lambda p: _edit(p, lambda c: c.__setitem__("spacings", 3)), "'spacings'", id="fingerprint-bad-spacings"
    ),
    pytest.param("source.json", lambda p: p.write_text(""), "not valid JSON", id="source-empty"),
    pytest.param("source.json", lambda p: p.write_text("{}"), "missing key 'raw_dataset_dir'", id="source-no-raw"),
]


@pytest.mark.parametrize("name, damage, fragment", DAMAGE)
def test_damaged_work_file_gives_one_error_naming_it(work, capsys, name, damage, fragment):
    damage(work / name)
    rc, _, err = run_cli(["preprocess", str(work), "-j", "1", "--overwrite"], capsys)
    assert rc == 1
    line = assert_one_error_line(err)
    assert str(work / name) in line and fragment in line, line
    assert "fastseg plan" in line, line


def test_read_json_names_file_line_and_remedy(tmp_path):
    from fastseg.plan import workdir

    path = tmp_path / "plans.json"
    path.write_text('{"a": 1,\n\n  oops}')
    with pytest.raises(ValueError) as info:
        workdir.read_json(path)
    text = str(info.value)
    assert str(path) in text and "line 3" in text and "fastseg plan" in text, text
    path.write_text("{}")
    with pytest.raises(ValueError, match=r"missing key 'configurations'"):
        workdir.read_json(path, required=("configurations",))


# --- 3. damaged finished cases are redone ---------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _grow(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\0" * 64)


def _bad_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:6] = b"NOTNPY"
    path.write_bytes(bytes(data))


def _cut_json(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


@pytest.mark.parametrize(
    "file, damage",
    [
        pytest.param("case_0001.npy", _truncate, id="data-truncated"),
        pytest.param("case_0001_seg.npy", _truncate, id="seg-truncated"),
        pytest.param("case_0001.npy", _grow, id="data-too-long"),
        pytest.param("case_0001_seg.npy", _bad_header, id="seg-bad-header"),
        pytest.param("case_0001.npy", lambda p: p.write_bytes(b""), id="data-empty"),
        pytest.param("case_0001.json", _cut_json, id="json-truncated"),
    ],
)
def test_damaged_finished_case_is_redone(work, caplog, file, damage):
    from fastseg.preprocess.runner import PreprocessOptions, preprocess_dataset
    from fastseg.preprocess.storage import case_identifiers, is_complete, load_case

    folder = data_folder(work)
    digest_before = (folder / "case_0001.npy").read_bytes(), (folder / "case_0001_seg.npy").read_bytes()
    damage(folder / file)
    assert not is_complete(folder, "case_0001")
    assert case_identifiers(folder) == ["case_0000", "case_0002"]
    options = PreprocessOptions(configurations=("3d_fullres",), num_processes=1, progress=False)
    with caplog.at_level(logging.INFO):
        report = preprocess_dataset(work, options=options)[0]
    assert report.processed == ["case_0001"] and report.skipped == ["case_0000", "case_0002"]
    assert any("case_0001" in r.getMessage() and file in r.getMessage() and "again" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    assert ((folder / "case_0001.npy").read_bytes(), (folder / "case_0001_seg.npy").read_bytes()) == digest_before
    load_case(folder, "case_0001")


def test_intact_npy_check_matches_numpy(tmp_path, rng):
    from fastseg.preprocess.storage import npy_problem

    for array in (rng.normal(size=(2, 3, 4)).astype(np.float32), np.zeros((0, 5), np.int8), np.asfortranarray(np.ones((3, 5), np.int16))):
        path = tmp_path / "a.npy"
        np.save(path, array)
        assert npy_problem(path) is None
        _truncate(path) if path.stat().st_size > 200 else _grow(path)
        assert npy_problem(path) is not None
    assert "does not exist" in npy_problem(tmp_path / "missing.npy")


# --- 4. a full disk -------------------------------------------------------------------------------------------------


def _failing_save(kind: str):
    """np.save that fails on the second case's image, as a full disk makes it fail."""
    real = np.save

    def save(file, array, *args, **kwargs):
        if str(getattr(file, "name", "")).endswith("case_0001.npy"):
            if kind == "enospc":
                file.write(b"\x93NUMPY")
                raise OSError(errno.ENOSPC, "No space left on device")
            raise OSError(f"{array.nbytes} requested and 4096 written")  # numpy's short tofile() write
        return real(file, array, *args, **kwargs)

    return save


@pytest.mark.parametrize("kind", ["enospc", "short-write"])
def test_preprocess_on_a_full_disk_names_the_file(work, capsys, monkeypatch, kind):
    monkeypatch.setattr(np, "save", _failing_save(kind))
    rc, _, err = run_cli(["preprocess", str(work), "-c", "3d_fullres", "-j", "1", "--overwrite"], capsys)
    assert rc == 1
    line = assert_one_error_line(err)
    assert str(data_folder(work) / "case_0001.npy") in line and "disk is full" in line, line
    assert hidden_files(work) == [], "temporary files left behind"


def _failing_write_text(name: str):
    real = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name.endswith(name):
            with open(self, "w") as f:
                f.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, *args, **kwargs)

    return write_text


@pytest.mark.parametrize("name", ["dataset_fingerprint.json", "plans.json", "source.json"])
def test_plan_on_a_full_disk_leaves_no_work_folder(planned, tmp_path, capsys, monkeypatch, name):
    raw = planned[0]
    monkeypatch.setattr(Path, "write_text", _failing_write_text(name))
    work = tmp_path / "new" / "work"
    rc, _, err = run_cli(["plan", str(raw), "-o", str(work), "-j", "1"], capsys)
    assert rc == 1
    line = assert_one_error_line(err)
    assert name in line and "disk is full" in line, line
    assert not (tmp_path / "new").exists(), "a failed plan must not leave the folders it created"


def test_plan_failure_keeps_the_users_files_and_the_old_plans(planned, work, capsys, monkeypatch):
    raw = planned[0]
    (work / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    monkeypatch.setattr(Path, "write_text", _failing_write_text("source.json"))
    rc, _, err = run_cli(["plan", str(raw), "-o", str(work), "-j", "1", "--planner", "resenc-m"], capsys)
    assert rc == 1
    assert_one_error_line(err)
    assert {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()} == before
    assert hidden_files(work) == []


def test_refused_plan_does_not_create_the_work_folder(tmp_path, capsys):
    root = tiny_dataset(tmp_path / "ds")
    write_nii(root / "labelsTr" / "c1.nii.gz", np.full(SHAPE, 7, np.uint8))
    work = tmp_path / "a" / "work"
    rc, _, err = run_cli(["plan", str(root), "-o", str(work), "-j", "1"], capsys)
    assert rc == 1 and "dataset verification failed" in err
    assert not (tmp_path / "a").exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (we run as root here and in CI); skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path, leave: int) -> None:
    """Fills the file system of `folder` up to `leave` free bytes."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_preprocess_on_a_real_full_disk(planned, small_tmpfs, capsys):
    work = Path(shutil.copytree(planned[1], small_tmpfs / "work", ignore=shutil.ignore_patterns("nnUNetPlans_*")))
    _fill(small_tmpfs, 48 << 10)
    rc, _, err = run_cli(["preprocess", str(work), "-c", "3d_fullres", "-j", "1"], capsys)
    assert rc == 1
    line = assert_one_error_line(err)
    assert "disk is full" in line and str(data_folder(work)) in line, line
    assert hidden_files(work) == [], "temporary files left behind"


def test_plan_on_a_real_full_disk(planned, small_tmpfs, capsys):
    raw = planned[0]
    _fill(small_tmpfs, 8 << 10)
    work = small_tmpfs / "work"
    rc, _, err = run_cli(["plan", str(raw), "-o", str(work), "-j", "1"], capsys)
    assert rc == 1
    line = assert_one_error_line(err)
    assert "disk is full" in line, line
    assert not work.exists()
