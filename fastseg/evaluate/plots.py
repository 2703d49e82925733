"""Pictures for checking segmentations by eye: overlays of the slice where each class is largest
(`overlay_folder`, `fastseg overlay`) and box plots of an evaluation's per-case scores
(`plot_summary`, `fastseg evaluate --plot`).

Overlays, per case (a segmentation in PRED, its image IMAGE_DIR/<case>_0000<ending>)::

    gray(v)  = round(255 * clip((v - p0.5) / (p99.5 - p0.5), 0, 1))   channel 0; percentiles of the
                                                                     whole volume (an RGB(A) 2D image:
                                                                     its luminance)
    for each class (dataset.json's labels or regions, background and ignore left out; without a
    dataset.json, the labels the segmentation holds):
        z     = the slice along the first array axis (z of nnU-Net's z, y, x; a 2D image has one) with
                the most voxels of the class, the lower index on ties; `per_class` N: the N fullest
        pixel = round((1 - alpha) * gray + alpha * colour(label))   where the slice holds label > 0,
                gray (R = G = B)                                    elsewhere;
                with `contours`, a label's outline (pixels with a 4-neighbour of another value) in
                its full colour
        -> OUT/<case>_<class>.png (the N-th fullest: <case>_<class>_<N>.png), with a legend column on
           the right: the case, the slice, and the labels drawn in it

Pixels are square in mm. The slice's (y, x) spacing (sy, sx), s = min(sy, sx), is shown as
round(k * ny * sy / s) rows by round(k * nx * sx / s) columns, k the smallest whole magnification
that makes the longer side at least `min_size` (256) pixels; output row i shows source row
floor((i + 1/2) * ny / rows) (nearest neighbour, so every pixel is one voxel's colour). A 10 x 20
slice of 2 x 1 mm voxels is 20 x 20 mm: 260 x 260 pixels (k = 13). Colours are fixed per label
value (`label_colour`; 20 of them, label 21 repeats label 1's), so a label looks the same in every
picture. Shapes so elongated that the longer side would pass `MAX_SIDE` (4096) are scaled down to it.

A case's pictures are written together once all are drawn (`StagedFiles`); an error stops the run
and leaves no file of that case; cases finished before it keep theirs.
"""

from __future__ import annotations

import functools
import glob
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PathLike = str | os.PathLike

#: Fill colour of label value v: PALETTE[(v - 1) % 20] (ITK-SNAP's first six, then mixtures; no gray,
#: which would vanish in the image).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
    (255, 128, 0), (128, 0, 255), (128, 255, 0), (255, 0, 128), (0, 128, 255), (0, 255, 128),
    (128, 0, 0), (0, 128, 0), (0, 0, 128), (128, 128, 0), (0, 128, 128), (128, 0, 128),
    (160, 82, 45), (250, 128, 114),
)
#: The image is windowed to these percentiles of its values.
WINDOW_PERCENTILES = (0.5, 99.5)
#: Width in pixels of the legend column right of the image.
LEGEND_WIDTH = 180
#: Longest side in pixels of the image part; more extreme shapes are scaled down to fit.
MAX_SIDE = 4096
_ROW, _PAD, _SWATCH = 16, 6, 11
_BACKGROUND, _TEXT = (24, 24, 24), (235, 235, 235)


@dataclass(frozen=True)
class OverlayStyle:
    """How overlays are drawn.

    Attributes:
        alpha: opacity of the label fill, in (0, 1]; default 0.4.
        contours: also draw each label's outline in its full colour; default False.
        min_size: the image part is magnified by the smallest whole factor that makes its longer
            side at least this many pixels; default 256.
    """

    alpha: float = 0.4
    contours: bool = False
    min_size: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1 pixel, got {self.min_size}")


@dataclass(frozen=True)
class OverlayClass:
    """One class to picture: its name and the label values it covers (one, or a region's)."""

    name: str
    members: tuple[int, ...]


@dataclass(frozen=True)
class Picture:
    """One picture written: its file, its class and the slice (index along the first axis) it shows."""

    path: Path
    class_name: str
    slice_index: int


@dataclass
class CaseOverlays:
    """What `overlay_case` drew: the pictures, and the classes without a voxel in the case."""

    case: str
    pictures: list[Picture] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)


# --- drawing one slice -------------------------------------------------------------------------------


def label_colour(value: int) -> tuple[int, int, int]:
    """The fill colour of label `value` (>= 1): `PALETTE[(value - 1) % len(PALETTE)]`."""
    if value < 1:
        raise ValueError(f"label values drawn are >= 1 (0 is background), got {value}")
    return PALETTE[(value - 1) % len(PALETTE)]


def window_levels(image: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES) -> tuple[float, float]:
    """(low, high): the `percentiles` of the finite values of `image`; (0, 0) when it has none."""
    values = np.asarray(image)
    finite = np.isfinite(values)
    if not finite.all():
        values = values[finite]
    if values.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(values, percentiles)
    return float(lo), float(hi)


def to_gray(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """`image` windowed to [lo, hi] as uint8 gray levels: round(255 * clip((v - lo) / (hi - lo), 0, 1)).
    A window of width 0 shows values above it white and the rest black; NaN is black."""
    v = np.asarray(image, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        g = np.clip((v - lo) / (hi - lo), 0.0, 1.0) * 255.0 if hi > lo else np.where(v > lo, 255.0, 0.0)
    return np.rint(np.nan_to_num(g, nan=0.0)).astype(np.uint8)


def slice_label_counts(seg: np.ndarray) -> np.ndarray:
    """(n_slices, max label + 1) int64: how many voxels of each label value each slice along axis 0
    of `seg` (z, y, x) holds; one pass over the volume, whatever the number of classes."""
    seg = np.asarray(seg)
    if seg.size and seg.min() < 0:
        raise ValueError(f"label values must be >= 0, got {int(seg.min())}")
    size = int(seg.max()) + 1 if seg.size else 1
    counts = np.zeros((seg.shape[0], size), dtype=np.int64)
    for z in range(seg.shape[0]):
        counts[z] = np.bincount(seg[z].ravel().astype(np.intp), minlength=size)
    return counts


def largest_slices(counts: np.ndarray, members: Sequence[int], n: int = 1) -> list[int]:
    """The indices of the (up to) `n` slices with the most voxels of the labels `members`, fullest
    first, the lower index first on ties; slices without any are never chosen.

    Args:
        counts: `slice_label_counts` of the segmentation.
        members: the class's label values (one label, or a region's).
        n: how many slices.
    """
    members = [m for m in members if 0 <= m < counts.shape[1]]
    per_slice = counts[:, members].sum(axis=1) if members else np.zeros(counts.shape[0], np.int64)
    order = np.argsort(-per_slice, kind="stable")
    return [int(z) for z in order[:n] if per_slice[z] > 0]


def display_shape(shape: Sequence[int], spacing: Sequence[float], min_size: int = 256) -> tuple[int, int]:
    """(rows, columns) of the picture of a (ny, nx) slice with (sy, sx) spacing: square pixels, the
    smallest whole magnification making the longer side >= `min_size`, at most `MAX_SIDE`."""
    (ny, nx), (sy, sx) = shape, spacing
    if not (sy > 0 and sx > 0 and math.isfinite(sy) and math.isfinite(sx)):
        raise ValueError(f"in-plane spacing must be positive and finite, got {list(spacing)}")
    s = min(sy, sx)
    h, w = ny * sy / s, nx * sx / s
    k = max(1, math.ceil(min_size / max(h, w)))
    h, w = h * k, w * k
    if max(h, w) > MAX_SIDE:
        h, w = h * MAX_SIDE / max(h, w), w * MAX_SIDE / max(h, w)
    return max(1, round(h)), max(1, round(w))


def _nearest(n_source: int, n_shown: int) -> np.ndarray:
    """Source index of each shown row (column): floor((i + 1/2) * n_source / n_shown), in integers."""
    i = np.arange(n_shown, dtype=np.int64)
    return ((2 * i + 1) * n_source) // (2 * n_shown)


def _outline(labels: np.ndarray) -> np.ndarray:
    """Labelled pixels with a 4-neighbour (inside the picture) of another value."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge & (labels != 0)


@functools.lru_cache(maxsize=1)
def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _fit(draw, text: str, width: float) -> str:
    """`text`, cut with '...' to fit `width` pixels."""
    if draw.textlength(text, font=_font()) <= width:
        return text
    while text and draw.textlength(text + "...", font=_font()) > width:
        text = text[:-1]
    return text + "..."


def render_overlay(
    gray: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    value_names: Mapping[int, str] | None = None,
    *,
    header: Sequence[str] = (),
    style: OverlayStyle = OverlayStyle(),
):
    """One slice with its labels drawn over it, and a legend column.

    Args:
        gray: (ny, nx) uint8 gray levels (`to_gray`).
        labels: (ny, nx) label values of the same slice; 0 is background (not drawn).
        spacing: (sy, sx) in mm, for the aspect ratio.
        value_names: label value -> name for the legend; other values read "label <v>".
        header: lines written above the legend's labels (case, slice).
        style: alpha, contours, magnification.

    Returns:
        An RGB `PIL.Image` of (`display_shape` columns + `LEGEND_WIDTH`) x max(rows, legend height)
        pixels, the image part at the top left.
    """
    from PIL import Image, ImageDraw

    gray, labels = np.asarray(gray), np.asarray(labels)
    if gray.ndim != 2 or gray.shape != labels.shape:
        raise ValueError(f"gray and labels must be one (y, x) slice each, got {gray.shape} and {labels.shape}")
    value_names = value_names or {}
    rows, cols = display_shape(gray.shape, spacing, style.min_size)
    pick = np.ix_(_nearest(gray.shape[0], rows), _nearest(gray.shape[1], cols))
    shown, g = labels[pick], gray[pick].astype(np.float64)
    visible = [int(v) for v in np.unique(shown) if v != 0]
    lut = np.zeros((max(visible, default=0) + 1, 3))
    for v in visible:
        lut[v] = label_colour(v)
    colour = lut[shown]
    drawn = (shown != 0)[..., None]
    rgb = np.where(drawn, (1 - style.alpha) * g[..., None] + style.alpha * colour, g[..., None])
    if style.contours:
        rgb = np.where(_outline(shown)[..., None], colour, rgb)
    picture = Image.fromarray(np.rint(rgb).astype(np.uint8))

    lines = [(None, text) for text in header]
    lines += [(label_colour(v), f"{value_names[v]} ({v})" if v in value_names else f"label {v}") for v in visible]
    height = max(rows, 2 * _PAD + _ROW * len(lines))
    canvas = Image.new("RGB", (cols + LEGEND_WIDTH, height), _BACKGROUND)
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = cols + _PAD
    for i, (swatch, text) in enumerate(lines):
        y = _PAD + i * _ROW
        if swatch is not None:
            draw.rectangle([x, y + 2, x + _SWATCH - 1, y + 2 + _SWATCH - 1], fill=swatch)
        left = x + (_SWATCH + 5 if swatch is not None else 0)
        draw.text((left, y), _fit(draw, text, cols + LEGEND_WIDTH - _PAD - left), fill=_TEXT, font=_font())
    return canvas


# --- a case, a folder ----------------------------------------------------------------------------------


def picture_name(case: str, class_name: str, rank: int = 1) -> str:
    """`<case>_<class>.png` (rank 1) or `<case>_<class>_<rank>.png`, the class name reduced to
    letters, digits, '.', '_' and '-'."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", class_name).strip("._") or "class"
    return f"{case}_{safe}.png" if rank == 1 else f"{case}_{safe}_{rank}.png"


def overlay_classes(dataset_json: Mapping[str, Any]) -> tuple[list[OverlayClass], dict[int, str]]:
    """(the classes to picture, label value -> legend name) of a dataset.json.

    Plain labels: one class per label, background and ignore left out. Region-based datasets: one
    class per region (its members), and value v of a segmentation is named after the region whose
    `regions_class_order` entry is v (what nnU-Net writes there).

    Raises:
        ValueError: labels nnU-Net would refuse (the problems named).
    """
    from fastseg.io.labels import LabelSpec

    spec = LabelSpec.from_json(dataset_json.get("labels", {}), dataset_json.get("regions_class_order"))
    if spec.problems:
        raise ValueError(f"dataset.json: {'; '.join(spec.problems)}")
    classes = []
    for name, value in spec.labels.items():
        members = tuple(m for m in (value if isinstance(value, tuple) else (value,)) if m != 0)
        if name != "ignore" and members:
            classes.append(OverlayClass(name, members))
    if spec.has_regions:
        names = {v: c.name for c, v in zip(classes, spec.regions_class_order or ())}
    else:
        names = {c.members[0]: c.name for c in classes}
    if spec.ignore_label is not None:
        names[spec.ignore_label] = "ignore"
    return classes, names


def _gray_volume(image: np.ndarray) -> np.ndarray:
    """The (z, y, x) volume to draw: channel 0, or the luminance of an RGB(A) 2D image."""
    if image.shape[0] in (3, 4) and image.shape[1] == 1:
        return 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    return image[0]


@dataclass(frozen=True)
class CaseJob:
    """One case for `overlay_case` (picklable, for worker processes)."""

    case: str
    segmentation: Path
    image: Path
    output_dir: Path
    classes: tuple[OverlayClass, ...] | None  # None: the labels the segmentation holds
    value_names: Mapping[int, str]
    per_class: int = 1
    style: OverlayStyle = OverlayStyle()


def overlay_case(job: CaseJob) -> CaseOverlays:
    """Draws one case's pictures and writes them together into `job.output_dir`.

    Raises:
        ValueError: image and segmentation of different shapes; an unreadable file (`ImageFileError`);
            two pictures of one name.
    """
    from fastseg import io as fio
    from fastseg.io.atomic import StagedFiles

    image, properties = fio.read_images([job.image])
    seg, _ = fio.read_seg(job.segmentation)
    if image.shape[1:] != seg.shape[1:]:
        raise ValueError(
            f"{job.segmentation} has shape {list(seg.shape[1:])} but its image {job.image} has {list(image.shape[1:])}; "
            "is the image folder the one these segmentations were made from?"
        )
    volume, labels = _gray_volume(image), seg[0]
    lo, hi = window_levels(volume)
    counts = slice_label_counts(labels)
    classes = job.classes
    if classes is None:
        classes = [OverlayClass(f"label_{v}", (v,)) for v in np.flatnonzero(counts.sum(axis=0)) if v != 0]
    spacing = [float(s) for s in properties["spacing"]][1:]
    done = CaseOverlays(job.case)
    with StagedFiles(job.output_dir) as staged:
        for c in classes:
            slices = largest_slices(counts, c.members, job.per_class)
            if not slices:
                done.absent.append(c.name)
            for rank, z in enumerate(slices, 1):
                name = picture_name(job.case, c.name, rank)
                if any(p.path.name == name for p in done.pictures):
                    raise ValueError(f"two pictures of case {job.case} would both be {name}; give the classes distinct names")
                where = f"z = {z} (0..{labels.shape[0] - 1})" if labels.shape[0] > 1 else "2D image"
                picture = render_overlay(
                    to_gray(volume[z], lo, hi), labels[z], spacing, job.value_names,
                    header=(job.case, f"{c.name}: {where}"), style=job.style,
                )
                with staged.writing(name) as tmp:
                    picture.save(tmp, format="PNG")
                done.pictures.append(Picture(job.output_dir / name, c.name, z))
    return done


def _segmentations(folder: Path, ending: str | None) -> list[Path]:
    from fastseg.io.formats import SUPPORTED_FILE_ENDINGS, split_ending

    endings = [ending.lower()] if ending else [e.lower() for e in SUPPORTED_FILE_ENDINGS]
    found = [
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and split_ending(p)[1].lower() in endings
    ]
    if not found:
        what = f"{ending} files (dataset.json's file_ending)" if ending else f"segmentations ({', '.join(endings)})"
        raise ValueError(f"{folder} holds no {what}")
    return sorted(found)


def _image_of(image_dir: Path, case: str, ending: str) -> Path | None:
    """IMAGE_DIR/<case>_0000<ending>, else <case>_0000 with another supported ending, else None."""
    from fastseg.io.formats import split_ending

    preferred = image_dir / f"{case}_0000{ending}"
    if preferred.is_file():
        return preferred
    others = [p for p in image_dir.glob(f"{glob.escape(case)}_0000.*") if p.is_file() and split_ending(p)[0] == f"{case}_0000"]
    return sorted(others)[0] if others else None


def overlay_folder(
    pred: PathLike,
    image_dir: PathLike,
    output_dir: PathLike,
    *,
    dataset_json: Mapping[str, Any] | PathLike | None = None,
    per_class: int = 1,
    style: OverlayStyle = OverlayStyle(),
    num_processes: int | None = None,
    progress: bool | None = None,
) -> list[CaseOverlays]:
    """Draws, for each case and class, the slice where the class is largest (see the module's docstring).

    Args:
        pred: a folder of segmentations, or one segmentation file.
        image_dir: the images, named as nnU-Net names them (`<case>_0000<ending>`; channel 0 is drawn).
        output_dir: where the PNGs go; created when missing; not `pred`'s or `image_dir`'s folder.
        dataset_json: the dataset.json (a dict or its path) naming the labels; None (default): the
            dataset.json in `pred`'s folder when there is one, else the labels in each segmentation
            (named `label_<v>`).
        per_class: pictures per class and case: the `per_class` fullest slices (default 1).
        style: alpha, contours, magnification (`OverlayStyle`).
        num_processes: worker processes (default: the cores, at most one per case).
        progress: a progress bar; None: only when stderr is a terminal.

    Returns:
        One `CaseOverlays` per case (its pictures and the classes it lacks), in case order.

    Raises:
        FileNotFoundError: `pred`, `image_dir` or a given dataset.json missing.
        ValueError: no segmentations; cases without an image (all named, before anything is drawn);
            an output folder that is an input folder; per_class < 1; a bad dataset.json; a case whose
            image and segmentation differ in shape.
    """
    from fastseg.io.formats import split_ending
    from fastseg.runtime.workers import default_num_workers, parallel_map

    pred, image_dir, output_dir = Path(pred), Path(image_dir), Path(output_dir)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1 picture per class, got {per_class}")
    if not pred.exists():
        raise FileNotFoundError(f"{pred} not found; give a folder of segmentations or one segmentation file")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} not found")
    pred_folder = pred if pred.is_dir() else pred.parent
    if output_dir.resolve() in (pred_folder.resolve(), image_dir.resolve()):
        raise ValueError(f"output folder {output_dir} is an input folder; write the pictures to a folder of their own")
    if dataset_json is None and (pred_folder / "dataset.json").is_file():
        dataset_json = pred_folder / "dataset.json"
    if dataset_json is not None and not isinstance(dataset_json, Mapping):
        from fastseg.evaluate.folder import load_dataset_json

        dataset_json = load_dataset_json(Path(dataset_json))
    classes, names = overlay_classes(dataset_json) if dataset_json is not None else (None, {})
    ending = dataset_json.get("file_ending") if dataset_json is not None else None
    segs = [pred] if pred.is_file() else _segmentations(pred, ending)

    jobs, missing = [], []
    for seg in segs:
        case, seg_ending = split_ending(seg)
        image = _image_of(image_dir, case, seg_ending)
        if image is None:
            missing.append(f"{case} (expected {image_dir / f'{case}_0000{seg_ending}'})")
            continue
        chosen = tuple(classes) if classes is not None else None
        jobs.append(CaseJob(case, seg, image, output_dir, chosen, names, per_class, style))
    if missing:
        raise ValueError(f"no image for {len(missing)} case(s) in {image_dir}: {', '.join(missing)}; images are named "
                         "<case>_0000<ending> (nnU-Net's naming, channel 0)")
    output_dir.mkdir(parents=True, exist_ok=True)
    workers = min(num_processes or default_num_workers(), len(jobs))
    return parallel_map(overlay_case, jobs, workers, desc="Drawing", progress=progress)


# --- box plots of a summary -------------------------------------------------------------------------------


def check_plot_path(path: PathLike) -> Path:
    """`path` as a Path when a plot can be written there: a .png name in an existing folder.

    Raises:
        ValueError: not a .png name.
        FileNotFoundError: the folder does not exist.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"the plot is written as PNG; give a file name ending in .png, got {path}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    return path


def plot_summary(summary: Mapping[str, Any], path: PathLike, names: Mapping[Any, str] | None = None) -> Path:
    """Box plots of each label's (region's) per-case Dice, and HD95 when the summary has it, as a PNG.

    Every case is also drawn as a point over its box. NaN values (a class absent from reference and
    prediction) are left out; an infinite HD95 (a class in only one of them) cannot be drawn and is
    counted above its box ("2 inf").

    Args:
        summary: what `evaluate_folders` returns (int / tuple keys), or its summary.json as read
            back (string keys); `metric_per_case` must hold at least one case.
        path: the .png file (written atomically; its folder must exist).
        names: label (or region) -> name for the axis, keyed as `summary` is or by `str(key)`;
            default: the keys.

    Returns:
        `path` as a Path.

    Raises:
        ValueError: a summary without per-case results, or a path not ending in .png.
        FileNotFoundError: the folder of `path` does not exist.
    """
    path = check_plot_path(path)
    per_case = summary.get("metric_per_case") if isinstance(summary, Mapping) else None
    cases_ok = isinstance(per_case, Sequence) and all(isinstance(c, Mapping) and c.get("metrics") for c in per_case)
    if not per_case or not cases_ok:
        raise ValueError(
            "the summary has no per-case results ('metric_per_case' missing, empty or without 'metrics'); "
            "plot the summary evaluate_folders returns or the summary.json it writes"
        )
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fastseg.io.atomic import atomic_path

    keys = list(per_case[0]["metrics"])
    by_name = {str(k): v for k, v in (names or {}).items()}
    tick_labels = [f"{by_name[str(k)]}\n{k}" if str(k) in by_name else str(k) for k in keys]
    panels = [("Dice", "Dice")]
    if any("HD95" in case["metrics"].get(k, {}) for case in per_case for k in keys):
        panels.append(("HD95", "HD95 (mm)"))

    def values(metric: str, key: Any) -> tuple[np.ndarray, int]:
        v = np.array([float(c["metrics"].get(key, {}).get(metric, np.nan)) for c in per_case], dtype=float)
        return v[np.isfinite(v)], int(np.isinf(v).sum())

    fig = Figure(figsize=(max(4.0, 1.2 + 0.6 * len(keys)), 0.8 + 2.8 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    positions = np.arange(1, len(keys) + 1)
    for ax, (metric, title) in zip(axes, panels):
        data = [values(metric, k) for k in keys]
        filled = [(p, d) for p, (d, _) in zip(positions, data) if d.size]
        if filled:
            ax.boxplot([d for _, d in filled], positions=[p for p, _ in filled], widths=0.5, showfliers=False)
        for p, d in filled:
            ax.scatter(p + np.linspace(-0.12, 0.12, d.size) if d.size > 1 else [p], d, s=10, alpha=0.6, color="tab:blue", zorder=3)
        for p, (d, n_inf) in zip(positions, data):
            if n_inf:
                ax.text(p, 0.98, f"{n_inf} inf", transform=ax.get_xaxis_transform(), ha="center", va="top",
                        fontsize=8, color="tab:red")
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
        room = 1.15 if any(n_inf for _, n_inf in data) else 1.0  # the "inf" counts sit above the points
        if metric == "Dice":
            ax.set_ylim(-0.02, 1.02 * room)
        else:
            top = max((float(d.max()) for _, d in filled), default=0.0)
            ax.set_ylim(0, (top * 1.05 or 1.0) * room)
    axes[-1].set_xticks(positions, tick_labels, rotation=45 if len(keys) > 8 else 0, ha="right" if len(keys) > 8 else "center")
    axes[-1].set_xlim(0.4, len(keys) + 0.6)
    fg = summary.get("foreground_mean", {}).get("Dice")
    axes[0].set_title(f"{len(per_case)} case(s)" + (f", foreground mean Dice {fg:.3f}" if fg is not None else ""), fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
