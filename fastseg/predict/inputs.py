"""Which files make which case: nnU-Net's input naming for prediction.

A folder holds `<case>_<XXXX><file ending>` per channel (`case_0000.nii.gz`, `case_0001.nii.gz`,
...). A list of files is grouped the same way; a model with one input channel also takes files
without the `_XXXX` suffix, one case each. Problems (a missing channel, a wrong ending) are
collected per case, so the other cases still run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fastseg.io.formats import SUPPORTED_FILE_ENDINGS, split_ending

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class InputCase:
    """One case to predict: its identifier and channel files in channel order."""

    identifier: str
    images: list[Path]


def find_cases(
    inputs: Sequence[str | Path], num_channels: int, file_ending: str
) -> tuple[list[InputCase], dict[str, str]]:
    """Groups input files into cases.

    Args:
        inputs: one folder, or files.
        num_channels: channels the model takes.
        file_ending: the dataset's file ending (".nii.gz"); in a folder only such files count.

    Returns:
        (complete cases sorted by identifier, {identifier or file: problem} for the rest).

    Raises:
        FileNotFoundError: an input that does not exist.
        ValueError: a folder with no case in it.
    """
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"input {p} not found")
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        files = sorted(
            f for f in folder.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(file_ending.lower())
        )
        if not files:
            raise ValueError(f"{folder} holds no {file_ending} files; expected <case>_0000{file_ending} per case and channel")
    else:
        files = paths
    groups: dict[str, dict[int, Path]] = {}
    problems: dict[str, str] = {}
    for f in files:
        stem, ending = split_ending(f)
        if ending.lower() not in SUPPORTED_FILE_ENDINGS:
            problems[str(f)] = f"unsupported file ending {ending!r}"
            continue
        m = _CHANNEL.match(stem)
        if m is None:
            if num_channels == 1:
                groups.setdefault(stem, {})[0] = f
                continue
            problems[str(f)] = f"the name must end in _XXXX (the channel: _0000 to _{num_channels - 1:04d})"
            continue
        channels = groups.setdefault(m["case"], {})
        channels[int(m["channel"])] = f
    cases = []
    for identifier in sorted(groups):
        channels = groups[identifier]
        missing = [c for c in range(num_channels) if c not in channels]
        extra = sorted(c for c in channels if c >= num_channels)
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing channel file(s) " + ", ".join(f"{identifier}_{c:04d}" for c in missing))
            if extra:
                parts.append("unexpected channel file(s) " + ", ".join(str(channels[c]) for c in extra))
            problems[identifier] = f"the model takes {num_channels} channel(s): " + "; ".join(parts)
            continue
        cases.append(InputCase(identifier, [channels[c] for c in range(num_channels)]))
    return cases, problems
