"""nnU-Net v2's cross-validation splits (`splits_final.json`) and the cases of one fold.

The default split is nnU-Net's (`generate_crossval_split`, which runs scikit-learn's
`KFold(n_splits=5, shuffle=True, random_state=12345)` over the sorted case identifiers), reproduced
here with numpy alone:

    1. order = RandomState(seed).permutation(n)              the shuffled case positions
    2. fold sizes: n // folds each, the first n % folds folds one larger
    3. fold k's validation cases: the k-th consecutive run of `order`, by those sizes
    4. both lists of a fold in sorted order (KFold returns index masks, not the shuffled order)

`splits_final.json` holds a list of {"train": [...], "val": [...]}, one entry per fold. A file that
is already there is used as it is (so custom splits work, as in nnU-Net), after checking that it
names only known cases. Fold "all" trains on every case and validates on the same cases, as nnU-Net
does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastseg.io.atomic import write_json_atomic


class SplitsError(ValueError):
    """A splits file or a fold that cannot be used; the message names the file or the fold."""


def make_splits(case_ids: Sequence[str], seed: int = 12345, folds: int = 5) -> list[dict[str, list[str]]]:
    """nnU-Net's shuffled k-fold split of the cases (the rule in the module docstring).

    Args:
        case_ids: the case identifiers, any order (they are sorted first, as nnU-Net sorts them).
        seed: the shuffle's seed; default 12345 (nnU-Net's).
        folds: the number of folds; default 5.

    Returns:
        One {"train": [...], "val": [...]} per fold, each list sorted; every case is in exactly one
        fold's "val".

    Raises:
        ValueError: fewer than 2 folds, more folds than cases, or a case named twice.
    """
    cases = sorted(str(c) for c in case_ids)
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if len(set(cases)) != len(cases):
        twice = sorted({c for c in cases if cases.count(c) > 1})
        raise ValueError(f"case identifiers must be unique, got {twice} more than once")
    if folds > len(cases):
        raise ValueError(f"cannot split {len(cases)} cases into {folds} folds; a fold needs at least one case")
    order = np.random.RandomState(seed).permutation(len(cases))
    sizes = np.full(folds, len(cases) // folds, dtype=np.int64)
    sizes[: len(cases) % folds] += 1
    splits = []
    start = 0
    for size in sizes:
        is_val = np.zeros(len(cases), dtype=bool)
        is_val[order[start:start + size]] = True
        start += size
        splits.append({
            "train": [cases[i] for i in np.flatnonzero(~is_val)],
            "val": [cases[i] for i in np.flatnonzero(is_val)],
        })
    return splits


def _check_splits(splits: object, known: set[str], path: Path) -> list[dict[str, list[str]]]:
    """The splits read from `path`, checked: a non-empty list of {"train": [...], "val": [...]}
    naming only known cases."""
    if not isinstance(splits, list) or not splits:
        raise SplitsError(f"{path} must hold a non-empty list of {{'train': [...], 'val': [...]}}, found {type(splits).__name__}"
                          f"{' (empty)' if isinstance(splits, list) else ''}; delete it to make nnU-Net's default 5-fold split")
    for k, split in enumerate(splits):
        if not isinstance(split, dict) or not all(isinstance(split.get(key), list) for key in ("train", "val")):
            raise SplitsError(f"{path}: fold {k} must be an object with 'train' and 'val' lists, found {split!r:.200}")
        for key in ("train", "val"):
            unknown = sorted({str(c) for c in split[key]} - known)
            if unknown:
                raise SplitsError(
                    f"{path}: fold {k} {key!r} names {len(unknown)} case(s) the dataset does not have: {unknown[:5]}"
                    f"{' ...' if len(unknown) > 5 else ''} ({len(known)} cases known); fix the file or delete it "
                    "to make nnU-Net's default split"
                )
    return [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]} for s in splits]


def load_or_make_splits(path: str | Path, case_ids: Sequence[str]) -> list[dict[str, list[str]]]:
    """The splits in `path` (`splits_final.json`) when it exists, else nnU-Net's default 5-fold split
    of `case_ids`, written to `path` atomically.

    Args:
        path: the splits file (nnU-Net keeps it in the preprocessed dataset's folder).
        case_ids: the dataset's cases.

    Returns:
        One {"train": [...], "val": [...]} per fold.

    Raises:
        SplitsError: the file is not valid JSON, not a list of train/val entries, or names a case
            that is not in `case_ids`.
        ValueError: no file and fewer than 5 cases to split.
    """
    path = Path(path)
    known = {str(c) for c in case_ids}
    if path.is_file():
        try:
            content = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise SplitsError(f"{path} is not valid JSON ({err}); fix it or delete it to make nnU-Net's default split") from None
        return _check_splits(content, known, path)
    splits = make_splits(case_ids)
    write_json_atomic(splits, path)
    return splits


def fold_cases(
    splits: Sequence[dict[str, Sequence[str]]], fold: int | str, case_ids: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """The training and validation cases of one fold.

    Args:
        splits: the splits (`load_or_make_splits`).
        fold: the fold's number (an int or its digits), or "all": every case trains, and the same
            cases validate (nnU-Net's fold "all").
        case_ids: for fold "all", every case of the dataset (nnU-Net takes all preprocessed cases,
            whatever the splits name); None takes the cases the splits name.

    Returns:
        (train_ids, val_ids).

    Raises:
        SplitsError: a fold that is neither "all" nor a number in 0..len(splits)-1. (nnU-Net makes a
            seeded random 80:20 split for a fold beyond the file's; fastseg asks for a fold that exists.)
    """
    if isinstance(fold, str) and fold == "all":
        if case_ids is None:
            case_ids = {str(c) for split in splits for key in ("train", "val") for c in split[key]}
        cases = sorted(str(c) for c in case_ids)
        return cases, list(cases)
    if isinstance(fold, str) and fold.strip().isdigit():
        fold = int(fold)
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < len(splits):
        raise SplitsError(
            f"fold must be 'all' or a number in 0..{len(splits) - 1} (the splits have {len(splits)} folds), got {fold!r}"
        )
    split = splits[int(fold)]
    return [str(c) for c in split["train"]], [str(c) for c in split["val"]]
