"""nnU-Net's training patch sampling: which cases make a batch, where each patch lies, and the crop,
read from the memory-mapped preprocessed arrays.

The rules (nnunetv2's `nnUNetDataLoader` and the trainer's
`configure_rotation_dummyDA_mirroring_and_inital_patch_size`), in our words:

- **Patch sizes.** The network sees `final_patch_size` (the plans' patch size). The loader reads a
  larger `patch_size` (`augmentation_setup(...).initial_patch_size`) so that rotating and scaling it
  still fills the final patch. The difference `need = patch_size - final_patch_size` is the border by
  which a patch may stick out of the image, so that the final patch (its centre) still reaches every
  image border.
- **Allowed starts.** Per axis, when `shape + need < patch_size` the border grows to
  `need = patch_size - shape`. The first voxel of a patch may then lie in `[lower, upper]` with
  `lower = -ceil(need / 2)` and `upper = shape + ceil(need / 2) - patch_size` (nnU-Net writes the
  lower bound `-need // 2`, which Python floors, hence the ceil).
- **Cases** are drawn uniformly with replacement. Sample `i` of a batch is forced to contain
  foreground when `not i < round(batch_size * (1 - oversample_foreground_percent))`: the last third
  of a batch with nnU-Net's 0.33.
- **Forced samples** pick one class (a label or a region: a `class_locations` key) uniformly among
  those with stored locations, then one of its locations uniformly, and start the patch at
  `max(lower, location - patch_size // 2)`: the location at the patch's centre, moved inwards at
  the low border only (as in nnU-Net; a patch may end beyond `upper`, it is padded). With an ignore
  label, preprocessing also stores the annotated voxels under the key `(-1, *all labels)`; that key
  is not a class and is dropped from the choice, unless it is the only one with locations. A case
  without foreground falls back to a random start.
- **Unforced samples** start uniformly in `[lower, upper]`; with an ignore label they are centred on
  an annotated voxel instead (a random start, with a warning, when the case has none).
- **Crop.** Only the part of the patch inside the image is read from the memory maps; the rest is
  padded: the image with 0, the segmentation with -1.
- **2D configurations** read 3D cases with a `(1, y, x)` patch: the forced location's slice (or a
  uniform random slice), only that slice is read, and the batch drops the singleton axis.

Differences from nnU-Net: the random numbers come from a seeded `numpy.random.Generator` (the same
seed gives the same batches), not from numpy's global state, so the draws differ from nnU-Net's
while following the same distributions; `probabilistic_oversampling`, `sampling_probabilities`,
`pad_sides` and the cascade's previous-stage segmentations are not supported.

Axes: data `(C, z, y, x)`, segmentation `(1, z, y, x)`; a batch `(B, C, *patch)` / `(B, 1, *patch)`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastseg.preprocess.storage import case_paths, load_properties, npy_problem

logger = logging.getLogger(__name__)

#: nnunetv2.configuration.ANISO_THRESHOLD: a 3D patch whose largest side exceeds this many times its
#: first side is augmented slice by slice (dummy 2D).
ANISO_THRESHOLD = 3
#: The scale range nnU-Net's initial patch size is computed with (the trainer's augmentation itself
#: scales in (0.7, 1.4); nnU-Net keeps the old value here).
INITIAL_PATCH_SCALE_RANGE = (0.85, 1.25)
#: Cases whose memory maps one sampler keeps open (each map holds a file descriptor).
DEFAULT_MAX_OPEN_CASES = 64


# --- the augmentation's patch geometry ---------------------------------------------------------------


@dataclass(frozen=True)
class AugmentationSetup:
    """The spatial augmentation parameters nnU-Net derives from a configuration's patch size.

    Attributes:
        rotation: (lowest, highest) rotation angle in radians, the same range for every axis.
        dummy_2d: True for a strongly anisotropic 3D patch, augmented slice by slice along axis 0.
        initial_patch_size: the patch the loader reads, large enough to fill the final patch after
            rotation and scaling.
        mirror_axes: the axes the training mirrors along (and inference may mirror along).
    """

    rotation: tuple[float, float]
    dummy_2d: bool
    initial_patch_size: tuple[int, ...]
    mirror_axes: tuple[int, ...]


def _radians(degrees: float) -> float:
    """`degrees` in radians, computed in nnU-Net's operation order (the same float)."""
    return degrees / 360 * 2.0 * np.pi


def _axis_rotation(angle: float, axis: int, dim: int) -> np.ndarray:
    """The right-handed rotation matrix by `angle` about `axis` (3D) or in the plane (2D)."""
    c, s = np.cos(angle), np.sin(angle)
    if dim == 2:
        return np.array([[c, -s], [s, c]])
    if axis == 0:
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    if axis == 1:
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def initial_patch_size(
    final_patch_size: Sequence[int],
    rotation: tuple[float, float],
    scale_range: tuple[float, float] = INITIAL_PATCH_SCALE_RANGE,
) -> tuple[int, ...]:
    """The patch to read so that rotating and shrinking it still fills `final_patch_size`
    (batchgenerators' `get_patch_size` rule, as nnU-Net uses it).

    The patch's far corner, seen as a vector, is rotated by the largest rotation angle (at most 90
    degrees) about each axis in turn (the plane for 2D); each side is the largest absolute coordinate
    over the unrotated and rotated corners, divided by the smallest scale and truncated.

    Args:
        final_patch_size: the network's patch, 2 or 3 sides.
        rotation: (lowest, highest) rotation angle in radians, the same for every axis.
        scale_range: (smallest, largest) scale factor; default nnU-Net's (0.85, 1.25).

    Returns:
        The initial patch size, one int per side.
    """
    dim = len(final_patch_size)
    if dim not in (2, 3):
        raise ValueError(f"final_patch_size must have 2 or 3 sides, got {tuple(final_patch_size)}")
    angle = min(_radians(90), max(abs(rotation[0]), abs(rotation[1])))
    corner = np.array(final_patch_size, dtype=float)
    extent = corner.copy()
    for axis in range(dim if dim == 3 else 1):
        rotated = np.dot(corner[None, :], _axis_rotation(angle, axis, dim))[0]
        extent = np.maximum(extent, np.abs(rotated))
    extent /= min(scale_range)
    return tuple(int(v) for v in extent.astype(int))


def augmentation_setup(patch_size: Sequence[int]) -> AugmentationSetup:
    """nnU-Net's rotation range, dummy-2D decision, initial patch size and mirror axes for a patch.

    2D: rotation +-15 degrees when the patch's sides differ by more than 1.5x, else +-180; mirror axes
    (0, 1). 3D: dummy 2D when `max(patch_size) / patch_size[0] > ANISO_THRESHOLD` (3), then rotation
    +-180 degrees (in plane), else +-30; mirror axes (0, 1, 2). The initial patch is
    `initial_patch_size(patch_size, rotation)`, keeping side 0 of the patch for dummy 2D.

    Args:
        patch_size: the configuration's patch size (plans' `patch_size`), 2 or 3 sides.

    Returns:
        The `AugmentationSetup`.
    """
    patch = tuple(int(p) for p in patch_size)
    if len(patch) not in (2, 3) or min(patch) < 1:
        raise ValueError(f"patch_size must be 2 or 3 positive sides, got {tuple(patch_size)}")
    if len(patch) == 2:
        dummy_2d = False
        degrees = 15.0 if max(patch) / min(patch) > 1.5 else 180.0
        mirror_axes: tuple[int, ...] = (0, 1)
    else:
        dummy_2d = max(patch) / patch[0] > ANISO_THRESHOLD
        degrees = 180.0 if dummy_2d else 30.0
        mirror_axes = (0, 1, 2)
    rotation = (_radians(-degrees), _radians(degrees))
    initial = initial_patch_size(patch, rotation)
    if dummy_2d:
        initial = (patch[0], *initial[1:])
    return AugmentationSetup(rotation=rotation, dummy_2d=dummy_2d, initial_patch_size=initial, mirror_axes=mirror_axes)


# --- where a patch lies ----------------------------------------------------------------------------------


def forced_foreground(batch_size: int, oversample_foreground_percent: float) -> list[bool]:
    """Which samples of a batch must contain foreground: nnU-Net's last-percent rule,
    `not i < round(batch_size * (1 - oversample_foreground_percent))` (Python's round)."""
    first_forced = round(batch_size * (1 - oversample_foreground_percent))
    return [not i < first_forced for i in range(batch_size)]


def start_range(
    shape: Sequence[int], patch_size: Sequence[int], final_patch_size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest first voxel of a patch in an image (nnU-Net's `lbs` and `ubs`).

    Args:
        shape: the image's spatial shape.
        patch_size: the patch read (the initial patch size).
        final_patch_size: the network's patch; `patch_size - final_patch_size` is the border a patch
            may stick out of the image, grown to `patch_size - shape` where the image is smaller.

    Returns:
        `(lower, upper)`, int64 arrays; every start in `[lower, upper]` (inclusive) is allowed.
    """
    shape = np.asarray(shape, dtype=np.int64)
    patch = np.asarray(patch_size, dtype=np.int64)
    need = np.maximum(patch - np.asarray(final_patch_size, dtype=np.int64), patch - shape)
    half_up = -((-need) // 2)  # ceil(need / 2)
    return -half_up, shape + half_up - patch


def centred_start(location: Sequence[int], lower: np.ndarray, patch_size: Sequence[int]) -> np.ndarray:
    """The first voxel of a patch centred on `location` (spatial coordinates), not below `lower`."""
    patch = np.asarray(patch_size, dtype=np.int64)
    return np.maximum(lower, np.asarray(location, dtype=np.int64) - patch // 2)


def is_annotated_key(key: int | tuple) -> bool:
    """True for the class_locations key of the annotated voxels, `(-1, *all labels)`, that
    preprocessing adds with an ignore label."""
    return isinstance(key, tuple) and len(key) > 0 and key[0] == -1


def eligible_classes(class_locations: dict) -> list:
    """The classes a forced sample chooses among (nnU-Net's rule): the class_locations keys with
    locations, in their order, without the annotated-voxels key unless it is the only one."""
    eligible = [key for key, locations in class_locations.items() if len(locations) > 0]
    annotated = [key for key in eligible if is_annotated_key(key)]
    if annotated and len(eligible) > 1:
        eligible.remove(annotated[0])
    return eligible


# --- the sampler -----------------------------------------------------------------------------------------


@dataclass
class SampledBatch:
    """One batch of patches.

    Attributes:
        data: float32 (B, C, *patch) image patches, 0 outside the image.
        seg: int16 (B, 1, *patch) segmentation patches, -1 outside the image.
        keys: the case of each sample.
        forced: whether each sample was forced to contain foreground.
        starts: int64 (B, 3), each patch's first voxel in its case, (z, y, x) (for 2D, z is the slice).
        classes: the class (label or region key) each patch was centred on, None for a random start.
    """

    data: np.ndarray
    seg: np.ndarray
    keys: list[str]
    forced: list[bool]
    starts: np.ndarray
    classes: list


@dataclass
class _OpenCase:
    data: np.ndarray  # (C, z, y, x) memory map
    seg: np.ndarray  # (1, z, y, x) memory map
    locations: dict | None = None  # class -> (k, 3) spatial coordinates, loaded when first needed


def _preprocess_hint(folder: Path) -> str:
    """What to run to make the cases of `folder`: `fastseg preprocess WORK -c CONFIG`, naming the
    configurations of `<folder>/../plans.json` that write this folder when it can tell."""
    work = folder.parent
    configurations = "CONFIG"
    try:
        plans = json.loads((work / "plans.json").read_text())
        names = [
            name
            for name, cfg in plans.get("configurations", {}).items()
            if isinstance(cfg, dict) and cfg.get("data_identifier") == folder.name
        ]
        if names:
            configurations = " ".join(names)
    except (OSError, ValueError, AttributeError):
        pass
    return f"run `fastseg preprocess {work} -c {configurations}` first"


class PatchSampler:
    """Training batches of patches from a folder of preprocessed cases, by nnU-Net's rules (see the
    module docstring).

    The memory maps of the most recently used cases stay open (`max_open_cases`); pickling the
    sampler (to send it to a worker process) drops them, and each worker opens its own. Give each
    worker its own generator (`sample_batch(rng)`) or seed, or they draw the same batches.

    Args:
        folder: the configuration's folder, `<work>/<data_identifier>`.
        identifiers: the cases to sample from (e.g. a fold's training cases); each must be
            preprocessed in `folder`.
        patch_size: the patch read, (z, y, x), or (y, x) with `two_d` (the initial patch size of
            `augmentation_setup`).
        batch_size: samples per batch.
        final_patch_size: the network's patch (the plans' patch_size), which sets how far a patch may
            stick out of the image; default `patch_size` (nnU-Net's validation loader).
        oversample_foreground_percent: the fraction of a batch forced to contain foreground, in
            [0, 1]; default nnU-Net's 0.33.
        seed: seed of the sampler's generator (used when `sample_batch` gets none); None draws one
            from the operating system.
        two_d: a 2D configuration: each sample is one slice along the first axis of the 3D case,
            and the batch is (B, C, y, x).
        max_open_cases: how many cases' memory maps to keep open; default 64.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        identifiers: Sequence[str],
        patch_size: Sequence[int],
        batch_size: int,
        *,
        final_patch_size: Sequence[int] | None = None,
        oversample_foreground_percent: float = 0.33,
        seed: int | None = None,
        two_d: bool = False,
        max_open_cases: int = DEFAULT_MAX_OPEN_CASES,
    ) -> None:
        self.folder = Path(folder)
        self.identifiers = list(identifiers)
        sides = 2 if two_d else 3
        if len(patch_size) != sides or min(int(p) for p in patch_size) < 1:
            raise ValueError(f"patch_size must be {sides} positive sides (two_d={two_d}), got {tuple(patch_size)}")
        final = patch_size if final_patch_size is None else final_patch_size
        if len(final) != sides or min(int(p) for p in final) < 1:
            raise ValueError(f"final_patch_size must be {sides} positive sides (two_d={two_d}), got {tuple(final)}")
        if any(int(f) > int(p) for f, p in zip(final, patch_size)):
            raise ValueError(
                f"final_patch_size must not exceed patch_size on any side, got final {tuple(final)} "
                f"and patch {tuple(patch_size)}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= oversample_foreground_percent <= 1.0:
            raise ValueError(f"oversample_foreground_percent must be in [0, 1], got {oversample_foreground_percent}")
        if max_open_cases < 1:
            raise ValueError(f"max_open_cases must be at least 1, got {max_open_cases}")
        self.two_d = two_d
        lead = (1,) if two_d else ()  # 2D: a (1, y, x) patch on the 3D case
        self.patch_size = (*lead, *(int(p) for p in patch_size))
        self.final_patch_size = (*lead, *(int(p) for p in final))
        self.batch_size = int(batch_size)
        self.oversample_foreground_percent = float(oversample_foreground_percent)
        self.forced = forced_foreground(self.batch_size, self.oversample_foreground_percent)
        self.rng = np.random.default_rng(seed)
        self.max_open_cases = int(max_open_cases)
        self._open: OrderedDict[str, _OpenCase] = OrderedDict()
        self._has_ignore: bool | None = None  # known once a case's class locations are read
        self._warned: set[str] = set()  # cases without annotated voxels, warned about once
        self._pool = None  # threads of sample_transformed_batch (not pickled)
        self._pool_size = 0
        self._check_cases()

    def _check_cases(self) -> None:
        """Every case has its properties file (the arrays are checked when a case is opened)."""
        if not self.folder.is_dir() or not any(self.folder.glob("*.json")):
            raise FileNotFoundError(f"no preprocessed cases in {self.folder}; {_preprocess_hint(self.folder)}")
        if not self.identifiers:
            raise ValueError(f"identifiers must name at least one case of {self.folder}, got none")
        missing = [i for i in self.identifiers if not case_paths(self.folder, i)[2].is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.identifiers)} cases are not preprocessed in {self.folder}: "
                f"{shown}; {_preprocess_hint(self.folder)}"
            )

    def close(self) -> None:
        """Stops the threads of `sample_transformed_batch` (idempotent; a later call starts new ones)."""
        pool, self._pool, self._pool_size = self._pool, None, 0
        if pool is not None:
            pool.shutdown(wait=True)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # memory maps stay in the process that opened them
        state["_pool"], state["_pool_size"] = None, 0
        return state

    # --- cases -----------------------------------------------------------------------------------------

    def _case(self, identifier: str) -> _OpenCase:
        """The case's memory maps, opened (and checked) on first use, least recently used closed."""
        case = self._open.get(identifier)
        if case is not None:
            self._open.move_to_end(identifier)
            return case
        data_path, seg_path, _ = case_paths(self.folder, identifier)
        for path in (data_path, seg_path):
            problem = npy_problem(path)
            if problem is not None:
                raise ValueError(
                    f"case {identifier!r}: {path.name} {problem} (in {self.folder}); "
                    f"{_preprocess_hint(self.folder)} --overwrite, or remove the case"
                )
        data = np.load(data_path, mmap_mode="r")
        seg = np.load(seg_path, mmap_mode="r")
        if len(data.shape) != 4 or tuple(seg.shape) != (1, *data.shape[1:]):
            raise ValueError(
                f"case {identifier!r}: expected data (C, z, y, x) and seg (1, z, y, x), got {data_path.name} "
                f"{tuple(data.shape)} and {seg_path.name} {tuple(seg.shape)}"
            )
        case = _OpenCase(data, seg)
        self._open[identifier] = case
        while len(self._open) > self.max_open_cases:
            self._open.popitem(last=False)
        return case

    def _locations(self, identifier: str, case: _OpenCase) -> dict:
        """The case's class locations as (k, 3) spatial coordinates (the channel column dropped)."""
        if case.locations is None:
            json_path = case_paths(self.folder, identifier)[2]
            try:
                props = load_properties(json_path)
            except (OSError, ValueError) as e:
                raise ValueError(f"case {identifier!r}: {json_path.name} cannot be read ({e})") from e
            if "class_locations" not in props:
                raise ValueError(
                    f"case {identifier!r}: {json_path.name} has no class_locations (a case preprocessed "
                    f"without its segmentation cannot be trained on)"
                )
            locations = {}
            for key, rows in props["class_locations"].items():
                spatial = rows[:, 1:]
                small = spatial.size == 0 or int(spatial.max()) < np.iinfo(np.uint16).max
                locations[key] = np.ascontiguousarray(spatial, dtype=np.uint16 if small else np.int64)
            case.locations = locations
            if self._has_ignore is None:
                self._has_ignore = any(is_annotated_key(k) for k in locations)
        return case.locations

    # --- batches ---------------------------------------------------------------------------------------

    def _start(
        self, identifier: str, case: _OpenCase, force_fg: bool, rng: np.random.Generator
    ) -> tuple[np.ndarray, int | tuple | None]:
        """The patch's first voxel and the class it is centred on (None: a uniform random start)."""
        shape = case.data.shape[1:]
        lower, upper = start_range(shape, self.patch_size, self.final_patch_size)
        needs_locations = force_fg or self._has_ignore is not False  # unknown until a case is read
        locations = self._locations(identifier, case) if needs_locations else {}
        selected = None
        if force_fg:
            eligible = eligible_classes(locations)
            if eligible:
                selected = eligible[int(rng.integers(len(eligible)))]
        elif self._has_ignore:
            selected = next((k for k in locations if is_annotated_key(k)), None)
            if selected is not None and len(locations[selected]) == 0:
                if identifier not in self._warned:
                    self._warned.add(identifier)
                    logger.warning("case %r has no annotated voxels (all ignore label); sampling random patches", identifier)
                selected = None
        if selected is None:
            return rng.integers(lower, upper + 1), None
        rows = locations[selected]
        location = rows[int(rng.integers(len(rows)))]
        return centred_start(location, lower, self.patch_size), selected

    def _crop_into(self, case: _OpenCase, start: np.ndarray, data_out: np.ndarray, seg_out: np.ndarray) -> None:
        """Copies the part of the patch at `start` that lies inside the case into the (pre-padded)
        outputs, reading only that part of the memory maps."""
        shape = case.data.shape[1:]
        source, target = [slice(None)], [slice(None)]
        for lo, size, extent in zip(start.tolist(), self.patch_size, shape):
            first, last = max(lo, 0), min(lo + size, extent)
            if first >= last:
                return  # the patch misses the image on this axis: all padding
            source.append(slice(first, last))
            target.append(slice(first - lo, last - lo))
        data_out[tuple(target)] = case.data[tuple(source)]
        seg_out[tuple(target)] = case.seg[tuple(source)]

    def _draw(self, rng: np.random.Generator) -> tuple[list[str], list[_OpenCase], int]:
        """The batch's cases (uniformly, with replacement) and their common channel count."""
        keys = [self.identifiers[i] for i in rng.integers(len(self.identifiers), size=self.batch_size)]
        cases = [self._case(k) for k in keys]
        channels = cases[0].data.shape[0]
        for key, case in zip(keys, cases):
            if case.data.shape[0] != channels:
                raise ValueError(
                    f"cases of one batch must have the same channels: {keys[0]!r} has {channels}, "
                    f"{key!r} has {case.data.shape[0]}"
                )
        return keys, cases, channels

    def sample_batch(self, rng: np.random.Generator | None = None) -> SampledBatch:
        """Draws one batch: cases uniformly with replacement, the last samples forced to foreground.

        Args:
            rng: the generator to draw with; default the sampler's own (seeded by `seed`).

        Returns:
            The `SampledBatch`: data (B, C, *patch) float32, seg (B, 1, *patch) int16; (B, C, y, x)
            and (B, 1, y, x) for `two_d`.
        """
        rng = self.rng if rng is None else rng
        keys, cases, channels = self._draw(rng)
        data = np.zeros((self.batch_size, channels, *self.patch_size), dtype=np.float32)
        seg = np.full((self.batch_size, 1, *self.patch_size), -1, dtype=np.int16)
        starts = np.empty((self.batch_size, 3), dtype=np.int64)
        classes = []
        for b, (key, case) in enumerate(zip(keys, cases)):
            start, selected = self._start(key, case, self.forced[b], rng)
            self._crop_into(case, start, data[b], seg[b])
            starts[b] = start
            classes.append(selected)
        if self.two_d:
            data, seg = data[:, :, 0], seg[:, :, 0]
        return SampledBatch(data=data, seg=seg, keys=keys, forced=list(self.forced), starts=starts, classes=classes)

    def sample_transformed_batch(self, spec, rng: np.random.Generator | None = None, *, workers: int = 1) -> SampledBatch:
        """Draws one batch as `sample_batch` does and returns its final patches: each sample's spatial
        transform and noise (`fastseg.data.spatial`) applied while reading, from the memory maps, and with
        `spec.source_intensity` everything after them (`fastseg.data.intensity`).

        The patches are placed as in `sample_batch` (the initial patch, `patch_size`); each sample then
        draws its rotation, scaling and noise (`draw_spatial`, after its position) and only the final
        patch is written; the batch's intensity parameters are drawn after all of those.

        Args:
            spec: the `fastseg.data.augment.AugmentSpec`; its patch_size is the final patch and must be
                `final_patch_size`.
            rng: the generator to draw with; default the sampler's own.
            workers: threads that transform the samples, each a contiguous share of the batch with one
                kernel thread (no OpenMP team whose idle threads spin between batches); the draws stay
                sequential, so the batch does not depend on it (default 1).

        Returns:
            The `SampledBatch` of final patches: data (B, C, *spec.patch_size) float32 and seg
            (B, 1, *spec.patch_size) int16 with -1 outside the case (0 with `spec.source_intensity`).
        """
        from fastseg.data.spatial import draw_spatial, transform_patch
        from fastseg.threads import num_threads

        final = tuple(spec.patch_size)
        lead = 1 if self.two_d else 0
        if final != self.final_patch_size[lead:]:
            raise ValueError(f"spec.patch_size {final} must be the sampler's final_patch_size "
                             f"{self.final_patch_size[lead:]}")
        rng = self.rng if rng is None else rng
        keys, cases, channels = self._draw(rng)
        data = np.empty((self.batch_size, channels, *final), dtype=np.float32)
        seg = np.empty((self.batch_size, 1, *final), dtype=np.int16)
        starts = np.empty((self.batch_size, 3), dtype=np.int64)
        classes, draws = [], []
        for b, (key, case) in enumerate(zip(keys, cases)):
            start, selected = self._start(key, case, self.forced[b], rng)
            draws.append(draw_spatial(spec, rng))
            starts[b] = start
            classes.append(selected)
        finish = None
        if getattr(spec, "source_intensity", False):
            from fastseg.data.intensity import apply_intensity, draw_intensity

            intensity = draw_intensity(spec, rng, self.batch_size, channels)

            def finish(lo: int, hi: int) -> None:
                apply_intensity(data[lo:hi], seg[lo:hi], intensity[lo:hi], spec)

        def transform(samples: range) -> None:
            with num_threads(1):
                for b in samples:
                    transform_patch(cases[b].data, cases[b].seg, starts[b].tolist(), self.patch_size[lead:], draws[b],
                                    data[b], seg[b])
                if finish is not None and len(samples):
                    finish(samples.start, samples.stop)

        workers = min(workers, self.batch_size)
        if workers > 1:
            if self._pool is None or self._pool_size != workers:
                from concurrent.futures import ThreadPoolExecutor

                self._pool, self._pool_size = ThreadPoolExecutor(workers, thread_name_prefix="fastseg-patch"), workers
            # one task per thread (a contiguous share of the samples): few hand-offs; the kernels release the GIL
            bounds = np.linspace(0, self.batch_size, workers + 1).round().astype(int)
            list(self._pool.map(transform, [range(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]))
        else:
            transform(range(self.batch_size))
        return SampledBatch(data=data, seg=seg, keys=keys, forced=list(self.forced), starts=starts, classes=classes)
