"""The nnU-Net v2 raw dataset layout: which files make up which case.

    Dataset001_Name/
      dataset.json          channel_names (legacy: modality), labels, numTraining, file_ending
      imagesTr/{case}_{XXXX}{file_ending}     one file per channel, XXXX = 0000, 0001, ...
      labelsTr/{case}{file_ending}
      imagesTs/{case}_{XXXX}{file_ending}     optional test images

dataset.json may instead list the training cases explicitly under `dataset`:
`{"case": {"images": ["imagesTr/case_0000.nii.gz", ...], "label": "labelsTr/case.nii.gz"}}`, paths
relative to the dataset folder or absolute, with `$VAR` expanded from the `env` the caller passes
(nnU-Net expands them from the process environment; fastseg's CLI passes `os.environ`).

`scan_raw_dataset` reads the layout and reports every problem it sees without opening an image;
`load_raw_dataset` returns the dataset and raises when a case lacks files.
"""

from __future__ import annotations

import errno
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fastseg.io.dataset_json import json_problem, read_dataset_json
from fastseg.io.errors import DatasetError
from fastseg.io.format_base import TIFF_ENDINGS
from fastseg.io.formats import ImageFormat, reader_for
from fastseg.io.labels import LabelSpec, LabelValue
from fastseg.io.report import Problem


@dataclass
class CaseFiles:
    """The files of one case.

    Attributes:
        identifier: the case name (`BRATS_001`), the file name without `_XXXX` and ending.
        images: channel files, in channel order.
        label: the segmentation, or None (test cases, or a training case whose label is missing).
    """

    identifier: str
    images: list[Path]
    label: Path | None = None


@dataclass
class RawDataset:
    """A raw dataset in nnU-Net v2 layout.

    Attributes:
        root: the dataset folder.
        dataset_json: dataset.json as loaded.
        cases: training cases by identifier, sorted by identifier.
        test_cases: cases of imagesTs by identifier, sorted (labels None).
    """

    root: Path
    dataset_json: dict
    cases: dict[str, CaseFiles] = field(default_factory=dict)
    test_cases: dict[str, CaseFiles] = field(default_factory=dict)

    @property
    def channel_names(self) -> dict[str, str]:
        """`channel_names` (or legacy `modality`): channel index as a string -> name ("CT", "T2", ...)."""
        names = self.dataset_json.get("channel_names", self.dataset_json.get("modality", {}))
        return {str(k): str(v) for k, v in names.items()}

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def file_ending(self) -> str:
        return self.dataset_json["file_ending"]

    @property
    def image_format(self) -> ImageFormat:
        """The reader/writer for `file_ending`."""
        return reader_for(self.file_ending)

    @property
    def num_training(self) -> int:
        """dataset.json's `numTraining`."""
        return int(self.dataset_json["numTraining"])

    @property
    def label_spec(self) -> LabelSpec:
        return LabelSpec.from_json(self.dataset_json["labels"], self.dataset_json.get("regions_class_order"))

    @property
    def labels(self) -> dict[str, LabelValue]:
        """Label name -> value: an int, or a tuple of ints for a region."""
        return self.label_spec.labels

    @property
    def has_regions(self) -> bool:
        return self.label_spec.has_regions

    @property
    def ignore_label(self) -> int | None:
        return self.label_spec.ignore_label

    @property
    def regions_class_order(self) -> list[int] | None:
        order = self.label_spec.regions_class_order
        return list(order) if order is not None else None

    @property
    def all_labels(self) -> list[int]:
        """Sorted label values including background and region members, without the ignore label."""
        return self.label_spec.all_labels

    @property
    def foreground_labels(self) -> list[int]:
        return self.label_spec.foreground_labels

    @property
    def name(self) -> str:
        return str(self.dataset_json.get("name", self.root.name))


# --- file layout ----------------------------------------------------------------------------------


def _layout(message: str, file: str | None, case: str | None = None) -> Problem:
    return Problem(message, file, "error", kind="layout", case=case)


def _stray(message: str, file: str) -> Problem:
    return Problem("stray file: " + message, file, "error", kind="stray")


def _hidden(file: str) -> Problem:
    return Problem("hidden file ignored", file, "warning", kind="stray")


def _expand(path: str, env: Mapping[str, str] | None) -> str:
    if env is None:
        return path
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), path)


def _resolve(root: Path, path: str, env: Mapping[str, str] | None) -> Path:
    p = Path(_expand(str(path), env))
    return p if p.is_absolute() else (root / p).resolve()


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root.resolve() if path.is_absolute() else root))
    except ValueError:
        return str(path)


def broken_link(path: Path) -> str | None:
    """What is wrong with `path` when it is a symbolic link that leads to no file (its target is gone,
    or links loop), with what to do; None for anything else."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
        return None
    except OSError as e:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        if e.errno == errno.ELOOP:
            what = f"broken symbolic link: it leads to {target!r}, and on through a loop of links that never reaches a file"
        else:
            what = f"broken symbolic link to {target!r}, which does not exist"
        return what + "; point the link at the file, or replace it with the file"


def _is_sidecar(name: str, ending: str) -> bool:
    return ending.lower() in TIFF_ENDINGS and name.endswith(".json")


def _scan_images(
    root: Path, folder: str, ending: str, problems: list[Problem]
) -> tuple[dict[str, dict[int, Path]], set[str]]:
    """{identifier: {channel: path}} of `folder`, plus the stems of `.json` files (TIFF sidecars)."""
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + r"$")
    found: dict[str, dict[int, Path]] = {}
    sidecars: set[str] = set()
    for entry in sorted((root / folder).iterdir()):
        name, rel = entry.name, f"{folder}/{entry.name}"
        if name.startswith("."):
            problems.append(_hidden(rel))
        elif entry.is_dir():
            problems.append(_stray(f"unexpected folder in {folder}; it should hold only image files", rel))
        elif m := pattern.match(name):
            found.setdefault(m["case"], {})[int(m["channel"])] = entry
            if why := broken_link(entry):
                problems.append(_layout(why, rel, m["case"]))
        elif _is_sidecar(name, ending):
            sidecars.add(name[: -len(".json")])
        elif name.endswith(ending):
            problems.append(
                _stray(
                    f"name does not end in _XXXX{ending}; name channel files <case>_0000{ending}, <case>_0001{ending}, ...",
                    rel,
                )
            )
        else:
            problems.append(
                _stray(f"does not have the dataset's file ending {ending!r}; remove it or fix its name", rel)
            )
    return found, sidecars


def _scan_labels(root: Path, ending: str, problems: list[Problem]) -> tuple[dict[str, Path], set[str]]:
    found: dict[str, Path] = {}
    sidecars: set[str] = set()
    for entry in sorted((root / "labelsTr").iterdir()):
        name, rel = entry.name, f"labelsTr/{entry.name}"
        if name.startswith("."):
            problems.append(_hidden(rel))
        elif entry.is_dir():
            problems.append(_stray("unexpected folder in labelsTr; it should hold only label files", rel))
        elif name.endswith(ending) and len(name) > len(ending):
            found[name[: -len(ending)]] = entry
            if why := broken_link(entry):
                problems.append(_layout(why, rel, name[: -len(ending)]))
        elif _is_sidecar(name, ending):
            sidecars.add(name[: -len(".json")])
        else:
            problems.append(
                _stray(f"does not have the dataset's file ending {ending!r}; remove it or fix its name", rel)
            )
    return found, sidecars


def _channel_problems(
    folder: str,
    cases: dict[str, dict[int, Path]],
    ending: str,
    declared: int,
    expected: set[int] | None = None,
) -> tuple[list[Problem], set[int]]:
    """Channel files that cases lack or have too many of, and the channel indices every case needs.

    Args:
        folder: "imagesTr" or "imagesTs".
        cases: {case: {channel index: file}} as found.
        ending: the file ending.
        declared: channels dataset.json's channel_names declares (0: unknown).
        expected: the channel indices to require (imagesTs takes those of imagesTr); None decides
            from `cases`: an index that fewer than half of the cases have a file for is an extra
            file in those cases, and so is one that half of them have when it lies beyond what
            channel_names declares (every file holds at least one channel; an RGB image or a 4D
            file holds more). Every case lacking any other index misses a file. (When most cases
            have more files than channel_names declares, channel_names is what is wrong: the
            content check reports it.)
    """
    total = len(cases)
    counts = Counter(ch for channels in cases.values() for ch in channels)
    decided = expected is None
    if expected is None:
        expected = {
            ch for ch, n in counts.items() if 2 * n > total or (2 * n == total and not (declared and ch >= declared))
        }
    problems = []
    for case, channels in sorted(cases.items()):
        for ch in sorted(expected - set(channels)):
            why = f"{counts[ch]} of {total} cases have one" if decided else "the training cases have it"
            problems.append(
                _layout(
                    f"case {case!r} has no file for channel {ch} ({why}); add it or remove the case",
                    f"{folder}/{case}_{ch:04d}{ending}",
                    case,
                )
            )
        for ch in sorted(set(channels) - expected):
            if decided:
                why = f"only {counts[ch]} of {total} cases have one"
            else:
                why = f"the training cases have channel files {sorted(expected)} only"
            if declared and ch >= declared:
                why += f", and dataset.json's channel_names declares {declared} channel(s)"
            problems.append(
                _layout(
                    f"case {case!r} has an extra file for channel {ch} ({why}); remove it, or declare the channel "
                    "and give every case a file for it",
                    f"{folder}/{case}_{ch:04d}{ending}",
                    case,
                )
            )
    return problems, expected


def _case_files(cases: dict[str, dict[int, Path]], labels: dict[str, Path] | None) -> dict[str, CaseFiles]:
    return {
        case: CaseFiles(case, [channels[c] for c in sorted(channels)], labels.get(case) if labels is not None else None)
        for case, channels in sorted(cases.items())
    }


def _scan_listed(root: Path, listed, env, problems: list[Problem]) -> dict[str, CaseFiles]:
    """Training cases listed under dataset.json's `dataset` key."""
    if not isinstance(listed, dict):
        problems.append(
            json_problem(f"'dataset' must map case identifiers to {{images, label}}, got {type(listed).__name__}")
        )
        return {}
    cases = {}
    for case in sorted(listed):
        entry = listed[case]
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("images"), list)
            or not isinstance(entry.get("label"), str)
        ):
            problems.append(
                json_problem(f'dataset[{case!r}] must be {{"images": [paths...], "label": path}}, got {entry!r}')
            )
            continue
        images = [_resolve(root, p, env) for p in entry["images"]]
        label = _resolve(root, entry["label"], env)
        for what, p in [("image", p) for p in images] + [("label", label)]:
            if not p.is_file():
                why = broken_link(p)
                message = f"{what} of case {case!r} listed in dataset.json " + (f"is a {why}" if why else "does not exist")
                problems.append(_layout(message, _rel(root, p), case))
        cases[case] = CaseFiles(case, images, label if label.is_file() else None)
    return cases


def _scan_folders(
    root: Path, ending: str, declared: int, problems: list[Problem]
) -> tuple[dict[str, CaseFiles], set[int]]:
    """Training cases from imagesTr/labelsTr, and the channel indices every case needs."""
    for folder in ("imagesTr", "labelsTr"):
        if not (root / folder).is_dir():
            problems.append(
                _layout(f"folder {folder} is missing; training images go to imagesTr, labels to labelsTr", folder)
            )
    images: dict[str, dict[int, Path]] = {}
    labels: dict[str, Path] = {}
    img_sidecars: set[str] = set()
    seg_sidecars: set[str] = set()
    if (root / "imagesTr").is_dir():
        images, img_sidecars = _scan_images(root, "imagesTr", ending, problems)
    if (root / "labelsTr").is_dir():
        labels, seg_sidecars = _scan_labels(root, ending, problems)
    channel_problems, channels = _channel_problems("imagesTr", images, ending, declared)
    if channels and channels != set(range(max(channels) + 1)):
        problems.append(
            _layout(
                f"channel indices in imagesTr are {sorted(channels)}; they must be consecutive from 0000", "imagesTr"
            )
        )
    problems.extend(channel_problems)
    for case in sorted(images):
        if case not in labels:
            problems.append(_layout(f"training case {case!r} has no label file", f"labelsTr/{case}{ending}", case))
    for case in sorted(set(labels) - set(images)):
        problems.append(
            _stray(
                f"label without images (no imagesTr/{case}_0000{ending}); add the images or remove the label",
                f"labelsTr/{case}{ending}",
            )
        )
    for stem in sorted(img_sidecars - set(images)):
        problems.append(_stray("JSON sidecar of no case", f"imagesTr/{stem}.json"))
    for stem in sorted(seg_sidecars - set(labels)):
        problems.append(_stray("JSON sidecar of no label", f"labelsTr/{stem}.json"))
    return _case_files(images, labels), channels


def scan_raw_dataset(
    root: str | os.PathLike, *, env: Mapping[str, str] | None = None
) -> tuple[RawDataset | None, list[Problem]]:
    """Reads a raw dataset's layout without opening any image.

    Args:
        root: the dataset folder (the one holding dataset.json).
        env: variables to expand in paths listed under dataset.json's `dataset` key (`$VAR`,
            `${VAR}`); None (default) expands nothing.

    Returns:
        `(dataset, problems)`: the dataset (None when dataset.json is missing or unusable) and every
        problem found: dataset.json keys and labels ("dataset_json"), missing folders and files
        ("layout"), stray files ("stray"), a numTraining that disagrees ("count").
    """
    root = Path(root)
    if not root.is_dir():
        return None, [_layout(f"dataset folder {root} does not exist or is not a folder", None)]
    content, problems = read_dataset_json(root)
    if content is None:
        return None, problems
    ending = content["file_ending"]
    dataset = RawDataset(root, content)
    declared = dataset.num_channels
    if "dataset" in content:
        dataset.cases = _scan_listed(root, content["dataset"], env, problems)
        channels: set[int] = set()
    else:
        dataset.cases, channels = _scan_folders(root, ending, declared, problems)

    if (root / "imagesTs").is_dir():
        test, sidecars = _scan_images(root, "imagesTs", ending, problems)
        problems.extend(_channel_problems("imagesTs", test, ending, declared, channels or None)[0])
        for stem in sorted(sidecars - set(test)):
            problems.append(_stray("JSON sidecar of no case", f"imagesTs/{stem}.json"))
        dataset.test_cases = _case_files(test, None)

    n = content.get("numTraining")
    if isinstance(n, int) and not isinstance(n, bool) and n != len(dataset.cases):
        problems.append(
            Problem(
                f"numTraining is {n} but {len(dataset.cases)} training cases were found "
                f"(first: {list(dataset.cases)[:5]}); fix numTraining or add the missing cases",
                "dataset.json",
                kind="count",
            )
        )
    return dataset, problems


def load_raw_dataset(root: str | os.PathLike, *, env: Mapping[str, str] | None = None) -> RawDataset:
    """Loads a raw dataset's layout (no image is opened).

    Args:
        root: the dataset folder (holding dataset.json, imagesTr, labelsTr, optionally imagesTs).
        env: variables for `$VAR` in paths listed under dataset.json's `dataset` key; None (default)
            expands nothing.

    Returns:
        The `RawDataset`; training and test cases sorted by identifier.

    Raises:
        DatasetError: the folder or dataset.json is missing or unusable, dataset.json has errors, or
            a case lacks a channel file or its label. The message lists every such problem; run
            `fastseg verify` for a full check that also opens the files. Stray files and a wrong
            numTraining do not raise here (verification reports them).
    """
    dataset, problems = scan_raw_dataset(root, env=env)
    fatal = [p for p in problems if p.severity == "error" and p.kind in ("dataset_json", "layout")]
    if dataset is None or fatal:
        listed = "\n".join(f"  - {p}" for p in fatal or problems)
        raise DatasetError(f"cannot load raw dataset {root}:\n{listed}\nRun `fastseg verify {root}` for a full check.")
    return dataset
