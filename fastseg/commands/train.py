"""`fastseg train`: one fold of a preprocessed configuration, with nnU-Net's recipe."""

from __future__ import annotations

import argparse
import dataclasses
import os

from fastseg.commands.plan import add_dataset_option, folder_or_dataset, nnunet_dataset, positive_int, reports_errors
from fastseg.predict.precision import PRECISIONS


def _fold(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fold is 0-4 (nnU-Net's splits) or 'all', got {text!r}") from None


def _nnunet_format_only(work_dir: str, configuration: str) -> str | None:
    """What to say when the configuration's data folder holds nnU-Net's format instead of fastseg's."""
    import json
    from pathlib import Path

    from fastseg.plan.plans import resolve_configuration
    from fastseg.preprocess.nnunet_format import fastseg_case_file, nnunet_case_file

    try:
        plans = json.loads((Path(work_dir) / "plans.json").read_text(encoding="utf-8"))
        folder = Path(work_dir) / resolve_configuration(plans, configuration)["data_identifier"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    found = nnunet_case_file(folder)
    if found is None or fastseg_case_file(folder) is not None:
        return None
    return (f"{configuration} is preprocessed in nnU-Net's format only ({folder} holds {found.name}): nnUNetv2_train "
            "trains on that. fastseg trains on its own format: plan into a work folder of its own (fastseg plan "
            "RAW_DATASET_DIR -o WORK_DIR) and run fastseg preprocess WORK_DIR")


@reports_errors
def run(args: argparse.Namespace) -> int:
    from fastseg.datasets.nnunet_paths import PREPROCESSED, RESULTS
    from fastseg.train.trainer import Distributed, TrainConfig, TrainingError, train

    work_dir = folder_or_dataset(args, args.work_dir, "WORK_DIR", PREPROCESSED)
    dataset = nnunet_dataset(args)
    results = str(dataset.require(RESULTS)) if dataset is not None else None  # where nnU-Net keeps its models
    config = dataclasses.replace(
        TrainConfig(), device=args.device, results_dir=results, workers=args.workers, compile=args.compile, seed=args.seed,
        cpu_precision=args.cpu_precision, save_probabilities=args.npz, final_validation=not args.no_final_validation,
        **{k: v for k, v in (("epochs", args.epochs), ("iterations_per_epoch", args.iterations_per_epoch),
                             ("val_iterations", args.val_iterations), ("save_every", args.save_every)) if v is not None},
    )
    env = os.environ
    distributed = Distributed(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
    try:
        fold_folder = train(work_dir, args.configuration, args.fold, config, resume=args.resume,
                            pretrained_weights=args.pretrained_weights, distributed=distributed)
    except TrainingError as err:
        raise ValueError(_nnunet_format_only(work_dir, args.configuration) or str(err)) from None
    if distributed.rank == 0:
        print(f"trained {args.configuration} fold {args.fold}: {fold_folder}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one fold of a preprocessed configuration (nnU-Net's recipe, DALI data pipeline)",
        description=(
            "Trains a configuration's network (from plans.json) on one fold of nnU-Net's 5-fold split "
            "(WORK_DIR/splits_final.json, written with nnU-Net's rule if missing) with nnU-Net's recipe: Dice + "
            "cross-entropy (BCE for regions) with deep supervision, SGD with Nesterov momentum, poly learning rate, "
            "gradient clipping, AMP on CUDA. Batches come from fastseg's DALI pipeline (nnU-Net's sampling and "
            "augmentations). The model folder WORK_DIR/results/nnUNetTrainer__<plans>__<configuration>/ is in "
            "nnU-Net's format: nnUNetv2_predict and fastseg predict both run it. Checkpoints are written atomically; "
            "--resume continues exactly from checkpoint_latest.pth. Under torchrun each process trains on its share "
            "of the batch (DDP). With -d ID, WORK_DIR is $nnUNet_preprocessed/DatasetXXX_Name and the model folder "
            "goes where nnU-Net puts it: $nnUNet_results/DatasetXXX_Name/nnUNetTrainer__<plans>__<configuration>/."
        ),
        epilog=(
            "Examples:\n"
            "  fastseg train work/Dataset001 -c 3d_fullres -f 0\n"
            "  fastseg train work/Dataset001 -c 2d -f all --epochs 100 --device cuda\n"
            "  fastseg train work/Dataset001 -c 3d_fullres -f 0 --resume\n"
            "  fastseg train -d 1 -c 3d_fullres -f 0      (nnUNet_preprocessed and nnUNet_results set)\n"
            "  torchrun --nproc_per_node 2 -m fastseg.cli train work/Dataset001 -c 3d_fullres -f 0 --device cuda"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("work_dir", nargs="?", default=None, metavar="WORK_DIR", help="work folder of fastseg plan/preprocess")
    add_dataset_option(p, "WORK_DIR")
    p.add_argument("-c", "--configuration", required=True, metavar="CONFIG", help="a preprocessed configuration")
    p.add_argument("-f", "--fold", required=True, type=_fold, metavar="FOLD", help="0-4 or all")
    p.add_argument("--epochs", type=positive_int, default=None, metavar="N", help="epochs (default: 1000)")
    p.add_argument("--iterations-per-epoch", type=positive_int, default=None, metavar="N", help="training iterations per epoch (default: 250)")
    p.add_argument("--val-iterations", type=int, default=None, metavar="N", help="validation iterations per epoch (default: 50)")
    p.add_argument("--save-every", type=positive_int, default=None, metavar="N", help="write checkpoint_latest.pth every N epochs (default: 50)")
    p.add_argument("--device", default="cpu", metavar="DEVICE", help="cpu or cuda (default: cpu)")
    p.add_argument("--workers", type=positive_int, default=2, metavar="W", help="data pipeline threads / reader processes (default: 2)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the batches and the initial weights (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue from the fold's checkpoint_latest.pth, or from its checkpoint_final.pth (nnU-Net's or fastseg's) when --epochs asks for more")
    p.add_argument("--pretrained-weights", default=None, metavar="CKPT", help="start from an nnU-Net or fastseg checkpoint's weights")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile the network (default: on; on the CPU in channels-last layout; the first iterations "
                        "of a run wait for the compiler, so --no-compile suits runs of a few iterations)")
    p.add_argument("--cpu-precision", choices=PRECISIONS, default="auto",
                   help="the network's arithmetic on the CPU: auto (default: bf16 autocast on CPUs with AMX tiles, "
                        "where it is several times faster, fp32 elsewhere), fp32 (as nnU-Net) or bf16")
    p.add_argument("--npz", action="store_true", help="save the final validation's probabilities (for ensembles, find-best)")
    p.add_argument("--no-final-validation", action="store_true", help="skip predicting the validation cases at the end")
    p.set_defaults(func=run)
