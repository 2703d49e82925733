"""`fastseg predict`: segment images with a trained nnU-Net v2 or fastseg model folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fastseg.commands.plan import add_model_options, dataset_model_folder, positive_int, reports_errors
from fastseg.commands.predict_slide import add_slide_options, run_slides, slide_inputs
from fastseg.commands.ray_cluster import add_ray_options
from fastseg.predict.precision import PRECISIONS

logger = logging.getLogger(__name__)


def _fold(text: str) -> str:
    if text == "all" or text.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"a fold is a number (0-4) or 'all', got {text!r}")


def _step(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"the step size must be in (0, 1], got {value}")
    return value


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of gigabytes, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the memory budget must be positive, got {value}")
    return value


def _outputs(cases, output: Path, file_ending: str) -> list[Path]:
    from fastseg.io.formats import split_ending

    from fastseg.io.tiff_stream import OME_TIFF_ENDINGS

    ome = output.name.lower().endswith(OME_TIFF_ENDINGS)  # a tiled OME-TIFF, streamed in slabs
    if (ome or split_ending(output)[1].lower() == file_ending.lower()) and not output.is_dir():
        if len(cases) != 1:
            raise ValueError(f"-o {output} is a file, but the input holds {len(cases)} cases; give a folder")
        return [output]
    return [output / f"{c.identifier}{file_ending}" for c in cases]


def _copy_model_files(model, folder: Path) -> None:
    """dataset.json and plans.json beside the predictions, as nnU-Net leaves them (`fastseg ensemble`
    and nnU-Net's ensembling and postprocessing read them there); rewritten only when they differ."""
    import json

    from fastseg.io.atomic import write_json_atomic

    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (("dataset.json", model.dataset_json), ("plans.json", model.plans)):
        target = folder / name
        try:
            if json.loads(target.read_text()) == content:
                continue
        except (OSError, ValueError):
            pass
        write_json_atomic(content, target)


def _cases_and_outputs(args: argparse.Namespace, model) -> tuple[list, list[Path], dict]:
    """The input cases (problems printed), their output files, and dataset.json / plans.json copied
    beside them when the output is a folder: (cases, outputs, problems)."""
    from fastseg.predict.inputs import find_cases

    ending = model.dataset_json.get("file_ending", ".nii.gz")
    cases, problems = find_cases(args.input, model.num_input_channels, ending)
    for name, problem in problems.items():
        print(f"error: {name}: {problem}", file=sys.stderr)
    outputs = _outputs(cases, Path(args.output), ending)
    if outputs and outputs[0].parent == Path(args.output):
        _copy_model_files(model, Path(args.output))
    return cases, outputs, problems


@reports_errors
def run(args: argparse.Namespace) -> int:
    from fastseg.predict.model import ModelFolderError
    from fastseg.predict.predictor import Predictor

    folds = None if args.folds == ["auto"] else args.folds
    if args.ray is not None:
        from fastseg.commands.ray_cluster import predict_on_ray

        return predict_on_ray(args, dataset_model_folder(args, args.model, "-m MODEL_DIR"), folds, _cases_and_outputs)
    from fastseg.runtime.teardown import skip_teardown

    skip_teardown()  # files are written atomically and closed when it applies (fastseg.runtime.teardown)
    if args.device == "cpu":
        from fastseg.runtime.heap import retain_freed_memory

        retain_freed_memory()  # the forward passes reuse their buffers instead of mapping them anew
    try:
        predictor = Predictor.from_model_folder(
            dataset_model_folder(args, args.model, "-m MODEL_DIR"),
            folds,
            args.device,
            checkpoint=args.checkpoint,
            step_size=args.step_size,
            tta=not args.no_tta,
            batch_size=args.batch_size,
            threads=args.threads,
            postprocessing=args.postprocessing,
            compile=args.compile,
            memory_budget_gb=args.memory_budget_gb,
            precision=args.precision,
        )
    except ModelFolderError as err:
        raise ValueError(str(err)) from None
    model = predictor.model
    slides = slide_inputs(args.input, args.slide)
    if slides:  # whole-slide images: streamed tile by tile into pyramidal label TIFFs
        return run_slides(args, predictor, slides)
    cases, outputs, problems = _cases_and_outputs(args, model)
    print(
        f"{len(cases)} case(s), model {model.path.name} ({model.configuration}, folds "
        f"{', '.join(p.parent.name for p in model.checkpoints)}, {model.trainer_name}), device {args.device} ({predictor.precision}), "
        f"TTA {'over axes ' + str(predictor.mirror_axes) if predictor.mirror_axes else 'off'}"
    )
    if args.device == "cpu":
        import SimpleITK  # noqa: F401  (the readers' library, loaded before its start-up pages go)

        from fastseg.runtime.pages import release_file_pages

        release_file_pages()  # the start-up pages of torch's CUDA libraries and others (fastseg.runtime.pages)
    report = predictor.predict_cases(
        cases, outputs, save_probabilities=args.save_probabilities, skip_existing=args.continue_
    )
    s = report.seconds
    print(
        f"{len(report.written)} written, {len(report.skipped)} already there, {len(report.failed) + len(problems)} failed; "
        f"time: read+preprocess {s['read']:.2f} s, network {s['network']:.2f} s, export+write {s['write']:.2f} s, "
        f"total {s['total']:.2f} s"
    )
    for identifier, error in report.failed.items():
        print(f"error: case {identifier}: {error}", file=sys.stderr)
    return 1 if report.failed or problems else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images with a trained nnU-Net v2 or fastseg model folder",
        description=(
            "Segments images with a model folder in nnU-Net v2's layout (<trainer>__<plans>__<configuration>/ with "
            "plans.json, dataset.json and fold_<k>/checkpoint_final.pth), trained by nnU-Net (any trainer class) or "
            "fastseg: the network is built from plans.json. Each case is preprocessed as the plans say, predicted "
            "with a Gaussian-weighted sliding window and mirror test-time augmentation, resampled back and written "
            "with the input's geometry. A case that cannot be read is reported and skipped; the exit status is 1 "
            "when any case failed. With -d ID -c CONFIG the model folder is the one nnU-Net's commands use, "
            "$nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg predict -m results/Dataset001_Heart/nnUNetTrainer__nnUNetPlans__3d_fullres -i imagesTs -o pred\n"
            "  fastseg predict -m MODEL -i imagesTs -o pred -f 0 1 2 3 4 --save-probabilities\n"
            "  fastseg predict -d 1 -c 3d_fullres -i imagesTs -o pred      (nnUNet_results set)\n"
            "  fastseg predict -m MODEL -i case_0000.nii.gz -o case.nii.gz --no-tta --step-size 0.75\n"
            "  fastseg predict -m MODEL -i big_ct -o pred --memory-budget-gb 4      (slabs when a case needs more)\n"
            "  fastseg predict -m MODEL -i ct_0000.nii.gz -o ct.ome.tif      (a tiled OME-TIFF, streamed in slabs)\n"
            "  fastseg predict -m MODEL -i /shared/imagesTs -o /shared/pred --ray auto      (a Ray cluster)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-m", "--model", default=None, metavar="MODEL_DIR", help="trained model folder")
    add_model_options(p, "-m MODEL_DIR")
    p.add_argument("-i", "--input", required=True, nargs="+", metavar="INPUT", help="a folder (case_0000.nii.gz ... per channel) or files")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output folder (created), or a file for a single case (.ome.tif: a tiled OME-TIFF of a 3D case, streamed)")
    p.add_argument("-f", "--folds", nargs="+", type=_fold, default=["0"], metavar="FOLD",
                   help="folds to ensemble, numbers or 'all' (default: 0); their logits are averaged")
    p.add_argument("--checkpoint", default="final", metavar="final|best|PATH", help="checkpoint to load (default: final)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the network runs (default: cpu)")
    p.add_argument("--no-tta", action="store_true", help="turn mirror test-time augmentation off (faster, slightly less accurate)")
    p.add_argument("--step-size", type=_step, default=0.5, metavar="S", help="sliding-window step as a fraction of the patch (default: 0.5)")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="B", help="network inputs per forward pass (default: chosen from the free memory, whole tiles with their mirrored copies)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="CPU threads for the network and the native kernels (default: all cores)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network: compiling takes about half a minute, each tile is then faster")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the network's arithmetic: auto (default: bf16 autocast on CPUs with AMX tiles, where it is "
                        "2-2.5x faster per forward pass, fp32 elsewhere), fp32 (as nnU-Net on the CPU) or bf16")
    p.add_argument("--save-probabilities", action="store_true", help="also write nnU-Net's .npz (probabilities) and .pkl beside each output")
    p.add_argument("--postprocessing", default=None, metavar="FILE", help="apply nnU-Net's postprocessing.pkl (or fastseg's .json) to the outputs")
    p.add_argument("--continue", dest="continue_", action="store_true",
                   help="skip cases whose output exists; a streamed case resumes from its last finished slab")
    p.add_argument("--memory-budget-gb", type=_budget, default=None, metavar="G",
                   help="gigabytes a 3D case's arrays may take (the network and torch not counted): a case that "
                        "needs more is predicted in slabs along z and written as it goes (NIfTI output); default: "
                        "cases needing more than half the free memory are streamed")
    add_ray_options(p, cpus_per_worker=4)
    add_slide_options(p)
    p.set_defaults(func=run)
