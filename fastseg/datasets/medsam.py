"""MedSAM-style `.npz` files -> an nnU-Net v2 raw dataset.

The MedSAM / "MedSAM on laptop" preprocessed data stores one case per `.npz`:

- `imgs`: 3D (D, H, W) for CT/MR/PET, or 2D (H, W, 3) RGB / (H, W) grayscale, intensities 0..255;
- `gts`: labels of the same spatial shape ((D, H, W) or (H, W));
- `spacing`: 3D only, as SimpleITK's `GetSpacing()` reports it, i.e. (x, y, z) (MedSAM's
  preprocessing scripts save `spacing=img_sitk.GetSpacing()`); `spacing_order="zyx"` reads it the
  other way round.

Label values in such files are the source dataset's ids and are often not consecutive (1, 2, 5,
13); nnU-Net needs 0, 1, 2, ... so the union of all files' values is mapped, in sorted order, to
consecutive values and each is named after its source id (`label_5`). 3D cases become `.nii.gz`
(spacing kept, origin 0, identity direction), 2D cases `.png` (an RGB case is one 3-channel file,
as in nnU-Net's natural-image datasets). All files must be of one kind (3D, 2D RGB or 2D gray).
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastseg.io.dataset_json import make_dataset_json, write_dataset_json
from fastseg.io.errors import DatasetError
from fastseg.runtime.workers import parallel_map
from fastseg.io.raw_writer import staged_dataset, verify_staged, write_case
from fastseg.io.report import VerificationReport

logger = logging.getLogger(__name__)

KINDS = ("3d", "2d-rgb", "2d-gray")
SPACING_ORDERS = ("xyz", "zyx")


@dataclass(frozen=True)
class _NpzInfo:
    path: str
    kind: str | None
    spatial: tuple[int, ...]
    values: tuple[int, ...]
    spacing: tuple[float, ...] | None
    problem: str | None = None


def find_npz_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The `.npz` files named by `inputs`: files as given, folders searched recursively (sorted).

    Raises:
        FileNotFoundError: an input that does not exist, or no `.npz` file at all.
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(p.rglob("*.npz")))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist; pass .npz files or folders holding them")
    if not files:
        raise FileNotFoundError(f"no .npz files found in {[str(i) for i in inputs]}")
    return files


def _member_header(zf: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an array in an npz without decompressing its data."""
    with zf.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(shape), np.dtype(dtype)


def _kind(img_shape: tuple[int, ...], gts_shape: tuple[int, ...]) -> tuple[str | None, str | None]:
    if len(img_shape) == 3 and len(gts_shape) == 2 and img_shape[-1] == 3:
        return "2d-rgb", None if img_shape[
            :2
        ] == gts_shape else f"imgs {img_shape} and gts {gts_shape} differ in (H, W)"
    if len(img_shape) == 2 and len(gts_shape) == 2:
        return "2d-gray", None if img_shape == gts_shape else f"imgs {img_shape} and gts {gts_shape} differ"
    if len(img_shape) == 3 and len(gts_shape) == 3:
        return "3d", None if img_shape == gts_shape else f"imgs {img_shape} and gts {gts_shape} differ"
    return (
        None,
        f"imgs {img_shape} / gts {gts_shape}: expected (D, H, W) / (D, H, W), (H, W, 3) / (H, W) or (H, W) / (H, W)",
    )


def _inspect(path: str) -> _NpzInfo:
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")}
            missing = [k for k in ("imgs", "gts") if k not in names]
            if missing:
                return _NpzInfo(path, None, (), (), None, f"has no array {missing} (arrays: {sorted(names)})")
            img_shape, _ = _member_header(zf, "imgs")
            gts_shape, gts_dtype = _member_header(zf, "gts")
        kind, problem = _kind(img_shape, gts_shape)
        if problem:
            return _NpzInfo(path, kind, (), (), None, problem)
        with np.load(path) as z:
            gts = z["gts"]
            spacing = tuple(float(s) for s in np.ravel(z["spacing"])) if "spacing" in z.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        return _NpzInfo(path, None, (), (), None, f"cannot be read as .npz ({type(e).__name__}: {e})")
    if gts_dtype.kind == "f" and (not np.isfinite(gts).all() or (gts != np.round(gts)).any()):
        return _NpzInfo(path, kind, (), (), None, "gts holds non-integer values; labels must be whole numbers")
    if gts_dtype.kind not in "iubf":
        return _NpzInfo(path, kind, (), (), None, f"gts has dtype {gts_dtype}; expected integer labels")
    values = np.unique(gts)
    if values.size and values[0] < 0:
        return _NpzInfo(path, kind, (), (), None, f"gts holds negative label {values[0]}")
    if kind == "3d" and spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
        return _NpzInfo(path, kind, (), (), None, f"spacing must be 3 positive numbers, got {spacing}")
    spatial = img_shape if kind == "3d" else img_shape[:2]
    return _NpzInfo(path, kind, spatial, tuple(int(v) for v in values), spacing)


def _identifiers(paths: Sequence[Path]) -> list[str]:
    out, seen = [], {}
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", p.stem) or "case"
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}_dup{n}")
    return out


@dataclass(frozen=True)
class _CaseJob:
    root: str
    path: str
    identifier: str
    kind: str
    lut_values: tuple[int, ...]
    spacing_order: str
    file_ending: str


def _write_one(job: _CaseJob) -> bool:
    """Writes one case; returns whether a 3D case had no spacing (then 1, 1, 1 is used)."""
    with np.load(job.path) as z:
        imgs, gts = z["imgs"], z["gts"]
        spacing = tuple(float(s) for s in np.ravel(z["spacing"])) if "spacing" in z.files else None
    values = np.asarray(job.lut_values)
    seg = np.searchsorted(values, gts.astype(np.int64)).astype(np.uint16)  # value -> consecutive index
    if job.kind == "3d":
        zyx = (
            [1.0, 1.0, 1.0]
            if spacing is None
            else (list(spacing[::-1]) if job.spacing_order == "xyz" else list(spacing))
        )
        image, props = imgs, {"spacing": zyx}
    elif job.kind == "2d-rgb":
        image, props = np.moveaxis(imgs, -1, 0), {"spacing": [999.0, 1.0, 1.0]}
    else:
        image, props = imgs, {"spacing": [999.0, 1.0, 1.0]}
    write_case(job.root, job.identifier, [image], seg, props, job.file_ending)
    return job.kind == "3d" and spacing is None


def convert_medsam(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    channel_name: str | None = None,
    spacing_order: str = "xyz",
    file_ending: str | None = None,
    num_processes: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> VerificationReport:
    """Converts MedSAM-style `.npz` cases into an nnU-Net v2 raw dataset, verified before it appears.

    Args:
        inputs: `.npz` files and/or folders (searched recursively).
        out_dir: the dataset folder to create.
        name: dataset.json's `name` (default: the folder name).
        channel_name: name of the single channel of 3D and grayscale cases (default "image"; "CT"
            would select CT normalization, which suits raw HU but not MedSAM's 0..255 images).
            RGB cases are always "R", "G", "B".
        spacing_order: how `spacing` in the files is ordered: "xyz" (default, MedSAM's) or "zyx".
        file_ending: default ".nii.gz" for 3D, ".png" for 2D.
        num_processes: worker processes; None (default) uses every CPU.
        overwrite: replace an existing non-empty `out_dir` (default False: refuse).
        progress: progress bar; None (default) only on a terminal.

    Returns:
        The verification report of the written dataset.

    Raises:
        FileNotFoundError: no inputs found. FileExistsError: `out_dir` not empty.
        DatasetError: inputs that cannot be converted (every bad file listed), or an output that
            fails verification; nothing is written then.
    """
    if spacing_order not in SPACING_ORDERS:
        raise ValueError(f"spacing_order must be one of {SPACING_ORDERS}, got {spacing_order!r}")
    num_processes = num_processes or os.cpu_count() or 1
    files = find_npz_files(inputs)
    infos = parallel_map(_inspect, [str(f) for f in files], num_processes, desc="reading npz", progress=progress)
    problems = [f"{i.path}: {i.problem}" for i in infos if i.problem]
    kinds = sorted({i.kind for i in infos if i.kind and not i.problem})
    if len(kinds) > 1:
        examples = {k: next(i.path for i in infos if i.kind == k) for k in kinds}
        problems.append(f"the files mix kinds {kinds} (e.g. {examples}); convert each kind into its own dataset")
    if problems:
        raise DatasetError(
            "cannot convert these MedSAM files, nothing was written:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    kind = kinds[0]
    ending = file_ending or (".nii.gz" if kind == "3d" else ".png")
    values = sorted({0}.union(*[i.values for i in infos]))
    labels = {"background": 0, **{f"label_{v}": k for k, v in enumerate(values) if v != 0}}
    if kind == "2d-rgb":
        channels = {"0": "R", "1": "G", "2": "B"}
    else:
        channels = {"0": channel_name or "image"}
    out_dir = Path(out_dir)
    with staged_dataset(out_dir, overwrite=overwrite) as staging:
        jobs = [
            _CaseJob(str(staging), str(f), ident, kind, tuple(values), spacing_order, ending)
            for f, ident in zip(files, _identifiers(files))
        ]
        no_spacing = parallel_map(_write_one, jobs, num_processes, desc="writing cases", progress=progress)
        if any(no_spacing):
            logger.warning("%d 3D file(s) have no 'spacing'; wrote spacing (1, 1, 1) for them", sum(no_spacing))
        content = make_dataset_json(
            channel_names=channels,
            labels=labels,
            num_training=len(jobs),
            file_ending=ending,
            name=name or out_dir.name,
            description=f"Converted by fastseg from {len(jobs)} MedSAM-style .npz files ({kind}); label_<id> keeps the source label id",
        )
        write_dataset_json(staging, content)
        report = verify_staged(staging, num_processes, out_dir)
    return report
