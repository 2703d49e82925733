"""`fastseg convert`: make nnU-Net v2 raw datasets from other formats, or synthetic ones."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)

#: Exit status for inputs that cannot be converted (the output was not written).
EXIT_BAD_INPUT = 2


def _fail(command: str, err: Exception) -> int:
    print(f"fastseg convert {command}: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run_medsam(args: argparse.Namespace) -> int:
    from fastseg.datasets.medsam import convert_medsam

    try:
        report = convert_medsam(
            args.inputs,
            args.output,
            name=args.name,
            channel_name=args.channel_name,
            spacing_order=args.spacing_order,
            file_ending=args.file_ending,
            num_processes=args.num_processes,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as e:  # DatasetError is a ValueError; FileExistsError an OSError
        return _fail("medsam", e)
    print(report.format())
    return 0


def run_dicom(args: argparse.Namespace) -> int:
    from fastseg.datasets.dicom import convert_dicom

    try:
        path = convert_dicom(
            args.series_dir, args.output, series_uid=args.series_uid, allow_irregular=args.allow_irregular
        )
    except (ValueError, OSError) as e:
        return _fail("dicom", e)
    print(path)
    return 0


def _shape(parts: list[str] | None) -> tuple[int, ...] | None:
    """`--shape 64 128 128`, `--shape 64,128,128` or `--shape 64x128x128` -> (64, 128, 128)."""
    if parts is None:
        return None
    text = ",".join(parts).lower().replace("x", ",")
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(
            f"--shape must be sizes like 64 128 128 (z y x) or 256 256 (y x), got {' '.join(parts)!r}"
        ) from None


def run_synthetic(args: argparse.Namespace) -> int:
    from fastseg.datasets.synthetic import SyntheticConfig, write_synthetic_dataset

    try:
        config = SyntheticConfig(
            num_cases=args.cases,
            num_test_cases=args.test_cases,
            seed=args.seed,
            shape=_shape(args.shape),
            two_d=args.two_d,
            ct=args.ct,
            num_channels=args.channels,
            regions=args.regions,
            ignore_label=args.ignore_label,
            file_ending=args.file_ending,
            name=args.name or "Synthetic",
        )
        report = write_synthetic_dataset(
            args.output, config, num_processes=args.num_processes, overwrite=args.overwrite
        )
    except (ValueError, OSError) as e:
        return _fail("synthetic", e)
    print(report.format())
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-j", "--num-processes", type=int, default=None, metavar="N", help="worker processes (default: all CPUs)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "convert",
        help="make an nnU-Net v2 raw dataset from MedSAM .npz, a DICOM series, or synthetic data",
        description="Writes raw datasets in nnU-Net v2 layout (verified before they appear) or converts a DICOM series to NIfTI.",
        epilog=(
            "Examples:\n"
            "  fastseg convert synthetic -o nnUNet_raw/Dataset900_Synth --cases 20 --ct\n"
            "  fastseg convert dicom SERIES_DIR -o image.nii.gz\n"
            "Run `fastseg convert SOURCE --help` for each source's options."
        ),
        formatter_class=fmt,
    )
    kinds = p.add_subparsers(dest="source", metavar="SOURCE", required=True)

    m = kinds.add_parser(
        "medsam",
        help="MedSAM-style .npz files (imgs, gts, spacing) -> raw dataset",
        description=(
            "Converts .npz files holding imgs (3D (D,H,W), 2D (H,W,3) or (H,W)), gts and optional spacing (x,y,z) into "
            "a raw dataset: 3D as .nii.gz, 2D as .png. Label ids are mapped to consecutive values named label_<id>."
        ),
        epilog="Examples:\n  fastseg convert medsam npz/CT_Abd -o nnUNet_raw/Dataset501_AbdCT\n"
        "  fastseg convert medsam a.npz b.npz -o out/Dataset502_Two --name TwoCases",
        formatter_class=fmt,
    )
    m.add_argument("inputs", nargs="+", metavar="NPZ_DIR_OR_FILES", help=".npz files or folders (searched recursively)")
    m.add_argument("-o", "--output", required=True, metavar="RAW_DIR", help="dataset folder to create")
    m.add_argument("--name", default=None, help="dataset.json name (default: the folder name)")
    m.add_argument("--channel-name", default=None, help="channel name of 3D/grayscale cases (default: image)")
    m.add_argument(
        "--spacing-order", choices=("xyz", "zyx"), default="xyz", help="order of 'spacing' in the files (default: xyz)"
    )
    m.add_argument("--file-ending", default=None, help="default .nii.gz (3D) / .png (2D)")
    _common(m)
    m.set_defaults(func=run_medsam)

    d = kinds.add_parser(
        "dicom",
        help="a DICOM series folder -> one .nii.gz",
        description="Reads the DICOM series in a folder (GDCM via SimpleITK), checks its slice spacing, writes it and reads it back.",
        epilog="Examples:\n  fastseg convert dicom patient1/CT -o patient1_0000.nii.gz\n"
        "  fastseg convert dicom study/ -o ct.nii.gz --series-uid 1.2.840.113619.2.55.3",
        formatter_class=fmt,
    )
    d.add_argument("series_dir", metavar="SERIES_DIR", help="folder holding the series' files")
    d.add_argument(
        "-o", "--output", required=True, metavar="OUT.nii.gz", help="output image (.nii.gz, .nii, .nrrd, .mha)"
    )
    d.add_argument("--series-uid", default=None, help="the series to convert when the folder holds several")
    d.add_argument("--allow-irregular", action="store_true", help="write even when slice positions are unevenly spaced")
    d.set_defaults(func=run_dicom)

    s = kinds.add_parser(
        "synthetic",
        help="generate a synthetic raw dataset (organ-like structures, CT- or MR-like)",
        description=(
            "Generates seeded, deterministic cases: nested and touching organ-like structures (labels organ, lesion, "
            "neighbour, tube), anisotropic spacing, bias field and noise; optionally CT-like (HU with a field of "
            "view to crop), several MR channels, region labels, an ignore label, or 2D PNGs."
        ),
        epilog="Examples:\n  fastseg convert synthetic -o nnUNet_raw/Dataset900_Synth --cases 20 --ct --shape 100 256 256\n"
        "  fastseg convert synthetic -o Dataset901_Synth2D --2d --cases 50\n"
        "  fastseg convert synthetic -o Dataset902_BraTSlike --channels 4 --regions",
        formatter_class=fmt,
    )
    s.add_argument("-o", "--output", required=True, metavar="RAW_DIR", help="dataset folder to create")
    s.add_argument("--cases", type=int, default=10, help="training cases (default 10)")
    s.add_argument("--test-cases", type=int, default=0, help="cases for imagesTs/labelsTs (default 0)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument(
        "--shape",
        nargs="+",
        default=None,
        metavar="N",
        help="Z Y X (default 64 128 128), or Y X with --2d (default 256 256)",
    )
    s.add_argument("--2d", dest="two_d", action="store_true", help="2D cases (PNG by default)")
    s.add_argument("--ct", action="store_true", help="CT-like intensities (channel 0 named CT)")
    s.add_argument("--channels", type=int, default=1, help="image channels (default 1)")
    s.add_argument("--regions", action="store_true", help="declare region labels (nnU-Net region-based training)")
    s.add_argument("--ignore-label", action="store_true", help="add an ignore label for unannotated voxels")
    s.add_argument("--file-ending", default=None, help="default .nii.gz (3D) / .png (2D)")
    s.add_argument("--name", default=None, help="dataset.json name (default Synthetic)")
    _common(s)
    s.set_defaults(func=run_synthetic)
