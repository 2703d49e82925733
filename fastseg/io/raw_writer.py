"""Writing a raw dataset in nnU-Net v2 layout, all or nothing.

Converters and the synthetic generator write into a hidden staging folder next to the target, write
dataset.json, verify the result with `verify_dataset`, and only then move the folder into place.
When anything fails (an exception, or a verification error) the staging folder is deleted: the
target is either the complete, verified dataset or untouched.

A writer that is killed (SIGKILL, the out-of-memory killer, a power cut) cannot clean up. Its
folders carry its owner token (`fastseg.runtime.locking.owner_token`) in their names --
`.staging-<owner>-<random>-<target>`, and `.replaced-<owner>-<random>-<target>` for the old dataset
while it is being replaced -- so the next `staged_dataset` for the same target removes the staging
folders of writers that are gone, and puts back an old dataset whose replacement was cut off
between its two renames. Folders of live writers are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from fastseg.io.errors import DatasetError
from fastseg.io.images import write_image, write_seg
from fastseg.io.report import VerificationReport
from fastseg.runtime.locking import OWNER_PATTERN, owner_alive, owner_token

logger = logging.getLogger(__name__)

_LEFTOVER = re.compile(rf"^\.(?P<kind>staging|replaced)-(?P<owner>{OWNER_PATTERN})-[0-9a-f]{{8}}-(?P<target>.+)$")


def case_file_names(identifier: str, num_files: int, file_ending: str) -> tuple[list[str], str]:
    """(`[id_0000<ending>, ...]`, `id<ending>`): the image and label file names of a case."""
    return [f"{identifier}_{c:04d}{file_ending}" for c in range(num_files)], f"{identifier}{file_ending}"


def write_case(
    root: str | os.PathLike,
    identifier: str,
    images: Sequence[np.ndarray],
    seg: np.ndarray | None,
    properties: dict,
    file_ending: str,
    *,
    test: bool = False,
) -> None:
    """Writes one case: `images{Tr,Ts}/<id>_XXXX<ending>` per image and `labels{Tr,Ts}/<id><ending>`.

    Args:
        root: the dataset (or staging) folder; the sub-folders are created.
        identifier: the case name.
        images: one array per file (see `write_image` for the shapes; an RGB natural image is one
            (3, y, x) array).
        seg: the labels, or None (test cases without labels).
        properties: geometry for the writers ('spacing' (z, y, x), optionally 'sitk_stuff').
        file_ending: the dataset's file ending.
        test: write to imagesTs/labelsTs instead of imagesTr/labelsTr.
    """
    root = Path(root)
    split = "Ts" if test else "Tr"
    image_names, label_name = case_file_names(identifier, len(images), file_ending)
    (root / f"images{split}").mkdir(parents=True, exist_ok=True)
    for name, image in zip(image_names, images):
        write_image(image, root / f"images{split}" / name, properties)
    if seg is not None:
        (root / f"labels{split}").mkdir(parents=True, exist_ok=True)
        write_seg(seg, root / f"labels{split}" / label_name, properties)


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder; choose another output path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{target} exists and is not empty; choose another output folder or pass overwrite=True (--overwrite)"
        )


def remove_abandoned_staging(target: str | os.PathLike) -> None:
    """Cleans up after writers of `target` that were killed: removes their staging folders, and
    either removes the old dataset they had moved aside (when the new one is in place) or moves it
    back (when they were killed before the new one was). Folders of live writers stay."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for p in sorted(target.parent.iterdir()):
        m = _LEFTOVER.match(p.name)
        if m is None or m["target"] != target.name or owner_alive(m["owner"]):
            continue
        if m["kind"] == "replaced" and not target.exists():
            os.replace(p, target)
            logger.warning("%s: put back the dataset an interrupted replacement had moved aside (%s)", target, p.name)
        else:
            logger.info("removing %s, left by a writer of %s that was killed", p, target.name)
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def staged_dataset(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty hidden folder next to `target`; moves it onto `target` when the block succeeds.

    Args:
        target: the dataset folder to create.
        overwrite: replace an existing non-empty `target` (default False: refuse).

    Raises:
        FileExistsError: `target` exists, is not empty, and `overwrite` is False (checked before and
            after the block, so nothing is lost when it appears meanwhile).

    Before anything else, what killed writers of `target` left is cleaned up (`remove_abandoned_staging`).
    """
    target = Path(target)
    remove_abandoned_staging(target)
    _check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".staging-{owner_token()}-{secrets.token_hex(4)}-{target.name}")
    staging.mkdir()
    try:
        yield staging
        _check_target(target, overwrite)
        if target.exists():
            trash = target.with_name(f".replaced-{owner_token()}-{secrets.token_hex(4)}-{target.name}")
            os.replace(target, trash)
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def verify_staged(staging: Path, num_processes: int | None, target: Path) -> VerificationReport:
    """Verifies a staged dataset; raises `DatasetError` with the report when it has errors."""
    from fastseg.io.verify import verify_dataset

    report = verify_dataset(staging, num_processes, progress=False)
    if not report.ok:
        text = report.format().replace(str(staging), str(target))
        raise DatasetError(f"the converted dataset failed verification, nothing was written:\n{text}")
    report.root = target
    return report
