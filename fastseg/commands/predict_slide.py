"""`fastseg predict` on whole-slide images: the options, which inputs are slides, the run over them."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

_SLIDE_OUTPUT_ENDINGS = (".tif", ".tiff")
_STRIP_ENDINGS = (".ome.tiff", ".ome.tif", ".svs", ".tiff", ".tif", ".btf", ".tf8")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"the tissue fraction must be in [0, 1], got {value}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _level(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a level is a number >= 0 (0 = full resolution), got {text!r}")
    return int(text)


def _tile(text: str) -> int:
    if not text.isdigit() or int(text) == 0 or int(text) % 16:
        raise argparse.ArgumentTypeError(f"the tile size must be a positive multiple of 16, got {text!r}")
    return int(text)


def add_slide_options(p: argparse.ArgumentParser) -> None:
    """The whole-slide options of `fastseg predict`."""
    g = p.add_argument_group(
        "whole-slide images",
        "Inputs ending in .svs, and TIFF files holding a pyramid (pyramidal TIFF, OME-TIFF), are predicted tile "
        "by tile with a 2D model, never held in memory whole, into a tiled pyramidal label TIFF "
        "(-o out.tif for one slide, or a folder); --continue resumes an interrupted slide from its last finished row "
        "of tiles. Example: fastseg predict -m MODEL -i slide.svs -o slide_labels.tif --overlay slide.png",
    )
    g.add_argument("--slide", action="store_true",
                   help="read the inputs as whole-slide images even when they are not recognised as such (a file that "
                        "is not a pyramid is then an error)")
    g.add_argument("--level", type=_level, default=None, metavar="N",
                   help="pyramid level to predict (0 = full resolution; default: the level closest to the model's "
                        "pixel size, or 0 when either is unknown)")
    g.add_argument("--mpp", type=_positive, default=None, metavar="M",
                   help="the model's pixel size in micrometres (default: dataset.json's microns_per_pixel times the "
                        "plans' spacing); picks the closest level")
    g.add_argument("--no-tissue-mask", action="store_true",
                   help="predict every tile (default: skip tiles without tissue, by Otsu's threshold on saturation "
                        "at low resolution; they get label 0)")
    g.add_argument("--min-tissue-fraction", type=_fraction, default=0.01, metavar="F",
                   help="least tissue fraction of a tile to predict it (default: 0.01)")
    g.add_argument("--tile-size", type=_tile, default=512, metavar="T",
                   help="tile edge of the output TIFF (default: 512)")
    g.add_argument("--overlay", default=None, metavar="PNG",
                   help="also write a low-resolution PNG of the slide with the labels over it (a folder for several slides)")


def slide_inputs(inputs: list[str], force: bool) -> list[Path]:
    """The slides among `inputs` (files, or folders of files) when the inputs are slides, else [].

    Inputs are slides when every file given (or every slide-like file of a folder given) is one by
    `fastseg.io.slide.is_slide_file`, or, with `force`, when they are TIFF or SVS files at all.
    """
    from fastseg.io.slide import is_slide_file

    files: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            members = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
            found = [f for f in members if (force and f.name.lower().endswith(_STRIP_ENDINGS)) or is_slide_file(f)]
            if not found:
                return []
            files.extend(found)
        elif force or is_slide_file(path):
            files.append(path)
        else:
            return []
    return files


def _stem(path: Path) -> str:
    name = path.name
    for ending in _STRIP_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return path.stem


def slide_outputs(slides: list[Path], output: Path) -> list[Path]:
    """One label TIFF per slide: `output` itself for one slide and a .tif/.tiff `output`, else
    `output/<slide name>.tif`."""
    if output.name.lower().endswith(_SLIDE_OUTPUT_ENDINGS) and not output.is_dir():
        if len(slides) != 1:
            raise ValueError(f"-o {output} is a file, but there are {len(slides)} slides; give a folder")
        return [output]
    return [output / f"{_stem(s)}.tif" for s in slides]


def run_slides(args: argparse.Namespace, predictor, slides: list[Path]) -> int:
    """Predicts each slide (`fastseg.predict.slide.predict_slide`); a slide that fails is reported
    and the others go on. Exit status 1 when any failed."""
    from fastseg.io.errors import ImageFileError
    from fastseg.predict.slide import SlideOptions, partial_run_files, predict_slide

    outputs = slide_outputs(slides, Path(args.output))
    overlays: list[Path | None] = [None] * len(slides)
    if args.overlay is not None:
        overlay = Path(args.overlay)
        if len(slides) == 1 and overlay.suffix.lower() == ".png":
            overlays = [overlay]
        else:
            overlays = [overlay / f"{_stem(s)}.png" for s in slides]
    model = predictor.model
    print(
        f"{len(slides)} slide(s), model {model.path.name} ({model.configuration}), device {args.device}, "
        f"TTA {'over axes ' + str(predictor.mirror_axes) if predictor.mirror_axes else 'off'}, "
        f"tissue mask {'off' if args.no_tissue_mask else 'on'}"
    )
    failed = 0
    for slide, out, overlay in zip(slides, outputs, overlays):
        options = SlideOptions(
            level=args.level,
            mpp=args.mpp,
            tissue_mask=not args.no_tissue_mask,
            min_tissue_fraction=args.min_tissue_fraction,
            tile_size=args.tile_size,
            overlay=overlay,
            batch_size=args.batch_size,
        )
        if args.continue_ and out.is_file() and not partial_run_files(out)[1].exists():
            print(f"{slide.name}: {out} is already there (--continue)")
            continue
        try:
            report = predict_slide(predictor, slide, out, options, resume=args.continue_)
        except (ImageFileError, ValueError, OSError) as err:
            failed += 1
            print(f"error: {err}", file=sys.stderr)
            continue
        h, w = report.shape
        mpp = f"{report.mpp:.3f} µm/px" if report.mpp else "pixel size unknown"
        resumed = f", resumed at row {report.resumed_from_row}" if report.resumed_from_row else ""
        print(
            f"{slide.name}: level {report.level} ({w}x{h}, {mpp}), {report.predicted} of {report.tiles} tiles predicted, "
            f"{report.skipped} without tissue{resumed}; {report.megapixels_per_second:.2f} MP/s, "
            f"predict {report.seconds['predict']:.1f} s, write {report.seconds['write']:.1f} s -> {report.output}"
        )
    return 1 if failed else 0
