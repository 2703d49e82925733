"""Synthetic raw datasets: organ-like structures in CT- or MR-like images, seeded and fast.

Each case is drawn from its own generator, `default_rng([seed, index])`, so a case does not depend on
how many cases are generated or on which process generates it. One case (z, y, x), in normalised
coordinates (`fastseg.datasets.fields`):

- a body: an elliptic cylinder along z whose outline wobbles, with a fat rim under its surface;
- label 1 "organ": a large deformed ellipsoid; label 2 "lesion": one to three blobs nested inside
  the organ; label 3 "neighbour": a smaller organ that touches the organ (placed overlapping it,
  then cut by it); label 4 "tube": a bone/vessel-like tube along z that wanders slowly.
- intensities per tissue plus smooth texture, a smooth bias field and noise:
  CT-like: Hounsfield-like values (air -1000, fat -100, soft tissue 40, bone several hundred) stored as
  int16; the scanner's circular field of view and a few padding slices are exactly 0, so cropping to
  the nonzero region removes them. MR-like: one contrast per channel, multiplicative bias field,
  Rician-like noise, exactly 0 outside the body (as after skull stripping or masking).
- anisotropic spacing (CT: 2-5 mm slices, 0.6-0.95 mm in-plane), shapes jittered per case.

Variants: `regions` declares nnU-Net regions ({organ, lesion}, {lesion}, {neighbour}, {tube});
`ignore_label` marks unannotated voxels (whole slices in 3D, a band of rows in 2D) with label 5;
`two_d` draws one slice (written as PNG by default); `num_channels` adds MR contrasts.

The dataset is written in nnU-Net v2 raw layout (dataset.json included) into a staging folder,
verified, and moved into place (`fastseg.io.raw_writer`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastseg.datasets.fields import axis_coords, box, ellipsoid, smooth_field
from fastseg.io.dataset_json import make_dataset_json, write_dataset_json
from fastseg.io.formats import reader_for
from fastseg.runtime.workers import parallel_map
from fastseg.io.raw_writer import staged_dataset, verify_staged, write_case
from fastseg.io.report import VerificationReport

ORGAN, LESION, NEIGHBOUR, TUBE, IGNORE = 1, 2, 3, 4, 5
# Tissue classes for intensities: a labelled voxel's tissue is its label + 2.
AIR, SOFT, FAT = 0, 1, 2
_MR_NAMES = ("T1", "T2", "FLAIR", "PD")
_DIRECTION_3D = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class SyntheticConfig:
    """What `write_synthetic_dataset` generates.

    Args:
        num_cases: training cases (default 10).
        num_test_cases: extra cases written to imagesTs, their labels to labelsTs (default 0).
        seed: seed of every case's generator (default 0).
        shape: nominal (z, y, x), or (y, x) with `two_d`; default (64, 128, 128), 2D (256, 256). Each
            case's shape is jittered by `shape_jitter`.
        two_d: draw 2D cases (default False).
        ct: CT-like intensities (channel 0 named "CT"); default False: MR-like.
        num_channels: image channels (default 1); with `ct`, channels after the first are MR-like.
        regions: declare region labels (default False).
        ignore_label: add an ignore label, 5 (default False).
        file_ending: default ".nii.gz" for 3D and ".png" for 2D.
        shape_jitter: relative per-case shape variation (default 0.15; z varies twice as much).
        name: dataset.json's name (default "Synthetic").
        lesion_scale: the lesions' radii relative to the default draw (default 1.0); larger lesions
            are learned sooner (the demo's short training uses 1.8).
    """

    num_cases: int = 10
    num_test_cases: int = 0
    seed: int = 0
    shape: tuple[int, ...] | None = None
    two_d: bool = False
    ct: bool = False
    num_channels: int = 1
    regions: bool = False
    ignore_label: bool = False
    file_ending: str | None = None
    shape_jitter: float = 0.15
    name: str = "Synthetic"
    lesion_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.num_cases < 1:
            raise ValueError(f"num_cases must be >= 1, got {self.num_cases}")
        if self.num_test_cases < 0:
            raise ValueError(f"num_test_cases must be >= 0, got {self.num_test_cases}")
        if not 1 <= self.num_channels <= 16:
            raise ValueError(f"num_channels must be in [1, 16], got {self.num_channels}")
        if not 0 <= self.shape_jitter < 0.5:
            raise ValueError(f"shape_jitter must be in [0, 0.5), got {self.shape_jitter}")
        dims, smallest = (2, 16) if self.two_d else (3, 8)
        shape = self.nominal_shape
        if len(shape) != dims or min(shape) < smallest:
            raise ValueError(
                f"shape must be {dims} sizes {'(y, x)' if self.two_d else '(z, y, x)'} of at least {smallest} voxels, got {shape}"
            )
        ending = self.ending
        fmt = reader_for(ending)  # raises for unsupported endings
        if fmt.name == "NaturalImage2D" and not self.two_d:
            raise ValueError(f"{ending} stores 2D images only; use two_d=True (--2d) or a 3D ending such as .nii.gz")
        if fmt.name == "NaturalImage2D" and self.ct:
            raise ValueError(
                f"CT-like intensities (negative HU) cannot be stored in {ending}; use file_ending='.nii.gz' or drop ct"
            )

    @property
    def nominal_shape(self) -> tuple[int, ...]:
        if self.shape is not None:
            return tuple(int(s) for s in self.shape)
        return (256, 256) if self.two_d else (64, 128, 128)

    @property
    def ending(self) -> str:
        return self.file_ending or (".png" if self.two_d else ".nii.gz")

    def labels(self) -> dict:
        """dataset.json's `labels` for this variant."""
        if self.regions:
            labels: dict = {
                "background": 0,
                "organ_with_lesion": [ORGAN, LESION],
                "lesion": [LESION],
                "neighbour": [NEIGHBOUR],
                "tube": [TUBE],
            }
        else:
            labels = {"background": 0, "organ": ORGAN, "lesion": LESION, "neighbour": NEIGHBOUR, "tube": TUBE}
        if self.ignore_label:
            labels["ignore"] = IGNORE
        return labels

    def channel_names(self) -> dict[str, str]:
        names = []
        for c in range(self.num_channels):
            if self.ct and c == 0:
                names.append("CT")
            else:
                k = c - 1 if self.ct else c
                names.append(_MR_NAMES[k] if k < len(_MR_NAMES) else f"MR{k}")
        return {str(i): n for i, n in enumerate(names)}


@dataclass
class SyntheticCase:
    """One generated case.

    Attributes:
        images: one int16 (z, y, x) array per channel (2D: (1, y, x); uint8 for 8-bit formats).
        seg: uint8 labels, same shape.
        properties: geometry for the writers ('spacing' (z, y, x), 'sitk_stuff' for SimpleITK endings).
    """

    images: list[np.ndarray]
    seg: np.ndarray
    properties: dict = field(default_factory=dict)


# --- anatomy --------------------------------------------------------------------------------------


def _case_shape(config: SyntheticConfig, rng: np.random.Generator) -> tuple[int, int, int]:
    nominal = config.nominal_shape
    j = config.shape_jitter
    if config.two_d:
        y, x = (int(round(s * rng.uniform(1 - j, 1 + j))) for s in nominal)
        return 1, max(y, 16), max(x, 16)
    z = int(round(nominal[0] * rng.uniform(1 - 2 * j, 1 + 2 * j)))
    y, x = (int(round(s * rng.uniform(1 - j, 1 + j))) for s in nominal[1:])
    return max(z, 8), max(y, 8), max(x, 8)


def _drift(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    """A slow variation along z, (n, 1, 1); zeros for a 2D case (n == 1)."""
    if n == 1:
        return np.zeros((1, 1, 1), np.float32)
    return amplitude * smooth_field(rng, (n, 1, 1), 3)


def _anatomy(shape: tuple[int, int, int], rng: np.random.Generator, lesion_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seg, tissue, body) for one case: uint8 labels 0..4, uint8 tissue classes, the body mask."""
    coords = [axis_coords(n) for n in shape]
    z, y, x = coords
    is_3d = shape[0] > 1
    # Python floats keep float32 arithmetic float32 (numpy scalars would promote it to float64).
    cy, cx = (float(v) for v in rng.uniform(-0.08, 0.08, 2))
    ry, rx = rng.uniform(0.55, 0.7), rng.uniform(0.7, 0.85)
    taper = 1 + _drift(rng, shape[0], 0.06)
    q_body = ((y[None, :, None] - cy) / ry) ** 2 + ((x[None, None, :] - cx) / rx) ** 2
    q_body = q_body / taper**2 + 0.06 * smooth_field(rng, shape, (3, 5, 5))
    body = q_body < 1
    seg = np.zeros(shape, dtype=np.uint8)

    # organ: large, left of centre
    oc = (
        rng.uniform(-0.25, 0.25) if is_3d else 0.0,
        cy + rng.uniform(-0.25, 0.05) * ry,
        cx - rng.uniform(0.15, 0.35) * rx,
    )
    orad = (rng.uniform(0.5, 0.8), rng.uniform(0.45, 0.6) * ry, rng.uniform(0.4, 0.55) * rx)
    o_sl, q_organ = ellipsoid(coords, oc, orad, rng.uniform(-0.6, 0.6), wobble=0.4, rng=rng)
    organ = (q_organ < 1) & body[o_sl]
    seg[o_sl][organ] = ORGAN

    # neighbour: overlaps the organ, then is cut by it, so the two touch
    phi = rng.uniform(-0.6, 0.6)
    nrad = (rng.uniform(0.3, 0.5), rng.uniform(0.15, 0.22), rng.uniform(0.15, 0.22))
    reach = 0.8 * (0.5 * (orad[1] + orad[2]) + 0.5 * (nrad[1] + nrad[2]))
    nc = (oc[0] + (rng.uniform(-0.1, 0.1) if is_3d else 0.0), oc[1] + np.sin(phi) * reach, oc[2] + np.cos(phi) * reach)
    n_sl, q_nb = ellipsoid(coords, nc, nrad, rng.uniform(-1, 1), wobble=0.2, rng=rng)
    view = seg[n_sl]
    view[(q_nb < 1) & body[n_sl] & (view == 0)] = NEIGHBOUR

    # tube: behind the centre, along z, wandering slowly (evaluated on its y-x bounding box)
    tr = rng.uniform(0.06, 0.09)
    ty = cy + 0.55 * ry + _drift(rng, shape[0], 0.04)
    tx = cx + rng.uniform(-0.1, 0.1) + _drift(rng, shape[0], 0.04)
    t_sl = box(coords, (0.0, float(ty.mean()), float(tx.mean())), (2.0, tr + float(np.ptp(ty)), tr + float(np.ptp(tx))))
    q_tube = ((y[t_sl[1]][None, :, None] - ty) ** 2 + (x[t_sl[2]][None, None, :] - tx) ** 2) / tr**2
    view = seg[t_sl]
    view[(q_tube < 1) & body[t_sl] & (view == 0)] = TUBE

    # lesions: nested inside the organ, centred where the organ is deep
    deep = np.flatnonzero((q_organ < 0.45) & organ)
    for _ in range(int(rng.integers(1, 4)) if deep.size else 0):
        idx = np.unravel_index(rng.choice(deep), q_organ.shape)
        lc = tuple(float(c[s][i]) for c, s, i in zip(coords, o_sl, idx))
        lrad = tuple(r * rng.uniform(0.2, 0.4) * lesion_scale for r in orad)
        l_sl, q_l = ellipsoid(coords, lc, lrad, rng.uniform(-1, 1), wobble=0.25, rng=rng)
        view = seg[l_sl]
        view[(q_l < 1) & (view == ORGAN)] = LESION
    tissue = np.where(body, np.where(q_body > 0.72, FAT, SOFT), AIR).astype(np.uint8)
    np.add(seg, 2, out=tissue, where=seg > 0)  # a labelled voxel's tissue is its label + 2
    return seg, tissue, body


# --- intensities ----------------------------------------------------------------------------------


def _texture(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    return smooth_field(rng, shape, tuple(max(2, s // 10) for s in shape))


def _ct_image(tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    organ = rng.uniform(50, 70)
    lesion = organ + rng.choice([-1, 1]) * rng.uniform(30, 60)
    means = np.array([-1000, 40, -100, organ, lesion, rng.uniform(130, 180), rng.uniform(400, 700)], np.float32)
    texture_amp = np.array([3, 10, 8, 8, 12, 10, 80], np.float32)
    img = means[tissue]
    img += texture_amp[tissue] * _texture(rng, tissue.shape)
    img += 15 * smooth_field(rng, tissue.shape, 3)
    img += 12 * rng.standard_normal(tissue.shape, dtype=np.float32)
    return img


def _mr_image(tissue: np.ndarray, body: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    organ = rng.uniform(100, 700)
    lesion = organ * (rng.uniform(0.4, 0.7) if rng.random() < 0.5 else rng.uniform(1.4, 2.0))
    means = np.array(
        [0, rng.uniform(150, 400), rng.uniform(200, 900), organ, lesion, rng.uniform(100, 700), rng.uniform(50, 250)],
        np.float32,
    )
    img = means[tissue]
    img *= 1 + 0.06 * _texture(rng, tissue.shape)
    img *= np.exp(0.25 * smooth_field(rng, tissue.shape, 3))
    sigma = 0.04 * float(means[1])
    img += sigma * rng.standard_normal(tissue.shape, dtype=np.float32)
    np.abs(img, out=img)  # magnitude image: Rician-like noise floor
    img *= body
    return img


def _field_of_view(img: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> None:
    """Zeroes what lies outside the scanner's circular field of view and a few padding slices."""
    _, y, x = (axis_coords(n) for n in img.shape)
    fy, fx = (float(v) for v in rng.uniform(-0.05, 0.05, 2))
    radius = rng.uniform(0.88, 0.97)
    outside = ((y[:, None] - fy) ** 2 + (x[None, :] - fx) ** 2) >= radius**2
    img[:, outside] = 0
    seg[:, outside] = 0
    if img.shape[0] > 1:
        pad = img.shape[0] // 12
        lo, hi = int(rng.integers(0, pad + 1)), int(rng.integers(0, pad + 1))
        img[:lo] = 0
        seg[:lo] = 0
        if hi:
            img[-hi:] = 0
            seg[-hi:] = 0


def _ignore(seg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Marks unannotated voxels: 30-50 % of the slices in 3D, a band of rows in 2D."""
    seg = seg.copy()
    if seg.shape[0] > 1:
        n = int(round(seg.shape[0] * rng.uniform(0.3, 0.5)))
        seg[rng.choice(seg.shape[0], size=n, replace=False)] = IGNORE
    else:
        h = seg.shape[1]
        lo = int(rng.integers(0, h - h // 3))
        seg[:, lo : lo + h // 3] = IGNORE
    return seg


def _properties(config: SyntheticConfig, shape: tuple[int, int, int], rng: np.random.Generator) -> dict:
    fmt = reader_for(config.ending)
    if config.two_d:
        if fmt.name != "SimpleITK":
            return {"spacing": [999.0, 1.0, 1.0]}
        s = round(float(rng.uniform(0.5, 1.0)), 3)
        return {
            "spacing": [999.0 * s, s, s],
            "sitk_stuff": {"spacing": (s, s), "origin": (0.0, 0.0), "direction": (1.0, 0.0, 0.0, 1.0)},
        }
    if config.ct:
        sz, sxy = float(rng.choice([2.0, 2.5, 3.0, 4.0, 5.0])), round(float(rng.uniform(0.6, 0.95)), 3)
    else:
        sz, sxy = round(float(rng.uniform(1.0, 3.0)), 2), round(float(rng.uniform(0.8, 1.2)), 3)
    origin = (
        round(float(sxy * shape[2] / 2 + rng.uniform(-20, 20)), 3),
        round(float(sxy * shape[1] / 2 + rng.uniform(-20, 20)), 3),
        round(float(rng.uniform(-400, 0)), 3),
    )
    props = {"spacing": [sz, sxy, sxy]}
    if fmt.name == "SimpleITK":
        props["sitk_stuff"] = {"spacing": (sxy, sxy, sz), "origin": origin, "direction": _DIRECTION_3D}
    return props


def _to_uint8(img: np.ndarray, body: np.ndarray) -> np.ndarray:
    inside = img[body]
    top = float(np.percentile(inside, 99.5)) if inside.size else 1.0
    return np.clip(np.rint(img * (230.0 / max(top, 1e-6))), 0, 255).astype(np.uint8)


def generate_case(config: SyntheticConfig, index: int) -> SyntheticCase:
    """Draws case `index` of `config` (deterministic: the same arguments give the same arrays).

    Args:
        config: the dataset's configuration.
        index: the case number; cases are independent of each other.
    """
    rng = np.random.default_rng([config.seed, index])
    shape = _case_shape(config, rng)
    seg, tissue, body = _anatomy(shape, rng, config.lesion_scale)
    images = []
    eight_bit = reader_for(config.ending).name == "NaturalImage2D"
    for c in range(config.num_channels):
        if config.ct and c == 0:
            img = _ct_image(tissue, rng)
        else:
            img = _mr_image(tissue, body, rng)
        images.append(img)
    if config.ct:
        _field_of_view(images[0], seg, rng)
        for img in images[1:]:
            img[images[0] == 0] = 0
    out = []
    for c, img in enumerate(images):
        if eight_bit:
            out.append(_to_uint8(img, body))
        elif config.ct and c == 0:
            out.append(np.clip(np.rint(img), -1024, 3071).astype(np.int16))
        else:
            out.append(np.clip(np.rint(img), 0, 32767).astype(np.int16))
    if config.ignore_label:
        seg = _ignore(seg, rng)
    return SyntheticCase(out, seg, _properties(config, shape, rng))


# --- writing --------------------------------------------------------------------------------------


def case_identifier(index: int) -> str:
    return f"case_{index:04d}"


def _write_one(job: tuple[str, SyntheticConfig, int, bool]) -> None:
    root, config, index, test = job
    case = generate_case(config, index)
    write_case(root, case_identifier(index), case.images, case.seg, case.properties, config.ending, test=test)


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    config: SyntheticConfig = SyntheticConfig(),
    *,
    num_processes: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> VerificationReport:
    """Generates and writes a raw dataset in nnU-Net v2 layout, verified before it appears.

    Args:
        out_dir: the dataset folder to create (e.g. `.../Dataset900_Synthetic`).
        config: what to generate (default `SyntheticConfig()`: 10 MR-like 64x128x128 cases).
        num_processes: worker processes generating and verifying cases; None (default) uses every CPU.
        overwrite: replace an existing non-empty `out_dir` (default False: refuse).
        progress: progress bar; None (default) only on a terminal.

    Returns:
        The verification report of the written dataset.

    Raises:
        FileExistsError: `out_dir` exists, is not empty and `overwrite` is False.
        DatasetError: the generated dataset failed verification (nothing is written).
    """
    num_processes = num_processes or os.cpu_count() or 1
    out_dir = Path(out_dir)
    with staged_dataset(out_dir, overwrite=overwrite) as staging:
        jobs = [(str(staging), config, i, False) for i in range(config.num_cases)]
        jobs += [(str(staging), config, config.num_cases + i, True) for i in range(config.num_test_cases)]
        parallel_map(_write_one, jobs, num_processes, desc="generating cases", progress=progress)
        content = make_dataset_json(
            channel_names=config.channel_names(),
            labels=config.labels(),
            num_training=config.num_cases,
            file_ending=config.ending,
            regions_class_order=[ORGAN, LESION, NEIGHBOUR, TUBE] if config.regions else None,
            name=config.name,
            description="Synthetic organ-like structures generated by fastseg.datasets.synthetic",
            licence="CC0 (synthetic)",
            synthetic_config=dataclasses.asdict(config),
        )
        write_dataset_json(staging, content)
        report = verify_staged(staging, num_processes, out_dir)
    return report
