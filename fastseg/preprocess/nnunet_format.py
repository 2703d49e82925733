"""nnU-Net 2.8's own preprocessed format, written by fastseg's preprocessing: `nnUNetv2_train` trains on it.

    <out>/                                 nnU-Net's dataset folder, $nnUNet_preprocessed/DatasetXXX_Name
        <plans_name>.json                  the plans (nnU-Net finds them by plans_name: nnUNetPlans.json)
        dataset.json, dataset_fingerprint.json
        gt_segmentations/<case><ending>    the training labels as the raw dataset has them
        <data_identifier>/<case>.b2nd      float32 (C, z, y, x), a blosc2 NDArray
        <data_identifier>/<case>_seg.b2nd  int16 (1, z, y, x), -1 outside the nonzero mask
        <data_identifier>/<case>.pkl       the properties, pickled, as nnU-Net's preprocessor has them
        .fastseg-nnunet.json               which plans each data folder was made with (fastseg's record)

The arrays and properties are fastseg's preprocessing (`fastseg.preprocess.case`, the same kernels
and the same class-location sampling as `fastseg preprocess`); only the storage is nnU-Net's. Each
array is stored the way nnU-Net 2.8 stores it: chunk and block shapes from the configuration's patch
size (`blosc2_layout`, nnU-Net's rule), LZ4HC at level 5, and per array the filter (none or byte
shuffle) that compresses a centred one-chunk slab smaller (`choose_filter`; ties: none).

Why written directly from the raw images rather than converted from fastseg's .npy cases: nnU-Net
picks its dataset class from the file endings of the data folder and refuses a folder with any
ending besides one array format, .pkl and .npy, so fastseg's `<case>.json` cannot share the folder;
and both formats use the same folder name (the plans' data_identifier). A work folder that is also
nnU-Net's dataset folder (`-d`) would otherwise need two copies under one name. The data folder
therefore holds one format; a folder holding fastseg's cases is refused, not mixed.

Writes are atomic (`fastseg.io.atomic`), the .pkl last: a case is complete when its .pkl is whole
and both arrays open with the expected dtypes and matching shapes (a cut-off .b2nd does not open).
A rerun skips complete cases, redoes damaged ones, removes the temporaries of killed runs (nnU-Net
would read their endings too) and the files of cases no longer in the dataset. When the plans
change (a new digest in `.fastseg-nnunet.json`), every case of that folder is redone.

blosc2 is imported where arrays are written or read, not at import (importing it starts a thread,
and the worker pool's fork server must not hold threads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastseg.io.atomic import atomic_path, remove_abandoned_temporaries, write_json_atomic
from fastseg.plan import workdir
from fastseg.plan.fingerprint import case_order
from fastseg.plan.plans import data_configurations, resolve_configuration
from fastseg.preprocess.caseplan import CasePlan
from fastseg.preprocess.memory import preprocess_bytes
from fastseg.preprocess.runner import ConfigurationReport, PreprocessOptions, _estimates
from fastseg.runtime.locking import folder_lock
from fastseg.runtime.workers import Job, default_num_workers, run_jobs

logger = logging.getLogger(__name__)

#: The record of which plans made each data folder (in the dataset folder, out of nnU-Net's way).
STATE_FILE = ".fastseg-nnunet.json"
GT_FOLDER = "gt_segmentations"

#: nnU-Net 2.8's storage settings (nnUNetDatasetBlosc2.save_case, comp_blosc2_params).
CLEVEL = 5
MAX_BLOCK_BYTES = 128 * 1024
MAX_CHUNK_BYTES = 6 * 1024**2
MAX_CHUNK_TO_PATCH = 1.5
_FORMAT_VERSION = "nnunetv2-2.8-blosc2"


class NnunetFormatError(ValueError):
    """nnU-Net's format cannot be written: blosc2 is missing, the plans lack what it needs, or the
    output folder holds something that cannot stay. The message names the file and what to do."""


def require_blosc2():
    """The blosc2 module, or a `NnunetFormatError` that says how to install it."""
    try:
        import blosc2
    except ImportError as err:
        raise NnunetFormatError(
            f"writing nnU-Net's preprocessed format needs the blosc2 package, which cannot be imported ({err}); "
            "install it with `pip install 'blosc2>=3.3'` (nnunetv2 installs it too)"
        ) from None
    return blosc2


# --- the array layout ---------------------------------------------------------------------------------


def _pow2_at_least(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _pow2_below(n: int) -> int:
    """The largest power of two strictly below n (1 for n <= 2)."""
    return 1 if n <= 2 else 1 << ((n - 1).bit_length() - 1)


def blosc2_layout(
    shape: Sequence[int], patch_size: Sequence[int], itemsize: int
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """nnU-Net 2.8's (blocks, chunks) for storing a (C, z, y, x) array trained with `patch_size`.

    The rule, in short: every axis aims at 1.5 patch lengths (at most the image's length; the channel
    axis is always 1, and a 2D patch is the 3D patch (1, y, x)). Blocks start as each patch length
    rounded up to a power of two (at most the image's length) and, while they exceed 128 KiB, the
    axis longest relative to its aim is halved to the next lower power of two (ties: the last axis).
    Chunks start as one block and grow, one block length at a time and clamped to the image and the
    aim, along the axis covered least relative to its aim (ties: the longer image axis, then the
    first axis) as long as a chunk stays within 6 MiB; the slice axis never grows for a 2D patch,
    nor an axis whose patch length is 1.

    Args:
        shape: the array's shape, (C, z, y, x).
        patch_size: the configuration's patch size, (z, y, x) or (y, x).
        itemsize: bytes per element (4 for float32 images, 2 for int16 segmentations).

    Returns:
        (blocks, chunks), each a 4-tuple with 1 for the channel axis.

    Raises:
        ValueError: a shape that is not 4-D or not positive, a patch size of neither 2 nor 3 positive
            entries, or a block that cannot be made small enough.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must be 4 positive sizes (C, z, y, x), got {shape}")
    if len(patch_size) not in (2, 3) or min(int(p) for p in patch_size) < 1:
        raise ValueError(f"patch_size must be 2 or 3 positive sizes, got {tuple(patch_size)}")
    if itemsize < 1:
        raise ValueError(f"itemsize must be positive, got {itemsize}")
    flat = len(patch_size) == 2
    patch = (1, *map(int, patch_size)) if flat else tuple(int(p) for p in patch_size)
    image = shape[1:]
    aim = [max(1, min(n, math.floor(MAX_CHUNK_TO_PATCH * p))) for n, p in zip(image, patch)]

    def nbytes(spatial: Sequence[int]) -> int:
        return math.prod(spatial) * itemsize

    block = [min(_pow2_at_least(p), n) for p, n in zip(patch, image)]
    cap = min(MAX_BLOCK_BYTES, MAX_CHUNK_BYTES)
    while nbytes(block) > cap:
        shrinkable = [a for a in range(3) if block[a] > 1]
        if not shrinkable:
            raise ValueError(f"a block of one element ({itemsize} bytes) exceeds {cap} bytes")
        axis = max(shrinkable, key=lambda a: (block[a] / aim[a], a))
        block[axis] = _pow2_below(block[axis])

    chunk = list(block)
    while True:
        best = None
        for a in range(3):
            if (flat and a == 0) or patch[a] == 1 or chunk[a] >= min(image[a], aim[a]):
                continue
            grown = min(chunk[a] + block[a], image[a], aim[a])
            trial = chunk[:a] + [grown] + chunk[a + 1:]
            size = nbytes(trial)
            if size > MAX_CHUNK_BYTES:
                continue
            key = (chunk[a] / aim[a], -image[a], a, -size)
            if best is None or key < best[0]:
                best = (key, trial)
        if best is None:
            break
        chunk = best[1]
    return (1, *block), (1, *chunk)


def choose_filter(array: np.ndarray, blocks: Sequence[int], chunks: Sequence[int], threads: int = 1):
    """The blosc2 filter nnU-Net 2.8 stores `array` with: of no filter and byte shuffle, the one that
    compresses the centred slab of at most one chunk smaller (LZ4HC, level 5; a tie, or a failed trial,
    gives no filter)."""
    blosc2 = require_blosc2()
    slab_shape = [min(int(c), int(s)) for c, s in zip(chunks, array.shape)]
    where = tuple(slice((s - n) // 2, (s - n) // 2 + n) for s, n in zip(array.shape, slab_shape))
    slab = np.ascontiguousarray(array[where])
    slab_blocks = tuple(max(1, min(int(b), n)) for b, n in zip(blocks, slab_shape))
    sizes = []
    for candidate in (blosc2.Filter.NOFILTER, blosc2.Filter.SHUFFLE):
        try:
            trial = blosc2.asarray(slab, chunks=tuple(slab_shape), blocks=slab_blocks, cparams=_cparams(candidate, threads))
        except Exception as err:  # blosc2 raises plain RuntimeErrors; fall back as nnU-Net does
            logger.warning("blosc2 trial compression failed (%s); storing without a filter", err)
            return blosc2.Filter.NOFILTER
        sizes.append((trial.schunk.cbytes, candidate))
    return blosc2.Filter.SHUFFLE if sizes[1][0] < sizes[0][0] else blosc2.Filter.NOFILTER


def _cparams(filter_, threads: int) -> dict:
    blosc2 = require_blosc2()
    return {"codec": blosc2.Codec.LZ4HC, "clevel": CLEVEL, "filters": [filter_], "nthreads": max(1, int(threads))}


# --- one case on disk ------------------------------------------------------------------------------


def case_paths(folder: str | os.PathLike, identifier: str) -> tuple[Path, Path, Path]:
    """(data .b2nd, segmentation _seg.b2nd, properties .pkl) of a case in nnU-Net's format."""
    folder = Path(folder)
    return folder / f"{identifier}.b2nd", folder / f"{identifier}_seg.b2nd", folder / f"{identifier}.pkl"


def _write_b2nd(array: np.ndarray, path: Path, patch_size: Sequence[int], threads: int) -> None:
    blosc2 = require_blosc2()
    array = np.ascontiguousarray(array)
    blocks, chunks = blosc2_layout(array.shape, patch_size, array.itemsize)
    cparams = _cparams(choose_filter(array, blocks, chunks, threads), threads)
    with atomic_path(path) as tmp:
        stored = blosc2.asarray(array, urlpath=str(tmp), mode="w", chunks=chunks, blocks=blocks, cparams=cparams)
        del stored  # closes the file before it is renamed


def save_case(
    folder: str | os.PathLike,
    identifier: str,
    data: np.ndarray,
    seg: np.ndarray,
    properties: Mapping[str, Any],
    patch_size: Sequence[int],
    threads: int = 1,
) -> None:
    """Writes one preprocessed case in nnU-Net 2.8's format, atomically (the .pkl, written last,
    marks it complete).

    Args:
        folder: the configuration's data folder (`<out>/<data_identifier>`), created if missing.
        identifier: the case.
        data: float32 (C, z, y, x).
        seg: integer (1, z, y, x); stored as int16, as nnU-Net stores it.
        properties: the case's properties (`fastseg.preprocess.preprocess_case`), pickled as they are.
        patch_size: the configuration's patch size (it decides the chunk and block shapes).
        threads: blosc2 compression threads.
    """
    data_path, seg_path, pkl_path = case_paths(folder, identifier)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    if data.dtype != np.float32:
        raise ValueError(f"preprocessed data must be float32, got {data.dtype}")
    if data.ndim != 4 or seg.ndim != 4 or seg.shape[0] != 1 or seg.shape[1:] != data.shape[1:]:
        raise ValueError(f"need data (C, z, y, x) and seg (1, z, y, x) on one grid, got {data.shape} and {seg.shape}")
    pkl_path.unlink(missing_ok=True)  # an old case is incomplete from here on
    _write_b2nd(data, data_path, patch_size, threads)
    _write_b2nd(seg.astype(np.int16, copy=False), seg_path, patch_size, threads)
    with atomic_path(pkl_path) as tmp, open(tmp, "xb") as f:
        pickle.dump(dict(properties), f)


def check_case(folder: str | os.PathLike, identifier: str) -> tuple[bool, str | None]:
    """Whether a case in nnU-Net's format can be used as it is on disk.

    Returns:
        `(complete, damage)`: complete when the .pkl unpickles to a dict and both arrays open as
        float32 (C, z, y, x) and int16 (1, z, y, x) on one grid; `damage` says which file is wrong
        and how, for a case whose .pkl exists (it was finished); None otherwise.
    """
    data_path, seg_path, pkl_path = case_paths(folder, identifier)
    if not pkl_path.is_file():
        return False, None
    try:
        with open(pkl_path, "rb") as f:
            props = pickle.load(f)
    except Exception as err:  # a cut-off pickle raises EOFError, UnpicklingError, ValueError, ...
        return False, f"{pkl_path.name} cannot be unpickled ({type(err).__name__}: {err})"
    if not isinstance(props, dict):
        return False, f"{pkl_path.name} holds a {type(props).__name__}, not the properties"
    blosc2 = require_blosc2()
    shapes = []
    for path, dtype in ((data_path, np.float32), (seg_path, np.int16)):
        if not path.is_file():
            return False, f"{path.name} does not exist"
        try:
            array = blosc2.open(str(path), mode="r")
        except Exception as err:  # blosc2 reports a cut-off frame as a RuntimeError
            return False, f"{path.name} cannot be opened as a blosc2 array ({err})"
        if array.dtype != dtype or array.ndim != 4:
            return False, f"{path.name} holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} (C, z, y, x)"
        shapes.append(tuple(array.shape))
    if shapes[1][0] != 1 or shapes[0][1:] != shapes[1][1:]:
        return False, f"the arrays' shapes {shapes[0]} and {shapes[1]} do not fit each other"
    return True, None


def load_case(folder: str | os.PathLike, identifier: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(data, seg, properties) of a case in nnU-Net's format, read into memory."""
    blosc2 = require_blosc2()
    data_path, seg_path, pkl_path = case_paths(folder, identifier)
    with open(pkl_path, "rb") as f:
        props = pickle.load(f)
    return blosc2.open(str(data_path), mode="r")[:], blosc2.open(str(seg_path), mode="r")[:], props


def case_files(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """The files of nnU-Net-format cases in a data folder, by case identifier."""
    out: dict[str, list[Path]] = {}
    for p in Path(folder).iterdir() if Path(folder).is_dir() else ():
        if p.name.startswith("."):
            continue
        for tail in ("_seg.b2nd", ".b2nd", ".pkl"):
            if p.name.endswith(tail):
                out.setdefault(p.name[: -len(tail)], []).append(p)
                break
    return out


def fastseg_case_file(folder: str | os.PathLike) -> Path | None:
    """A file of fastseg's own format (`<case>.json`, `<case>.npy`) in `folder`, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return next((p for p in sorted(folder.iterdir()) if p.suffix in (".json", ".npy") and not p.name.startswith(".")), None)


def nnunet_case_file(folder: str | os.PathLike) -> Path | None:
    """A file of nnU-Net's format (`<case>.b2nd`, `<case>.pkl`) in `folder`, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return next((p for p in sorted(folder.iterdir()) if p.suffix in (".b2nd", ".pkl") and not p.name.startswith(".")), None)


# --- the worker --------------------------------------------------------------------------------------


def preprocess_files(
    identifier: str,
    images: list[str],
    label: str | None,
    plans: list[CasePlan],
    folders: list[str],
    patch_sizes: list[list[int]],
    threads: int = 1,
) -> list[str]:
    """Reads one case, preprocesses it into every plan and saves each in nnU-Net's format.

    What a worker process runs; the arguments are those of `fastseg.preprocess.worker.preprocess_files`
    plus each plan's patch size and the blosc2 threads. Returns the configuration names written."""
    from fastseg import io as fio
    from fastseg.preprocess.case import preprocess_case_multi

    if not len(plans) == len(folders) == len(patch_sizes):
        raise ValueError(f"need one folder and patch size per plan, got {len(folders)}, {len(patch_sizes)} for {len(plans)}")
    data, props = fio.read_images([Path(p) for p in images])
    seg = fio.read_seg(Path(label))[0] if label is not None else None
    for plan, folder, patch, (_, d, s, p) in zip(plans, folders, patch_sizes, preprocess_case_multi(data, seg, props, plans)):
        save_case(folder, identifier, d, s, p, patch, threads)
    return [plan.configuration for plan in plans]


# --- a whole dataset ---------------------------------------------------------------------------------


def output_digest(plan: CasePlan, patch_size: Sequence[int]) -> str:
    """What makes a data folder's content: the preprocessing (`CasePlan.digest`), the patch size
    (chunking) and this format's version."""
    blob = json.dumps([plan.digest(), [int(p) for p in patch_size], _FORMAT_VERSION])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def _copy_atomic(source: Path, target: Path) -> bool:
    """Copies `source` onto `target` (atomically, keeping the modification time) unless `target` is
    `source` itself or already has its size and modification time; True when it copied."""
    if _same_file(source, target):
        return False
    try:
        s, t = source.stat(), target.stat()
        if s.st_size == t.st_size and s.st_mtime_ns == t.st_mtime_ns:
            return False
    except FileNotFoundError:
        pass
    with atomic_path(target) as tmp:
        shutil.copy2(source, tmp)
    return True


def _patch_size(plans: Mapping[str, Any], name: str, plans_path: Path) -> list[int]:
    cfg = resolve_configuration(plans, name)
    patch = cfg.get("patch_size")
    if not isinstance(patch, list) or len(patch) != len(cfg.get("spacing", [])) or len(patch) not in (2, 3):
        raise NnunetFormatError(
            f"{plans_path}: configuration {name!r} needs a 'patch_size' of 2 or 3 sizes, one per 'spacing' entry, "
            f"to store its cases as nnU-Net does (the chunks follow the patch), got {patch!r}; rerun `fastseg plan`"
        )
    try:
        return [int(p) for p in patch]
    except (TypeError, ValueError):
        raise NnunetFormatError(f"{plans_path}: configuration {name!r} has a 'patch_size' that is not whole numbers: {patch!r}") from None


def preprocess_dataset_nnunet(
    work_dir: str | Path,
    output_dir: str | Path,
    raw_dataset_dir: str | Path | None = None,
    options: PreprocessOptions | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> list[ConfigurationReport]:
    """Preprocesses every training case of the raw dataset into nnU-Net 2.8's preprocessed format.

    Args:
        work_dir: folder with plans.json, dataset.json (and dataset_fingerprint.json, source.json)
            written by `fastseg plan`.
        output_dir: nnU-Net's dataset folder to write, normally `$nnUNet_preprocessed/<dataset_name>`
            (nnUNetv2_train finds it there by the plans' dataset_name); may be `work_dir` itself.
        raw_dataset_dir: the raw dataset; None reads it from `<work_dir>/source.json`.
        options: configurations (default 2d, 3d_fullres, 3d_lowres), workers, memory budget, overwrite.
        env: variables for `$VAR` in the case paths dataset.json may list; None expands nothing.

    Returns:
        One report per configuration (processed and skipped cases, the data folder).

    Raises:
        NnunetFormatError: blosc2 is missing, the plans lack plans_name or a patch size, or a data
            folder holds fastseg's own cases (nnU-Net cannot read a folder mixing both).
        FileNotFoundError, fastseg.plan.workdir.WorkFolderError, FolderInUseError, ValueError,
        fastseg.runtime.workers.CaseError: as `fastseg.preprocess.preprocess_dataset`.
    """
    require_blosc2()
    options = options or PreprocessOptions()
    work_dir, output_dir = Path(work_dir), Path(output_dir)
    if not work_dir.is_dir():
        raise FileNotFoundError(
            f"{work_dir / workdir.PLANS} not found (there is no folder {work_dir}); "
            f"run `fastseg plan RAW_DATASET_DIR -o {work_dir}` first"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(output_dir, "fastseg preprocess --format nnunet"):
        return _preprocess(work_dir, output_dir, raw_dataset_dir, options, env)


def _preprocess(
    work_dir: Path, output_dir: Path, raw_dataset_dir: str | Path | None, options: PreprocessOptions,
    env: Mapping[str, str] | None,
) -> list[ConfigurationReport]:
    from fastseg import io as fio
    from fastseg.io.images import image_voxels

    plans_path, dataset_json_path = work_dir / workdir.PLANS, work_dir / workdir.DATASET_JSON
    plans = workdir.read_plans(plans_path)
    dataset_json = workdir.read_json(dataset_json_path, ("labels",))
    plans_name = plans.get("plans_name")
    if not isinstance(plans_name, str) or not plans_name:
        raise NnunetFormatError(
            f"{plans_path} has no 'plans_name', which names nnU-Net's plans file (<plans_name>.json) and is "
            f"nnUNetv2_train's -p; rerun `fastseg plan` to write complete plans"
        )
    if raw_dataset_dir is None:
        source_path = work_dir / workdir.SOURCE
        raw_dataset_dir = workdir.read_json(source_path, ("raw_dataset_dir",))["raw_dataset_dir"]
        if not isinstance(raw_dataset_dir, str) or not raw_dataset_dir:
            raise workdir.damaged(source_path, f"'raw_dataset_dir' must name the raw dataset folder, got {raw_dataset_dir!r}")
    raw = fio.load_raw_dataset(Path(raw_dataset_dir), env=env)
    name = plans.get("dataset_name")
    if isinstance(name, str) and name and output_dir.resolve().name != name:
        logger.warning(
            "%s is not named after the plans' dataset %s: nnUNetv2_train looks for it as $nnUNet_preprocessed/%s",
            output_dir, name, name,
        )

    with workdir.interpreting(plans_path, "its configurations"):
        names = data_configurations(plans, list(options.configurations) if options.configurations else None)
    case_plans, patches = [], []
    for cfg_name in names:
        with workdir.interpreting(plans_path, f"configuration {cfg_name!r}"):
            case_plans.append(CasePlan.from_plans(plans, cfg_name, dataset_json))
            patches.append(_patch_size(plans, cfg_name, plans_path))

    reports = [ConfigurationReport(cp.configuration, output_dir / cp.data_identifier) for cp in case_plans]
    for report in reports:  # before anything is written
        own = fastseg_case_file(report.folder)
        if own is not None:
            raise NnunetFormatError(
                f"{report.folder} holds fastseg's own preprocessed cases ({own.name}); nnU-Net cannot read a data folder "
                "that mixes both formats. Write nnU-Net's format into another folder (-o), or remove that folder first"
            )

    # The dataset folder: plans under nnU-Net's name, dataset.json, the fingerprint, the labels.
    with atomic_path(output_dir / f"{plans_name}.json") as tmp:
        shutil.copyfile(plans_path, tmp)
    for file in (workdir.DATASET_JSON, workdir.FINGERPRINT):
        if (work_dir / file).is_file():
            _copy_atomic(work_dir / file, output_dir / file)
    order = case_order(dataset_json, list(raw.cases))
    gt = output_dir / GT_FOLDER
    gt.mkdir(exist_ok=True)
    remove_abandoned_temporaries(gt)
    ending = dataset_json.get("file_ending", "")
    for key in order:
        label = raw.cases[key].label
        if label is not None:
            _copy_atomic(Path(label), gt / f"{key}{ending}")

    state_path = output_dir / STATE_FILE
    state = _read_state(state_path)
    for cp, patch, report in zip(case_plans, patches, reports):
        _prepare_folder(report.folder, set(order), state, state_path, output_digest(cp, patch))

    estimates = _estimates(work_dir, order, plans, case_plans)
    channels = len(case_plans[0].normalization_schemes) if case_plans else 1
    workers = options.num_processes or default_num_workers()
    threads = 1 if workers > 1 else max(1, os.cpu_count() or 1)
    jobs = []
    for key in order:
        todo = []
        for cp, patch, report in zip(case_plans, patches, reports):
            complete, damage = (False, None) if options.overwrite else check_case(report.folder, key)
            if complete:
                report.skipped.append(key)
                continue
            if damage is not None:
                logger.warning("%s: case %s was finished but %s; preprocessing it again", report.folder, key, damage)
            todo.append((cp, patch, report))
        if not todo:
            continue
        files = raw.cases[key]
        if key in estimates:
            before, by_name = estimates[key]
            after = [by_name[cp.configuration] for cp, _, _ in todo]
        else:
            before, after = image_voxels(files.images[0]), []
        jobs.append(Job(
            key=key,
            args=(key, [str(p) for p in files.images], str(files.label) if files.label is not None else None,
                  [cp for cp, _, _ in todo], [str(r.folder) for _, _, r in todo], [p for _, p, _ in todo], threads),
            memory_bytes=preprocess_bytes(channels, before, after),
        ))
    by_config = {r.configuration: r for r in reports}
    start = time.perf_counter()
    for key, done in (options.run_cases or run_jobs)(
        "fastseg.preprocess.nnunet_format:preprocess_files", jobs, workers,
        memory_budget=options.memory_budget_bytes, desc="Preprocessing (nnU-Net format)", progress=options.progress,
    ):
        for cfg_name in done:
            by_config[cfg_name].processed.append(key)
    logger.info(
        "preprocessed %d cases in nnU-Net's format into %s in %.1f s (%d already done)",
        len(jobs), ", ".join(str(r.folder) for r in reports), time.perf_counter() - start,
        sum(len(r.skipped) for r in reports),
    )
    return reports


def _prepare_folder(folder: Path, cases: set[str], state: dict, state_path: Path, digest: str) -> None:
    """Readies a data folder for this run: removes temporaries of killed runs and the files of cases
    that are not in the dataset, and, when the folder was made with other plans (or its origin is
    unknown), marks every case unfinished before recording `digest`."""
    folder.mkdir(parents=True, exist_ok=True)
    stale = remove_abandoned_temporaries(folder)
    if stale:
        logger.info("%s: removed %d temporary files of an interrupted run", folder, stale)
    others = [p for key, paths in case_files(folder).items() if key not in cases for p in paths]
    for p in others:
        p.unlink(missing_ok=True)
    if others:
        logger.info("%s: removed %d files of cases that are not in the dataset", folder, len(others))
    if state.get(folder.name) == digest:
        return
    if state.pop(folder.name, None) is not None:
        write_json_atomic(state, state_path)
    for paths in case_files(folder).values():  # made with other plans: none of them counts as finished
        for p in paths:
            if p.suffix == ".pkl":
                p.unlink(missing_ok=True)
    state[folder.name] = digest
    write_json_atomic(state, state_path)
