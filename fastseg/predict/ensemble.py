"""Ensembling prediction folders: nnU-Net v2's `nnUNetv2_ensemble` (`ensemble_folders`).

Each input folder holds, per case, the files `fastseg predict --save-probabilities` and nnU-Net's
`--save_probabilities` write:

    <folder>/<case>.npz    key "probabilities": float (C, *image shape), softmax for label datasets,
                           sigmoid per region for region-based ones, on the image's own grid
    <folder>/<case>.pkl    the case's properties (geometry: 'sitk_stuff' or 'nibabel_stuff', 'spacing')

Per case the probabilities of all folders are averaged as nnU-Net averages them (float32: the first
array, plus each further one in folder order, then divided by their number; two arrays in memory)
and turned into labels with nnU-Net's `LabelManager.convert_probabilities_to_segmentation`: argmax
over the classes, or, for region-based datasets, each region whose probability exceeds 0.5 written
as its `regions_class_order` value, later regions over earlier ones. The label file
`<case><file_ending>` gets the geometry of the first folder's `<case>.pkl`, as in nnU-Net.

What nnU-Net reads, and where:
- dataset.json (labels, regions_class_order, file_ending): the one given, else the first folder's
  (nnU-Net's prediction copies it there; `fastseg predict` does not, so pass the model's). Missing:
  an error.
- plans.json: nnU-Net needs it only for two class names, the image reader/writer and the label
  manager. fastseg picks the writer from the file ending and implements nnU-Net's default label
  manager, so plans.json is optional: the one given (an error when it is missing), else the first
  folder's when there is one. A plans.json naming a writer or label manager fastseg does not
  reproduce is an error rather than output in another orientation or with other labels.

Cases: nnU-Net stops when the folders do not all hold the same cases; so does fastseg, naming the
cases and the folders that lack them. With `allow_missing` only the cases every folder holds are
ensembled and the others are named in a warning. Probabilities of different shapes (or channel
counts other than dataset.json's) for a case are an error naming the files; both are checked from
the .npz headers before any case is ensembled.

All or nothing: the outputs are written into a hidden staging folder inside the output folder and
moved into place only when every case succeeded (with dataset.json, and plans.json when there is
one, as nnU-Net's ensembling leaves them there); a failure leaves the output folder as it was. The
staging folder of a killed run is removed by the next run into the same folder.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import secrets
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastseg.runtime.locking import OWNER_PATTERN

logger = logging.getLogger(__name__)

#: Reader/writer classes of nnU-Net whose properties fastseg's writers restore exactly.
SUPPORTED_READER_WRITERS = ("SimpleITKIO", "NibabelIO", "NaturalImage2DIO", "Tiff3DIO")
_STAGING = re.compile(rf"^\.staging-(?P<owner>{OWNER_PATTERN})-[0-9a-f]{{8}}-ensemble$")


@dataclass
class EnsembleReport:
    """What `ensemble_folders` did.

    Attributes:
        written: the label files written, sorted.
        left_out: case -> the input folders that lack it (only with `allow_missing`).
    """

    written: list[Path] = field(default_factory=list)
    left_out: dict[str, list[Path]] = field(default_factory=dict)


def _read_json(path: Path, what: str, hint: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {hint}")
    try:
        content = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a JSON object ({what}), found {type(content).__name__}")
    return content


def _load_dataset_json(given: str | Path | Mapping | None, first: Path) -> tuple[dict, str]:
    """(dataset.json, where it came from) -- the given one, else the first input folder's."""
    if isinstance(given, Mapping):
        content, source = dict(given), "the dataset_json given"
    elif given is not None:
        content = _read_json(Path(given), "a dataset.json", "give the dataset's dataset.json")
        source = str(given)
    else:
        path = first / "dataset.json"
        content = _read_json(
            path, "a dataset.json",
            "nnU-Net's prediction copies dataset.json into its output folder, fastseg predict does not: give the "
            "model folder's with --dataset-json MODEL_DIR/dataset.json",
        )
        source = str(path)
    if not isinstance(content.get("labels"), Mapping):
        raise ValueError(f"{source} has no 'labels' object; is it a dataset.json?")
    if not isinstance(content.get("file_ending"), str):
        raise ValueError(f"{source} has no 'file_ending' (e.g. \".nii.gz\"); the label files need one")
    return content, source


def _load_plans(given: str | Path | Mapping | None, first: Path) -> tuple[dict | None, str]:
    """(plans.json or None, where it came from) -- the given one, else the first folder's if present."""
    if isinstance(given, Mapping):
        plans, source = dict(given), "the plans given"
    elif given is not None:
        plans, source = _read_json(Path(given), "a plans.json", "give the model's plans.json"), str(given)
    elif (first / "plans.json").is_file():
        plans, source = _read_json(first / "plans.json", "a plans.json", ""), str(first / "plans.json")
    else:
        return None, ""
    writer = plans.get("image_reader_writer", "SimpleITKIO")
    if writer not in SUPPORTED_READER_WRITERS:
        raise ValueError(
            f"{source} names the image reader/writer {writer!r}; fastseg writes the properties of "
            f"{', '.join(SUPPORTED_READER_WRITERS)} only (a reorienting writer would need its own); ensemble "
            "these folders with nnUNetv2_ensemble"
        )
    manager = plans.get("label_manager", "LabelManager")
    if manager != "LabelManager":
        raise ValueError(
            f"{source} names the label manager {manager!r}; fastseg implements nnU-Net's LabelManager only; "
            "ensemble these folders with nnUNetv2_ensemble"
        )
    return plans, source


def _num_outputs(dataset_json: Mapping, source: str) -> tuple[int, tuple[int, ...] | None]:
    """(probability channels, regions_class_order or None) that dataset.json's labels imply."""
    from fastseg.io.labels import LabelSpec

    spec = LabelSpec.from_json(dataset_json["labels"], dataset_json.get("regions_class_order"))
    if spec.problems:
        raise ValueError(f"{source}: {'; '.join(spec.problems)}")
    if spec.has_regions:
        return len(spec.regions or []), spec.regions_class_order
    return len(spec.all_labels), None


def _probability_files(folder: Path) -> dict[str, Path]:
    """case -> `<case>.npz` of one input folder (hidden files, such as temporaries, left out)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} not found")
    files = {p.name[: -len(".npz")]: p for p in folder.iterdir() if p.name.endswith(".npz") and not p.name.startswith(".")}
    if not files:
        raise ValueError(
            f"{folder} holds no .npz probability files; predict with --save-probabilities "
            "(nnU-Net: --save_probabilities) to ensemble"
        )
    return files


def probability_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the "probabilities" array in an .npz file, read from its header only.

    Raises:
        ValueError: not a readable .npz file, or no "probabilities" array in it.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if "probabilities.npy" not in names:
                keys = [n[: -len(".npy")] for n in names]
                raise ValueError(
                    f"{path} has no 'probabilities' array (it holds {keys}); is it a probability file of "
                    "fastseg predict / nnU-Net?"
                )
            with z.open("probabilities.npy") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:  # rare header versions: read the array itself
                    a = np.load(path)["probabilities"]
                    shape, dtype = a.shape, a.dtype
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npz file ({type(err).__name__}: {err})") from None
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _check_headers(cases: Sequence[str], folders: Sequence[Path], channels: int, source: str) -> dict[str, int]:
    """Checks every case's probability files (float, dataset.json's channel count, one shape in all
    folders); returns case -> voxels. Raises ValueError naming the files of up to five bad cases."""
    problems, voxels = [], {}
    for case in cases:
        headers = [(folder / f"{case}.npz", *probability_header(folder / f"{case}.npz")) for folder in folders]
        bad = [f"{p} holds {d} values, not probabilities" for p, _, d in headers if d.kind != "f"]
        bad += [
            f"{p} has shape {s}: expected (C, *image shape) with C = {channels} channels ({source})"
            for p, s, _ in headers
            if len(s) < 3 or s[0] != channels
        ]
        if len({s for _, s, _ in headers}) > 1:
            bad.append(
                f"case {case!r}: probabilities of different shapes, "
                + ", ".join(f"{p} {s}" for p, s, _ in headers)
                + "; were all folders predicted from the same images?"
            )
        problems += bad
        voxels[case] = int(np.prod(headers[0][1][1:]))
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError("; ".join(problems[:5]) + more)
    return voxels


def probabilities_to_labels(probabilities: np.ndarray, regions_class_order: Sequence[int] | None = None) -> np.ndarray:
    """nnU-Net's `convert_probabilities_to_segmentation`: labels from (C, *shape) probabilities.

    Args:
        probabilities: softmax (argmax over axis 0, ties to the lower class) or, with
            `regions_class_order`, one sigmoid probability per region.
        regions_class_order: for region-based datasets, the label each region is written as where its
            probability exceeds 0.5, later regions over earlier ones; None (default) for label datasets.

    Returns:
        Labels of shape `probabilities.shape[1:]`, uint8 (uint16 when a label exceeds 255).
    """
    if regions_class_order is None:
        dtype = np.uint8 if probabilities.shape[0] <= 256 else np.uint16
        return probabilities.argmax(0).astype(dtype)
    if len(regions_class_order) != probabilities.shape[0]:
        raise ValueError(
            f"regions_class_order has {len(regions_class_order)} entries but the probabilities have "
            f"{probabilities.shape[0]} channels"
        )
    labels = np.zeros(probabilities.shape[1:], dtype=np.uint8 if max(regions_class_order, default=0) < 256 else np.uint16)
    for channel, value in enumerate(regions_class_order):
        labels[probabilities[channel] > 0.5] = value
    return labels


def _load_probabilities(path: Path) -> np.ndarray:
    with np.load(path) as npz:
        return npz["probabilities"]


def average_probabilities(files: Sequence[str | Path]) -> np.ndarray:
    """The mean of the files' "probabilities" as nnU-Net computes it: float32, the first array plus
    each further one in order, then divided by their number; at most two arrays in memory.

    Raises:
        ValueError: no files, or arrays of different shapes (naming the files).
    """
    if not files:
        raise ValueError("average_probabilities needs at least one file")
    total = _load_probabilities(Path(files[0])).astype(np.float32, copy=False)
    for f in files[1:]:
        p = _load_probabilities(Path(f))
        if p.shape != total.shape:
            raise ValueError(f"{f} has probabilities of shape {p.shape} but {files[0]} has {total.shape}")
        total += p
        del p
    total /= len(files)
    return total


def _load_properties(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            props = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
        raise ValueError(f"{path} is not a readable properties pickle ({type(err).__name__}: {err})") from None
    if not isinstance(props, dict):
        raise ValueError(f"{path} must hold the case's properties dict, found {type(props).__name__}")
    if "original_orientation" in props.get("sitk_stuff", {}):
        raise ValueError(
            f"{path} comes from nnU-Net's SimpleITKIOWithReorient; fastseg cannot restore the original "
            "orientation: ensemble these folders with nnUNetv2_ensemble"
        )
    return props


def ensemble_case(
    case: str,
    files: Sequence[str],
    properties_file: str,
    staging: str,
    file_ending: str,
    regions_class_order: Sequence[int] | None,
    save_probabilities: bool,
    postprocessing: Sequence[dict] = (),
) -> str:
    """One case (a worker's job): averages `files`, writes `<case><file_ending>` into `staging` with
    the geometry of `properties_file`, and with `save_probabilities` also `<case>.npz` / `<case>.pkl`.
    `postprocessing` steps (`fastseg.predict.postprocess`) are applied to the labels, not to the
    saved probabilities. Returns the label file's name."""
    from fastseg import io as fio
    from fastseg.io.atomic import disk_full_error

    props = _load_properties(Path(properties_file))
    probabilities = average_probabilities(files)
    labels = probabilities_to_labels(probabilities, regions_class_order)
    if postprocessing:
        from fastseg.predict.postprocess import apply_postprocessing

        labels = apply_postprocessing(labels, postprocessing)
    folder, name = Path(staging), f"{case}{file_ending}"
    current = name
    try:
        fio.write_seg(labels, folder / name, props)
        if save_probabilities:
            current = f"{case}.npz"
            with open(folder / current, "wb") as f:
                np.savez_compressed(f, probabilities=probabilities)
            current = f"{case}.pkl"
            (folder / current).write_bytes(pickle.dumps(props))
    except OSError as err:  # a full disk names the output file, not the staging folder's
        full = disk_full_error(folder.parent / current, err)
        if full is not None:
            raise full from err
        raise
    return name


def _remove_abandoned_staging(output: Path) -> None:
    """Removes the staging folders that killed ensemble runs left in `output`."""
    from fastseg.runtime.locking import owner_alive

    if not output.is_dir():
        return
    for p in output.iterdir():
        m = _STAGING.match(p.name)
        if m is not None and not owner_alive(m["owner"]):
            logger.info("removing %s, left by an ensemble run that was killed", p)
            shutil.rmtree(p, ignore_errors=True)


def ensemble_folders(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    dataset_json: str | Path | Mapping | None = None,
    plans: str | Path | Mapping | None = None,
    num_processes: int | None = None,
    save_probabilities: bool = False,
    allow_missing: bool = False,
    postprocessing: str | Path | None = None,
    progress: bool | None = None,
) -> EnsembleReport:
    """Averages the probabilities of several prediction folders and writes the label files.

    Args:
        inputs: two or more folders of `<case>.npz` + `<case>.pkl` (`predict --save-probabilities`).
        output: the folder to write `<case><file_ending>` into (created; other files in it stay,
            files of the same names are replaced). Must not be one of `inputs`.
        dataset_json: dataset.json (a path or its content); default: the first input folder's.
        plans: plans.json (a path or its content); default: the first input folder's when present,
            else none (it is only checked, see the module docstring).
        num_processes: worker processes (default: the cores; 1 runs in this process).
        save_probabilities: also write the averaged `<case>.npz` and the `<case>.pkl` (default False).
        allow_missing: ensemble the cases every folder holds and warn about the others (default
            False: a case missing from some folder is an error, as in nnU-Net).
        postprocessing: nnU-Net's postprocessing.pkl or fastseg's .json (`fastseg find-postprocessing`),
            applied to every ensembled label map; None (default): none.
        progress: a progress bar; None (default): only when stderr is a terminal.

    Returns:
        An `EnsembleReport`.

    Raises:
        FileNotFoundError: an input folder, dataset.json, or a case's .pkl is missing.
        ValueError: fewer than two folders, a folder given twice or as the output, a folder without
            .npz files, cases missing from some folders (without `allow_missing`), probabilities of
            different shapes or channel counts, a bad dataset.json or plans.json.
        CaseError: a case failed while being ensembled (its files are named); nothing is written.
    """
    from fastseg.io.atomic import write_json_atomic
    from fastseg.io.formats import reader_for
    from fastseg.runtime.locking import owner_token
    from fastseg.runtime.workers import Job, default_num_workers, run_jobs

    folders = [Path(p) for p in inputs]
    output = Path(output)
    if len(folders) < 2:
        raise ValueError(f"ensembling needs at least two input folders, got {len(folders)}: {[str(f) for f in folders]}")
    resolved = [f.resolve() for f in folders]
    for i, r in enumerate(resolved):
        if r in resolved[:i]:
            raise ValueError(f"input folder {folders[i]} is given twice; give each folder once")
    if output.resolve() in resolved:
        raise ValueError(f"the output folder {output} is one of the input folders; write the ensemble elsewhere")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")

    content, source = _load_dataset_json(dataset_json, folders[0])
    steps = []
    if postprocessing is not None:
        from fastseg.predict.postprocess import load_postprocessing

        steps = load_postprocessing(postprocessing)
    plans_content, _ = _load_plans(plans, folders[0])
    channels, regions_order = _num_outputs(content, source)
    ending = content["file_ending"]
    reader_for(ending)  # an unsupported ending fails before any work

    per_folder = [_probability_files(f) for f in folders]
    common = sorted(set.intersection(*(set(files) for files in per_folder)))
    every = set().union(*(set(files) for files in per_folder))
    left_out = {c: [f for f, files in zip(folders, per_folder) if c not in files] for c in sorted(every - set(common))}
    if left_out:
        listed = "; ".join(f"{c} (not in {', '.join(map(str, fs))})" for c, fs in list(left_out.items())[:10])
        more = f"; and {len(left_out) - 10} more" if len(left_out) > 10 else ""
        if not allow_missing or not common:
            raise ValueError(
                f"the input folders do not hold the same cases: {listed}{more}; "
                + ("predict the missing cases, or ensemble only the common ones (allow_missing / --skip-missing)"
                   if common else "no case is in every folder")
            )
        logger.warning("ensembling the %d cases every folder holds; left out: %s%s", len(common), listed, more)
    missing_pkl = [str(folders[0] / f"{c}.pkl") for c in common if not (folders[0] / f"{c}.pkl").is_file()]
    if missing_pkl:
        raise FileNotFoundError(
            f"properties file(s) not found: {', '.join(missing_pkl[:5])}{' ...' if len(missing_pkl) > 5 else ''}; "
            "each <case>.npz needs the <case>.pkl written beside it"
        )
    voxels = _check_headers(common, folders, channels, source)

    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(output)
    staging = output / f".staging-{owner_token()}-{secrets.token_hex(4)}-ensemble"
    staging.mkdir()
    report = EnsembleReport(left_out=left_out)
    try:
        order = list(regions_order) if regions_order is not None else None
        jobs = [
            Job(
                case,
                (case, [str(f / f"{case}.npz") for f in folders], str(folders[0] / f"{case}.pkl"), str(staging),
                 ending, order, save_probabilities, steps),
                memory_bytes=voxels[case] * (8 * channels + 10),  # two float32 arrays, argmax, labels
            )
            for case in common
        ]
        workers = min(num_processes or default_num_workers(), len(jobs))
        for _ in run_jobs(ensemble_case, jobs, workers, desc="Ensembling", progress=progress):
            pass
        write_json_atomic(content, staging / "dataset.json")
        if plans_content is not None:
            write_json_atomic(plans_content, staging / "plans.json")
        names = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
        for name in names:  # renames within one folder: no space needed, nothing left to fail
            os.replace(staging / name, output / name)
        report.written = [output / f"{case}{ending}" for case in common]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not report.written:
            try:
                output.rmdir()  # only when empty
            except OSError:
                pass
    return report
