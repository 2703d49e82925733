"""Comparing the geometry of images that must share a voxel grid (channels of a case, image and label).

The rules are nnU-Net's (`verify_dataset_integrity`, `SimpleITKIO.read_images`): shapes must be equal
and spacings `np.allclose`; differing SimpleITK origins or directions are only warnings, because
scanners and converters often disagree in the last digits and nnU-Net trains on such data anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class GeometryIssue:
    """One disagreement between two files' grids."""

    severity: Literal["error", "warning"]
    message: str


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def compare_geometry(
    ref_name: str,
    ref_shape: Sequence[int],
    ref_props: dict,
    name: str,
    shape: Sequence[int],
    props: dict,
) -> list[GeometryIssue]:
    """Lists how `name`'s grid differs from `ref_name`'s.

    Args:
        ref_name, name: file names used in the messages.
        ref_shape, shape: spatial shapes (z, y, x), without the channel axis.
        ref_props, props: properties from the readers: 'spacing' (z, y, x) and, for SimpleITK formats,
            'sitk_stuff' with 'origin' and 'direction'.

    Returns:
        Errors for a different shape or spacing, warnings for a different origin or direction; empty
        when the grids agree.
    """
    issues: list[GeometryIssue] = []
    if tuple(ref_shape) != tuple(shape):
        issues.append(
            GeometryIssue("error", f"shape {tuple(shape)} of {name} differs from {tuple(ref_shape)} of {ref_name}")
        )
    s_ref, s = ref_props.get("spacing"), props.get("spacing")
    if s_ref is not None and s is not None and (len(s_ref) != len(s) or not np.allclose(s_ref, s)):
        issues.append(GeometryIssue("error", f"spacing {_fmt(s)} of {name} differs from {_fmt(s_ref)} of {ref_name}"))
    g_ref, g = ref_props.get("sitk_stuff"), props.get("sitk_stuff")
    if g_ref is not None and g is not None:
        for key in ("origin", "direction"):
            a, b = g_ref.get(key), g.get(key)
            if a is None or b is None:
                continue
            if len(a) != len(b) or not np.allclose(a, b):
                issues.append(
                    GeometryIssue(
                        "warning",
                        f"{key} {_fmt(b)} of {name} differs from {_fmt(a)} of {ref_name}; check that they overlap "
                        "(nnU-Net warns about this too and trains anyway)",
                    )
                )
    return issues
