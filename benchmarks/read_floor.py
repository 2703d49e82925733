"""The read floor of the evaluation benchmark: a worker job that reads one prediction and its
reference (and returns only whether their shapes agree, so that no array travels back)."""

from __future__ import annotations

from pathlib import Path


def read_pair(job: tuple[str, str]) -> bool:
    from fastseg import io as fio

    ref, pred = job
    return fio.read_seg(Path(ref))[0].shape == fio.read_seg(Path(pred))[0].shape
