"""nnU-Net's `nnUNetv2_predict_from_modelfolder`, run as its command runs it, with a stage clock.

    python -m fastseg.benchmark.nnunet_predict --timings FILE --threads T -- -i IN -o OUT -m MODEL -f 0 \
        -step_size 0.5 -npp 2 -nps 2 [--disable_tta] [-chk checkpoint_final.pth]

This does what nnU-Net's entry point does for `-device cpu` (an `nnUNetPredictor` with the Gaussian,
mirroring unless `--disable_tta`, `predict_from_files` with its preprocessing and export worker
pools), with two differences:
- torch runs `--threads` threads (the entry point takes every core), so that both tools of a
  benchmark can be pinned to the same count;
- three of nnU-Net's functions are wrapped to add up their time per stage, wherever they run:
  preprocessing (`DefaultPreprocessor.run_case`, reading included: in the preprocessing workers),
  the network (`nnUNetPredictor.predict_logits_from_preprocessed_data`: in this process) and export
  (`export_prediction_from_logits`, writing included: in the export workers). nnU-Net starts its
  workers with "spawn", which imports this module again in each of them (as `__mp_main__`), so the
  wrappers are installed there too; each process appends "stage seconds" lines to the timings file.

Nothing else of nnU-Net is changed. Needs nnunetv2 (`pip install nnunetv2`).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time


def _timings_file(argv: list[str]) -> str | None:
    """The --timings value (read from argv: spawned workers see the parent's argv)."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "--timings":
            return argv[i + 1]
    return None


def _record(path: str, stage: str, seconds: float) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{stage} {seconds:.6f}\n")


def _timed(path: str, stage: str, fn):
    @functools.wraps(fn)  # keeps __module__ and __qualname__: the worker pools pickle it by name
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _record(path, stage, time.perf_counter() - t)

    return wrapper


def _install_clock(path: str) -> None:
    from nnunetv2.inference import export_prediction, predict_from_raw_data
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    DefaultPreprocessor.run_case = _timed(path, "preprocess", DefaultPreprocessor.run_case)
    export = _timed(path, "export", export_prediction.export_prediction_from_logits)
    export_prediction.export_prediction_from_logits = export
    predict_from_raw_data.export_prediction_from_logits = export
    cls = predict_from_raw_data.nnUNetPredictor
    cls.predict_logits_from_preprocessed_data = _timed(path, "network", cls.predict_logits_from_preprocessed_data)


_TIMINGS = _timings_file(sys.argv)
if _TIMINGS is not None:
    _install_clock(_TIMINGS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timings", required=True, help="file the stage times are appended to")
    parser.add_argument("--threads", type=int, required=True, help="torch threads")
    parser.add_argument("-i", required=True)
    parser.add_argument("-o", required=True)
    parser.add_argument("-m", required=True)
    parser.add_argument("-f", nargs="+", default=["0"])
    parser.add_argument("-step_size", type=float, default=0.5)
    parser.add_argument("--disable_tta", action="store_true")
    parser.add_argument("-chk", default="checkpoint_final.pth")
    parser.add_argument("-npp", type=int, default=3)
    parser.add_argument("-nps", type=int, default=3)
    args = parser.parse_args([a for a in (argv if argv is not None else sys.argv[1:]) if a != "--"])

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(args.threads)
    predictor = nnUNetPredictor(
        tile_step_size=args.step_size,
        use_gaussian=True,
        use_mirroring=not args.disable_tta,
        perform_everything_on_device=True,
        device=torch.device("cpu"),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    folds = [f if f == "all" else int(f) for f in args.f]
    predictor.initialize_from_trained_model_folder(args.m, folds, args.chk)
    predictor.predict_from_files(
        args.i, args.o, save_probabilities=False, overwrite=True, num_processes_preprocessing=args.npp,
        num_processes_segmentation_export=args.nps, folder_with_segs_from_prev_stage=None, num_parts=1, part_id=0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
