"""The preprocessed case on disk: `<case>.npy`, `<case>_seg.npy`, `<case>.json`.

- `<case>.npy`: float32 (C, z, y, x), the normalized, resampled image; `np.load(..., mmap_mode="r")`
  maps it without reading it.
- `<case>_seg.npy`: int8 (int16 when a label exceeds 127), -1 outside the nonzero mask.
- `<case>.json`: the properties nnU-Net keeps in its .pkl (spacing and reader geometry,
  shape_before_cropping, bbox_used_for_cropping, shape_after_cropping_and_before_resampling,
  class_locations) plus `preprocessing_hash`, which identifies the plans the case was made with.

Files are never modified in place, so two configurations whose arrays are the same (a 2d and a
3d_fullres configuration at one spacing) share them as hard links.

Writes are atomic (`fastseg.io.atomic`): every file goes to a hidden temporary name in the same
folder and is renamed into place, the JSON last, so an interrupted run leaves no half-written case.
A case is complete when its JSON exists (with the expected hash) and is whole, and both arrays are
intact: their headers parse and each file holds exactly the bytes its header promises (`npy_problem`).
A rerun skips complete cases and redoes damaged ones (a file cut off by a copy, a full disk, ...).

class_locations keys are written as strings: "3" for label 3, "1,2,3" for the region (1, 2, 3),
"1," for a one-label region; each value is the flat list of the sampled voxels' (0, z, y, x)
coordinates, four numbers per voxel (the leading 0 is the channel index, as in nnU-Net's arrays;
flat because that encodes and parses twice as fast). `load_properties` restores int / tuple keys
and (k, 4) int64 arrays, as nnU-Net's .pkl holds them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fastseg.io.atomic import atomic_path, json_default, remove_abandoned_temporaries

HASH_KEY = "preprocessing_hash"
_HEAD = '{"' + HASH_KEY + '": "'


_DIGITS: list[str] = []  # _DIGITS[i] == str(i), grown on demand
_TABLE_LIMIT = 1 << 16  # larger numbers are formatted one by one


def _int_list_json(values: np.ndarray) -> str:
    """`json.dumps(values.tolist())` of a 1-D integer array. Class locations hold ~10^5 small
    non-negative coordinates per case; looking their text up in a table is about 3x faster than
    formatting each int."""
    items = values.tolist()
    if not items:
        return "[]"
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= _TABLE_LIMIT:
        return "[" + ", ".join(map(str, items)) + "]"
    if len(_DIGITS) <= hi:
        _DIGITS.extend(str(i) for i in range(len(_DIGITS), hi + 1))
    return "[" + ", ".join(map(_DIGITS.__getitem__, items)) + "]"


def _properties_json(props: Mapping[str, Any]) -> str:
    """`json.dumps(props, default=json_default)` (indent None, the same bytes), with the class locations
    (a dict of 1-D int64 arrays) written by `_int_list_json`."""
    if not all(isinstance(k, str) for k in props):
        return json.dumps(props, default=json_default)
    parts = []
    for key, value in props.items():
        if key == "class_locations" and all(isinstance(k, str) for k in value):
            text = "{" + ", ".join(f"{json.dumps(k)}: {_int_list_json(v)}" for k, v in value.items()) + "}"
        else:
            text = json.dumps(value, default=json_default)
        parts.append(f"{json.dumps(key)}: {text}")
    return "{" + ", ".join(parts) + "}"


def _save_npy_atomic(array: np.ndarray, path: Path, same_as: Path | None = None) -> None:
    """Writes `array` to `path` atomically; `same_as`, a file that already holds exactly these
    bytes, is hard-linked instead when the file system allows it."""
    with atomic_path(path) as tmp:
        if same_as is not None:
            try:
                os.link(same_as, tmp)
                return
            except OSError:  # no hard links here (another device, a file system without them): write
                pass
        with open(tmp, "xb") as f:
            np.save(f, np.ascontiguousarray(array))


def encode_location_key(key: int | tuple) -> str:
    if isinstance(key, tuple):
        return ",".join(str(int(k)) for k in key) + ("," if len(key) == 1 else "")
    return str(int(key))


def decode_location_key(key: str) -> int | tuple:
    if "," in key:
        return tuple(int(k) for k in key.split(",") if k)
    return int(key)


def case_paths(folder: str | os.PathLike, identifier: str) -> tuple[Path, Path, Path]:
    """(data .npy, segmentation _seg.npy, properties .json) of a case."""
    folder = Path(folder)
    return folder / f"{identifier}.npy", folder / f"{identifier}_seg.npy", folder / f"{identifier}.json"


def save_case(
    folder: str | os.PathLike,
    identifier: str,
    data: np.ndarray,
    seg: np.ndarray,
    properties: Mapping[str, Any],
    preprocessing_hash: str = "",
    same_arrays_in: str | os.PathLike | None = None,
) -> None:
    """Writes one preprocessed case atomically (the JSON, written last, marks it complete).

    `same_arrays_in`: another configuration's folder that already holds this case's two arrays
    with exactly this content (a 2d and a 3d_fullres configuration at the same spacing); its files
    are hard-linked instead of written again (the same bytes on disk once, as long as neither is
    rewritten: a later write replaces a file, it never modifies one in place)."""
    data_path, seg_path, json_path = case_paths(folder, identifier)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    if data.dtype != np.float32:
        raise ValueError(f"preprocessed data must be float32, got {data.dtype}")
    if seg.dtype not in (np.int8, np.int16):
        raise ValueError(f"preprocessed segmentation must be int8 or int16, got {seg.dtype}")
    props = {HASH_KEY: preprocessing_hash}  # first, so `is_complete` reads only the file's head
    props.update((k, v) for k, v in properties.items() if k != HASH_KEY)
    if "class_locations" in props:
        props["class_locations"] = {
            encode_location_key(k): np.asarray(v, dtype=np.int64).ravel() for k, v in props["class_locations"].items()
        }
    text = _properties_json(props)
    json_path.unlink(missing_ok=True)  # an old case is incomplete from here on
    same_data = same_seg = None
    if same_arrays_in is not None:
        same_data, same_seg, _ = case_paths(same_arrays_in, identifier)
    _save_npy_atomic(data, data_path, same_data)
    _save_npy_atomic(seg, seg_path, same_seg)
    with atomic_path(json_path) as tmp:
        tmp.write_text(text)


def npy_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a `.npy` file that should hold a whole array, or None when nothing is: its
    header must parse, declare no Python objects, and the file must hold exactly the header's length
    plus the bytes of the shape and dtype the header declares (a cut-off copy holds fewer).

    Reads the header only (a few hundred bytes), not the data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            data_start, size = f.tell(), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be read ({e})"
    except (ValueError, SyntaxError, TypeError, EOFError) as e:  # what numpy raises for a bad header
        return f"is not a valid .npy file ({e})"
    if dtype.hasobject:
        return "holds Python objects, not an array of numbers"
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        return f"is cut off: its header promises {expected} bytes, the file holds {size}"
    if size > expected:
        return f"holds {size - expected} bytes more than its header promises"
    return None


def _json_is_whole(path: Path) -> bool:
    """True when the JSON text ends as save_case ends it (a closing brace): a cut-off copy does not."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 64))
        return f.read().rstrip().endswith(b"}")


def check_case(
    folder: str | os.PathLike, identifier: str, preprocessing_hash: str | None = None
) -> tuple[bool, str | None]:
    """Whether a preprocessed case can be used as it is on disk.

    Args:
        folder: the configuration's data folder.
        identifier: the case.
        preprocessing_hash: the hash of the plans the case must have been made with; None accepts any.

    Returns:
        `(complete, damage)`. `complete`: the JSON exists with the expected hash and is whole, and
        both arrays are intact (`npy_problem`). `damage`: for a case that was finished (its JSON,
        written last, exists with the expected hash) but is not complete, which file is damaged and
        how; None otherwise (complete, never finished, or made with other plans).
    """
    data_path, seg_path, json_path = case_paths(folder, identifier)
    if not json_path.is_file():
        return False, None
    if preprocessing_hash is not None:
        try:
            with open(json_path) as f:
                head = f.read(len(_HEAD) + len(preprocessing_hash) + 1)
                if head.startswith(_HEAD):  # written by save_case: the hash comes first
                    same = head == f'{_HEAD}{preprocessing_hash}"'
                else:
                    f.seek(0)
                    same = json.load(f).get(HASH_KEY) == preprocessing_hash
        except (OSError, ValueError, AttributeError):
            return False, f"{json_path.name} cannot be read as JSON"
        if not same:
            return False, None
    try:
        if not _json_is_whole(json_path):
            return False, f"{json_path.name} is cut off"
    except OSError as e:
        return False, f"{json_path.name} cannot be read ({e})"
    for path in (data_path, seg_path):
        problem = npy_problem(path)
        if problem is not None:
            return False, f"{path.name} {problem}"
    return True, None


def is_complete(folder: str | os.PathLike, identifier: str, preprocessing_hash: str | None = None) -> bool:
    """True when the case's three files exist, are intact and (if given) its hash matches (`check_case`)."""
    return check_case(folder, identifier, preprocessing_hash)[0]


def load_properties(path: str | os.PathLike) -> dict:
    """A case's properties with class_locations as nnU-Net has them (int / tuple keys, arrays)."""
    with open(path) as f:
        props = json.load(f)
    if "class_locations" in props:
        props["class_locations"] = {
            decode_location_key(k): np.asarray(v, dtype=np.int64).reshape(-1, 4) if len(v) else np.zeros((0, 4), np.int64)
            for k, v in props["class_locations"].items()
        }
    return props


def load_case(folder: str | os.PathLike, identifier: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """(data, seg, properties) of a preprocessed case; the arrays memory-mapped by default."""
    data_path, seg_path, json_path = case_paths(folder, identifier)
    mode = "r" if mmap else None
    return np.load(data_path, mmap_mode=mode), np.load(seg_path, mmap_mode=mode), load_properties(json_path)


def remove_temporaries(folder: str | os.PathLike) -> int:
    """Deletes the temporary files that interrupted or killed runs left behind (never those of a
    process that is still writing them); returns how many."""
    return remove_abandoned_temporaries(folder)


def case_identifiers(folder: str | os.PathLike) -> list[str]:
    """Identifiers of the complete cases in a preprocessed folder, sorted."""
    folder = Path(folder)
    return sorted(p.stem for p in folder.glob("*.json") if is_complete(folder, p.stem))
