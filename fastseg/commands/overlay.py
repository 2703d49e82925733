"""`fastseg overlay`: PNGs of each class's fullest slice with the segmentation drawn over the image."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastseg.commands.plan import positive_int, reports_errors


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"the fill opacity must be in (0, 1], got {value}")
    return value


@reports_errors
def run(args: argparse.Namespace) -> int:
    from fastseg.evaluate.plots import OverlayStyle, overlay_folder

    cases = overlay_folder(
        args.pred, args.image_dir, args.output,
        dataset_json=Path(args.dataset_json) if args.dataset_json else None,
        per_class=args.per_class,
        style=OverlayStyle(alpha=args.alpha, contours=args.contours),
        num_processes=args.num_processes,
    )
    for case in cases:
        if case.absent:
            print(f"{case.case}: no voxels of {', '.join(case.absent)}")
    pictures = sum(len(case.pictures) for case in cases)
    print(f"wrote {pictures} picture(s) of {len(cases)} case(s) to {args.output}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "overlay",
        help="draw segmentations over their images: one PNG per case and class, at the class's fullest slice",
        description=(
            "For each segmentation in PRED and each foreground class, picks the slice along the first array axis "
            "(axial for nnU-Net's z, y, x order; a 2D image has one) with the most voxels of the class and writes "
            "OUT/<case>_<class>.png: the image IMAGE_DIR/<case>_0000<ending> (channel 0) windowed to its 0.5-99.5 "
            "percentiles in gray, every label filled semi-transparently in a fixed colour, and a legend naming the "
            "case, the slice and the labels shown. Pixels are square in mm (anisotropic spacing is accounted for). "
            "Classes and names come from --dataset-json, else from the dataset.json in PRED (nnU-Net writes one "
            "there), else from the labels each segmentation holds. A case without an image, or whose image and "
            "segmentation differ in shape, is an error naming the files; a case's pictures are written together."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg overlay pred/ imagesTs/ -o qc/\n"
            "  fastseg overlay pred/ imagesTs/ -o qc/ --dataset-json raw/Dataset001_Heart/dataset.json --per-class 3\n"
            "  fastseg overlay labelsTr/case_001.nii.gz imagesTr/ -o qc/ --contours --alpha 0.3"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pred", metavar="PRED", help="folder of segmentations (predicted or reference), or one file")
    p.add_argument("image_dir", metavar="IMAGE_DIR", help="folder of the images, nnU-Net naming (<case>_0000<ending>)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the PNGs (created when missing)")
    p.add_argument("--dataset-json", default=None, metavar="FILE",
                   help="dataset.json naming the labels (default: PRED's dataset.json, else the labels found)")
    p.add_argument("--per-class", type=positive_int, default=1, metavar="N",
                   help="pictures per case and class: the N fullest slices (default 1; <case>_<class>_<k>.png from the 2nd)")
    p.add_argument("--contours", action="store_true", help="also outline every label in its full colour")
    p.add_argument("--alpha", type=_alpha, default=0.4, metavar="A", help="opacity of the label fill, in (0, 1] (default 0.4)")
    p.add_argument("-j", "--num-processes", type=positive_int, default=None, metavar="N", help="worker processes (default: all cores)")
    p.set_defaults(func=run)
