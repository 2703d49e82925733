"""fastseg.data.sampling against nnU-Net: the augmentation's patch geometry from the trainer's own
function, the start ranges and centred starts from `nnUNetDataLoader.get_bbox`, whole batches from
`nnUNetDataLoader.generate_train_batch` where its draws are forced, and crops from acvl_utils'
`crop_and_pad_nd`; plus the sampling distributions, padding, 2D slices, region-only reads,
reproducibility and the error messages."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from nnunetv2.training.dataloading import data_loader as nnunet_data_loader
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from fastseg.data.sampling import (
    PatchSampler,
    augmentation_setup,
    centred_start,
    eligible_classes,
    forced_foreground,
    start_range,
)
from fastseg.preprocess.locations import sample_class_locations
from fastseg.preprocess.storage import case_identifiers, case_paths, load_case, save_case

ANNOTATED = (-1, 0, 1, 2)  # the annotated-voxels key preprocessing adds for labels 0, 1, 2 with an ignore label


# --- helpers -----------------------------------------------------------------------------------------------


def _write_case(folder: Path, name: str, data: np.ndarray, seg: np.ndarray, classes=(1, 2)) -> None:
    """Saves a case as `fastseg preprocess` does, with class locations sampled from `seg`."""
    locations = sample_class_locations(seg, list(classes))
    save_case(folder, name, data.astype(np.float32), seg.astype(np.int8), {"class_locations": locations})


def _random_case(rng: np.random.Generator, shape: tuple, channels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Data (C, *shape) of distinct values and a seg (1, *shape) with sparse labels 1 and 2."""
    data = rng.standard_normal((channels, *shape)).astype(np.float32)
    seg = np.zeros((1, *shape), dtype=np.int8)
    seg[0, shape[0] // 2, 2:4, 3] = 1
    seg[0, -1, -1, -2:] = 2
    seg[0, 0, 0, 0] = -1  # outside the nonzero mask
    return data, seg


@pytest.fixture()
def cases(tmp_path: Path) -> Path:
    """Three small cases of different shapes, one without foreground."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "pre"
    for name, shape in (("a", (7, 11, 13)), ("b", (5, 20, 9))):
        _write_case(folder, name, *_random_case(rng, shape))
    data, seg = _random_case(rng, (6, 9, 10))
    seg[seg > 0] = 0
    _write_case(folder, "empty", data, seg)
    return folder


def _nnunet_loader(patch, final, batch_size, oversample, cases=None, all_labels=(0, 1, 2), has_ignore=False):
    """nnU-Net's loader over in-memory cases {name: (data, seg, properties)}, no transforms."""
    cases = cases or {}
    dataset = SimpleNamespace(identifiers=list(cases), load_case=lambda i: (cases[i][0], cases[i][1], None, cases[i][2]))
    labels = SimpleNamespace(all_labels=list(all_labels), has_ignore_label=has_ignore)
    return nnUNetDataLoader(dataset, batch_size, patch, final, labels, oversample_foreground_percent=oversample)


def _reference_crop(array: np.ndarray, start, patch, pad_value) -> np.ndarray:
    """nnU-Net's crop (acvl_utils) of the patch at `start`."""
    bbox = [[int(s), int(s) + int(p)] for s, p in zip(start, patch)]
    return crop_and_pad_nd(np.asarray(array), bbox, pad_value)


def _contains(seg_patch: np.ndarray, key) -> bool:
    labels = key if isinstance(key, tuple) else (key,)
    return bool(np.isin(seg_patch, labels).any())


# --- augmentation geometry -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "patch_size",
    [
        pytest.param((256, 256), id="2d-square"),
        pytest.param((320, 192), id="2d-elongated"),
        pytest.param((96, 160), id="2d-limit-1.67"),
        pytest.param((150, 100), id="2d-exactly-1.5"),
        pytest.param((128, 128, 128), id="3d-iso"),
        pytest.param((80, 192, 160), id="3d-mild"),
        pytest.param((48, 144, 144), id="3d-exactly-threshold"),
        pytest.param((20, 320, 256), id="3d-aniso-dummy-2d"),
        pytest.param((1, 17, 33), id="3d-one-slice"),
        pytest.param((56, 40, 224), id="3d-odd-sides"),
    ],
)
def test_augmentation_setup_equals_nnunet_trainer(patch_size):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = SimpleNamespace(
        configuration_manager=SimpleNamespace(patch_size=list(patch_size)), print_to_log_file=lambda *a, **k: None
    )
    rotation, dummy_2d, initial, mirror_axes = nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(trainer)
    ours = augmentation_setup(patch_size)
    assert ours.rotation == tuple(rotation)
    assert ours.dummy_2d == dummy_2d
    assert ours.initial_patch_size == tuple(int(v) for v in initial)
    assert ours.mirror_axes == tuple(mirror_axes)
    assert all(isinstance(v, int) for v in ours.initial_patch_size)


def test_augmentation_setup_rejects_bad_patch():
    with pytest.raises(ValueError, match=r"got \(64,\)"):
        augmentation_setup((64,))


# --- nnU-Net's deterministic arithmetic ----------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 7, 12])
@pytest.mark.parametrize("percent", [0.0, 0.33, 0.5, 1.0])
def test_forced_foreground_equals_nnunet(batch_size, percent):
    loader = _nnunet_loader((8, 8, 8), (8, 8, 8), batch_size, percent)
    assert forced_foreground(batch_size, percent) == [loader.get_do_oversample(i) for i in range(batch_size)]


@pytest.mark.parametrize(
    "shape, patch, final",
    [
        pytest.param((40, 50, 60), (16, 24, 32), (16, 24, 32), id="no-border"),
        pytest.param((40, 50, 60), (21, 31, 40), (16, 24, 32), id="odd-and-even-border"),
        pytest.param((10, 12, 60), (21, 31, 40), (16, 24, 32), id="image-smaller-than-patch"),
        pytest.param((1, 12, 9), (1, 17, 11), (1, 12, 8), id="2d-slice"),
        pytest.param((16, 24, 32), (16, 24, 32), (16, 24, 32), id="image-equals-patch"),
    ],
)
def test_start_range_equals_nnunet_get_bbox(monkeypatch, shape, patch, final):
    """The uniform start's bounds are those nnU-Net passes to np.random.randint (recorded, not drawn)."""
    calls = []

    def record(low, high):
        calls.append((low, high))
        return low

    monkeypatch.setattr(nnunet_data_loader.np.random, "randint", record)
    loader = _nnunet_loader(patch, final, 2, 0.0)
    lbs, ubs = loader.get_bbox(np.array(shape), False, None)
    lower, upper = start_range(shape, patch, final)
    assert [int(v) for v in lower] == [c[0] for c in calls] == lbs
    assert [int(v) for v in upper + 1] == [c[1] for c in calls]
    assert np.all(lower <= upper)


@pytest.mark.parametrize(
    "locations",
    [
        pytest.param({1: [[0, 3, 0, 50]], 2: [[0, 0, 20, 5], [0, 9, 49, 59]]}, id="two-classes"),
        pytest.param({1: [], 2: [[0, 1, 2, 3]], ANNOTATED: [[0, 9, 9, 9]]}, id="annotated-dropped"),
        pytest.param({1: [], 2: [], ANNOTATED: [[0, 4, 40, 2], [0, 0, 0, 0]]}, id="annotated-only"),
        pytest.param({(1, 2): [[0, 5, 5, 5]], 2: [[0, 8, 1, 58]]}, id="regions"),
    ],
)
@pytest.mark.parametrize("pick", ["first", "last"])
def test_forced_start_equals_nnunet_get_bbox(monkeypatch, locations, pick):
    """nnU-Net's class and location choices are forced to the first / last candidate; its start then
    equals ours for the same candidate, and it chose among the classes `eligible_classes` gives."""
    shape, patch, final = (10, 50, 60), (12, 31, 40), (8, 24, 32)
    class_locations = {k: np.array(v, dtype=np.int64).reshape(-1, 4) for k, v in locations.items()}
    choices = []

    def choose(n):
        choices.append(n)
        return 0 if pick == "first" else n - 1

    monkeypatch.setattr(nnunet_data_loader.np.random, "choice", choose)
    loader = _nnunet_loader(patch, final, 1, 1.0, has_ignore=ANNOTATED in locations)
    lbs, ubs = loader.get_bbox(np.array(shape), True, class_locations)
    eligible = eligible_classes(class_locations)
    assert choices[0] == len(eligible)
    key = eligible[0 if pick == "first" else -1]
    rows = class_locations[key]
    location = rows[0 if pick == "first" else -1, 1:]
    lower, _ = start_range(shape, patch, final)
    start = centred_start(location, lower, patch)
    assert [int(v) for v in start] == lbs
    assert [int(s) + p for s, p in zip(start, patch)] == ubs


@pytest.mark.parametrize("two_d", [False, True], ids=["3d", "2d"])
def test_batches_equal_nnunet_loader_when_its_draws_are_forced(tmp_path, two_d):
    """One case whose only class has one location near a corner, every sample forced: nnU-Net's batch
    (its own draws then have one outcome each) equals ours, padding included."""
    rng = np.random.default_rng(3)
    shape = (6, 14, 9)
    data = rng.standard_normal((2, *shape)).astype(np.float32)
    seg = np.zeros((1, *shape), dtype=np.int8)
    seg[0, 1, 12, 1] = 1
    _write_case(tmp_path, "c", data, seg, classes=(1,))
    patch, final = ((17, 12), (13, 10)) if two_d else ((8, 17, 12), (6, 13, 10))
    sampler = PatchSampler(tmp_path, ["c"], patch, 3, final_patch_size=final, oversample_foreground_percent=1.0, seed=0, two_d=two_d)
    ours = sampler.sample_batch()

    d, s, props = load_case(tmp_path, "c", mmap=False)
    loader = _nnunet_loader(patch, final, 3, 1.0, {"c": (d, s, props)}, all_labels=(0, 1))
    theirs = loader.generate_train_batch()
    assert ours.keys == list(theirs["keys"]) == ["c"] * 3
    assert ours.forced == [True] * 3 and ours.classes == [1] * 3
    np.testing.assert_array_equal(ours.data, theirs["data"].numpy())
    np.testing.assert_array_equal(ours.seg, theirs["target"].numpy())
    assert ours.data.shape == (3, 2, *patch) and ours.seg.shape == (3, 1, *patch)
    assert ours.data.dtype == np.float32 and ours.seg.dtype == np.int16


# --- distributions -------------------------------------------------------------------------------------------


def test_forced_samples_contain_their_class(cases):
    sampler = PatchSampler(cases, case_identifiers(cases), (6, 8, 8), 5, oversample_foreground_percent=0.5, seed=1)
    forced_seen = 0
    for _ in range(200):
        batch = sampler.sample_batch()
        assert batch.forced == [False, False, True, True, True]  # round(5 * 0.5) = 2 unforced
        for b in range(5):
            if batch.forced[b] and batch.keys[b] != "empty":
                forced_seen += 1
                assert batch.classes[b] in (1, 2)
                assert _contains(batch.seg[b], batch.classes[b])
            else:
                assert batch.classes[b] is None  # random start (no foreground in "empty")
    assert forced_seen > 300
    assert {k for _ in range(20) for k in sampler.sample_batch().keys} == {"a", "b", "empty"}


def test_unforced_starts_cover_the_allowed_range(cases):
    patch, final = (9, 12, 10), (5, 8, 8)
    sampler = PatchSampler(cases, ["a", "b"], patch, 4, final_patch_size=final, oversample_foreground_percent=0.0, seed=2)
    starts = {"a": [], "b": []}
    for _ in range(400):
        batch = sampler.sample_batch()
        assert not any(batch.forced)
        for key, start in zip(batch.keys, batch.starts):
            starts[key].append(start)
    for key, shape in (("a", (7, 11, 13)), ("b", (5, 20, 9))):
        seen = np.array(starts[key])
        lower, upper = start_range(shape, patch, final)
        np.testing.assert_array_equal(seen.min(0), lower)
        np.testing.assert_array_equal(seen.max(0), upper)
        for axis in range(3):  # every allowed start occurs
            assert len(np.unique(seen[:, axis])) == upper[axis] - lower[axis] + 1


def test_crops_equal_nnunet_crop_and_pad(cases):
    sampler = PatchSampler(cases, case_identifiers(cases), (9, 16, 15), 3, final_patch_size=(4, 8, 8), seed=4)
    for _ in range(20):
        batch = sampler.sample_batch()
        for b, key in enumerate(batch.keys):
            data, seg, _ = load_case(cases, key)
            np.testing.assert_array_equal(batch.data[b], _reference_crop(data, batch.starts[b], sampler.patch_size, 0))
            np.testing.assert_array_equal(batch.seg[b], _reference_crop(seg, batch.starts[b], sampler.patch_size, -1))


def test_patch_larger_than_image_is_padded_with_0_and_minus_1(tmp_path):
    data = np.arange(1, 1 + 2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3)
    seg = np.array([[[[0, 1, 1], [1, 1, 1], [1, 1, 1]], [[1, 1, 1], [1, 1, 1], [1, 1, 1]]]], dtype=np.int8)
    _write_case(tmp_path, "tiny", data, seg, classes=(1,))
    sampler = PatchSampler(tmp_path, ["tiny"], (4, 6, 7), 4, oversample_foreground_percent=0.5, seed=0)
    for _ in range(10):
        batch = sampler.sample_batch()
        for b in range(4):
            z, y, x = (int(v) for v in batch.starts[b])
            inside = (slice(None), slice(-z, -z + 2), slice(-y, -y + 3), slice(-x, -x + 3))
            np.testing.assert_array_equal(batch.data[b][inside], data)
            np.testing.assert_array_equal(batch.seg[b][inside], seg)
            outside = np.ones(batch.seg[b].shape, dtype=bool)
            outside[inside] = False
            assert (batch.data[b][np.broadcast_to(outside, batch.data[b].shape)] == 0).all()
            assert (batch.seg[b][outside] == -1).all()
            assert outside.sum() == 4 * 6 * 7 - 2 * 3 * 3


def test_ignore_label_centres_unforced_samples_on_annotated_voxels(tmp_path):
    rng = np.random.default_rng(5)
    data, _ = _random_case(rng, (8, 30, 30))
    seg = np.full((1, 8, 30, 30), 3, dtype=np.int8)  # 3: the ignore label
    seg[0, 1:3, 2:6, 2:6] = 0
    seg[0, 6, 25:28, 25:28] = 1
    _write_case(tmp_path, "c", data, seg, classes=(1, 2, ANNOTATED))
    sampler = PatchSampler(tmp_path, ["c"], (4, 8, 8), 3, oversample_foreground_percent=0.34, seed=0)
    for _ in range(50):
        batch = sampler.sample_batch()
        assert batch.classes == [ANNOTATED, ANNOTATED, 1]  # 2 has no voxels; the annotated key is no class
        for b in range(3):
            assert _contains(batch.seg[b], batch.classes[b][1:] if b < 2 else 1)


def test_case_without_annotated_voxels_samples_randomly_and_warns_once(tmp_path, caplog):
    rng = np.random.default_rng(6)
    data, _ = _random_case(rng, (5, 9, 9))
    _write_case(tmp_path, "c", data, np.full((1, 5, 9, 9), 3, dtype=np.int8), classes=(1, 2, ANNOTATED))
    sampler = PatchSampler(tmp_path, ["c"], (3, 4, 4), 3, seed=0)
    with caplog.at_level("WARNING", logger="fastseg.data.sampling"):
        batches = [sampler.sample_batch() for _ in range(5)]
    assert all(b.classes == [None] * 3 for b in batches)
    assert [r.getMessage() for r in caplog.records] == [
        "case 'c' has no annotated voxels (all ignore label); sampling random patches"
    ]


# --- 2D ------------------------------------------------------------------------------------------------------


def test_two_d_returns_slices_of_the_case(cases):
    sampler = PatchSampler(cases, ["a", "b"], (14, 12), 6, final_patch_size=(10, 10), seed=3, two_d=True)
    slices_seen = set()
    for _ in range(30):
        batch = sampler.sample_batch()
        assert batch.data.shape == (6, 2, 14, 12) and batch.seg.shape == (6, 1, 14, 12)
        for b, key in enumerate(batch.keys):
            data, seg, _ = load_case(cases, key)
            z, y, x = (int(v) for v in batch.starts[b])
            assert 0 <= z < data.shape[1]
            slices_seen.add((key, z))
            np.testing.assert_array_equal(batch.data[b], _reference_crop(data[:, z], (y, x), (14, 12), 0))
            np.testing.assert_array_equal(batch.seg[b], _reference_crop(seg[:, z], (y, x), (14, 12), -1))
            if batch.forced[b]:
                assert _contains(batch.seg[b], batch.classes[b])
    assert len(slices_seen) == 7 + 5  # every slice of both cases


def test_two_d_rejects_a_3d_patch(cases):
    with pytest.raises(ValueError, match=r"2 positive sides \(two_d=True\), got \(4, 8, 8\)"):
        PatchSampler(cases, ["a"], (4, 8, 8), 2, two_d=True)


# --- reading ------------------------------------------------------------------------------------------------


class _RecordingMap:
    """A memory map that records each read and refuses to become a whole array."""

    def __init__(self, array: np.memmap) -> None:
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.reads: list[tuple] = []

    def __getitem__(self, key):
        part = np.array(self._array[key])
        self.reads.append(part.shape)
        return part

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole memory map was converted to an array")

    def __len__(self) -> int:
        return len(self._array)


@pytest.mark.parametrize("two_d", [False, True], ids=["3d", "2d"])
def test_only_the_patch_region_is_read(cases, monkeypatch, two_d):
    real_load = np.load
    opened: list[_RecordingMap] = []

    def load(path, mmap_mode=None, **kwargs):
        assert mmap_mode == "r", f"{path} was not memory-mapped"
        opened.append(_RecordingMap(real_load(path, mmap_mode=mmap_mode, **kwargs)))
        return opened[-1]

    monkeypatch.setattr(np, "load", load)
    patch = (6, 5) if two_d else (3, 6, 5)
    sampler = PatchSampler(cases, ["a", "b"], patch, 4, seed=0, two_d=two_d)
    batches = [sampler.sample_batch() for _ in range(10)]
    monkeypatch.setattr(np, "load", real_load)

    assert len(opened) == 4  # each case's two maps opened once
    read_patch = (1, *patch) if two_d else patch
    reads = [shape for m in opened for shape in m.reads]
    assert len(reads) == 2 * 4 * 10
    assert all(len(r) == 4 and all(n <= p for n, p in zip(r[1:], read_patch)) for r in reads)
    for batch in batches:
        for b, key in enumerate(batch.keys):
            data, seg, _ = load_case(cases, key)
            expected = _reference_crop(data, batch.starts[b], read_patch, 0)
            np.testing.assert_array_equal(batch.data[b], expected[:, 0] if two_d else expected)


def test_open_maps_are_bounded_and_not_pickled(cases):
    sampler = PatchSampler(cases, case_identifiers(cases), (3, 4, 4), 8, seed=0, max_open_cases=2)
    sampler.sample_batch()
    assert len(sampler._open) == 2
    clone = pickle.loads(pickle.dumps(sampler))
    assert len(clone._open) == 0
    a, b = sampler.sample_batch(np.random.default_rng(9)), clone.sample_batch(np.random.default_rng(9))
    np.testing.assert_array_equal(a.data, b.data)


# --- reproducibility ----------------------------------------------------------------------------------------


def test_same_seed_gives_same_batches(cases):
    def batches(seed):
        sampler = PatchSampler(cases, case_identifiers(cases), (5, 7, 6), 4, final_patch_size=(4, 5, 5), seed=seed)
        return [sampler.sample_batch() for _ in range(5)]

    first, again, other = batches(11), batches(11), batches(12)
    for x, y in zip(first, again):
        assert x.keys == y.keys and x.forced == y.forced and x.classes == y.classes
        np.testing.assert_array_equal(x.starts, y.starts)
        np.testing.assert_array_equal(x.data, y.data)
        np.testing.assert_array_equal(x.seg, y.seg)
    assert any(not np.array_equal(x.starts, z.starts) for x, z in zip(first, other))

    sampler = PatchSampler(cases, case_identifiers(cases), (5, 7, 6), 4, seed=0)
    x, y = sampler.sample_batch(np.random.default_rng(5)), sampler.sample_batch(np.random.default_rng(5))
    np.testing.assert_array_equal(x.data, y.data)


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "missing"])
@pytest.mark.parametrize("which", [0, 1], ids=["data", "seg"])
def test_damaged_array_names_case_and_file(cases, damage, which):
    path = case_paths(cases, "b")[which]
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    else:
        path.unlink()
    sampler = PatchSampler(cases, ["b"], (3, 4, 4), 2, seed=0)
    expected = "is cut off" if damage == "truncated" else "does not exist"
    with pytest.raises(ValueError, match=rf"case 'b': {path.name} {expected}.*fastseg preprocess"):
        sampler.sample_batch()


def test_folder_without_cases_says_to_preprocess(tmp_path):
    work = tmp_path / "work"
    (work / "nnUNetPlans_3d_fullres").mkdir(parents=True)
    plans = {"configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"}, "3d_lowres": {}}}
    (work / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(FileNotFoundError, match=rf"run `fastseg preprocess {work} -c 3d_fullres`"):
        PatchSampler(work / "nnUNetPlans_3d_fullres", ["a"], (4, 4, 4), 2)
    with pytest.raises(FileNotFoundError, match=r"-c CONFIG"):
        PatchSampler(tmp_path / "absent", ["a"], (4, 4, 4), 2)


def test_missing_case_is_named(cases):
    with pytest.raises(FileNotFoundError, match=r"1 of 2 cases are not preprocessed .*: zz; run `fastseg preprocess"):
        PatchSampler(cases, ["a", "zz"], (4, 4, 4), 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"batch_size": 0}, r"batch_size must be at least 1, got 0", id="batch-size"),
        pytest.param({"oversample_foreground_percent": 1.5}, r"in \[0, 1\], got 1.5", id="percent"),
        pytest.param({"final_patch_size": (5, 4, 4)}, r"must not exceed patch_size", id="final-larger"),
        pytest.param({"patch_size": (4, 0, 4)}, r"3 positive sides \(two_d=False\), got \(4, 0, 4\)", id="zero-side"),
    ],
)
def test_bad_arguments(cases, kwargs, message):
    args = {"patch_size": (4, 4, 4), "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        PatchSampler(cases, ["a"], **args)


# --- a planned dataset ---------------------------------------------------------------------------------------


def test_sampling_a_preprocessed_configuration(tmp_path):
    from helpers import planned_dataset

    _, work = planned_dataset(tmp_path, preprocess_3d_fullres=True)
    plans = json.loads((work / "plans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    setup = augmentation_setup(cfg["patch_size"])
    folder = work / cfg["data_identifier"]
    sampler = PatchSampler(
        folder, case_identifiers(folder), setup.initial_patch_size, cfg["batch_size"], final_patch_size=cfg["patch_size"], seed=0
    )
    for _ in range(5):
        batch = sampler.sample_batch()
        assert batch.data.shape[2:] == setup.initial_patch_size
        assert batch.forced == forced_foreground(cfg["batch_size"], 0.33)
        for b in range(cfg["batch_size"]):
            if batch.classes[b] is not None:
                assert _contains(batch.seg[b], batch.classes[b])
