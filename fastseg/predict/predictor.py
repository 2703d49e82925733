"""`Predictor`: a trained model folder applied to images, as a pipeline of stages.

    read + preprocess (a thread)  ->  network (this thread)  ->  export + write (a thread)

Each stage is a plain function (`fastseg.preprocess.case.preprocess_case`,
`fastseg.predict.sliding.predict_logits`, `fastseg.predict.export.export_case`) and the stages
are joined by queues of one case, so the next case is read and preprocessed while the network runs
on the current one and the previous one is exported and written, with at most three cases in
memory whatever their number. The native kernels and torch release the GIL, so the threads run in
parallel. Every file is written atomically; a case that cannot be read is reported and skipped.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastseg.io.atomic import atomic_path
from fastseg.predict.export import export_case
from fastseg.predict.inputs import InputCase
from fastseg.predict.lean import LeanUNet, lean_forward_applies
from fastseg.predict.model import ModelFolder, load_model_folder, load_networks
from fastseg.predict.sliding import mirror_combinations, predict_logits
from fastseg.preprocess.caseplan import CasePlan

logger = logging.getLogger(__name__)

#: Bytes a 2d configuration's case streamed by default may take (`Predictor._slabs_by_default`);
#: raised to the minimum where one slab needs more.
SLAB_BUDGET_2D = 64 * 2**20


@dataclass
class PredictionReport:
    """What `Predictor.predict_cases` did.

    Attributes:
        written: output files written.
        skipped: cases whose output already existed (`skip_existing`).
        failed: case identifier -> error message.
        seconds: wall time per stage summed over cases ("read", "network", "write") and "total".
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "network": 0.0, "write": 0.0, "total": 0.0})


def _split_stages(report: PredictionReport, seconds: Mapping[str, float]) -> None:
    """Moves a streamed case's reading and writing time (`stream_case`'s "seconds") out of the
    network stage, to which the whole streamed call is first counted."""
    for stage in ("read", "write"):
        report.seconds[stage] += seconds[stage]
        report.seconds["network"] -= seconds[stage]


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's threads and this thread's native kernel threads set to `n` for the block (None: unchanged)."""
    import torch

    from fastseg.threads import num_threads

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with num_threads(n):
            yield
    finally:
        torch.set_num_threads(old)


class Predictor:
    """A model folder's networks, ready to predict.

    Build it with `Predictor.from_model_folder`; then `predict_array` for an image in memory,
    `predict_file` for one case's files, `predict_cases` for many.
    """

    def __init__(
        self,
        model: ModelFolder,
        *,
        device: str = "cpu",
        step_size: float = 0.5,
        tta: bool = True,
        batch_size: int | None = None,
        threads: int | None = None,
        postprocessing: Sequence[dict] = (),
        compile: bool = False,
        memory_budget_gb: float | None = None,
        precision: str = "auto",
    ) -> None:
        import torch

        from fastseg.predict.precision import AutocastNetwork, resolve_precision

        if not 0 < step_size <= 1:
            raise ValueError(f"step_size must be in (0, 1], got {step_size}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if memory_budget_gb is not None and not memory_budget_gb > 0:
            raise ValueError(f"memory_budget_gb must be positive, got {memory_budget_gb}")
        self.memory_budget = None if memory_budget_gb is None else int(memory_budget_gb * 2**30)
        self.model = model
        self.device = torch.device(device)
        self.step_size = step_size
        self.mirror_axes = model.mirror_axes if tta else ()
        copies = 1 + len(mirror_combinations(self.mirror_axes))
        self.threads = threads
        self.postprocessing = list(postprocessing)
        self.case_plan = CasePlan.from_plans(model.plans, model.configuration, model.dataset_json)
        self.patch_size = tuple(int(p) for p in model.config["patch_size"])
        self.precision = resolve_precision(precision, self.device)
        self.networks = load_networks(model, self.device)
        self.batch_size = batch_size or self._default_batch_size(copies)
        if compile:  # compiled at the first forward pass (tens of seconds), faster after that
            self.networks = [torch.compile(net) for net in self.networks]
        else:  # the same outputs with fewer activations held at once (fastseg.predict.lean)
            self.networks = [LeanUNet(net) if lean_forward_applies(net) else net for net in self.networks]
        if self.precision == "bf16":
            self.networks = [AutocastNetwork(net, self.device) for net in self.networks]

    @classmethod
    def from_model_folder(
        cls,
        path: str | Path,
        folds: Sequence[int | str] | None = (0,),
        device: str = "cpu",
        *,
        checkpoint: str = "final",
        step_size: float = 0.5,
        tta: bool = True,
        batch_size: int | None = None,
        threads: int | None = None,
        postprocessing: str | Path | None = None,
        compile: bool = False,
        memory_budget_gb: float | None = None,
        precision: str = "auto",
    ) -> Predictor:
        """Loads an nnU-Net v2 or fastseg model folder.

        Args:
            path: the model folder (`<trainer>__<plans>__<configuration>/`).
            folds: folds to ensemble (their logits are averaged); None: every fold with the checkpoint.
            device: "cpu" or "cuda" (default "cpu").
            checkpoint: "final" (default), "best", or a checkpoint file.
            step_size: sliding-window step as a fraction of the patch size (default 0.5).
            tta: mirror test-time augmentation over the checkpoint's allowed axes (default True).
            batch_size: network inputs per forward pass (default: chosen from the free memory where
                the network runs, whole tiles with their mirrored copies; `fastseg.predict.batching`).
            threads: CPU threads of the network (torch) and of the native kernels in every stage
                (default: torch's and OpenMP's settings, all cores).
            postprocessing: nnU-Net's postprocessing.pkl or fastseg's .json, applied to every label map.
            compile: `torch.compile` the networks (default False): the first forward pass compiles
                (about half a minute on a 2-core CPU), later ones run about 13 % faster there; pays
                off over many tiles or cases.
            memory_budget_gb: gigabytes (GiB) a 3D case's arrays may take, the network and torch
                not counted; a case that would need more is predicted in slabs along z
                (`fastseg.predict.streaming`). None (default): cases that would need more than half
                the free memory are streamed within that half.
            precision: "auto" (default: bf16 autocast on a CPU with AMX tiles, fp32 elsewhere),
                "fp32" or "bf16" (`fastseg.predict.precision`).
        """
        from fastseg.predict.postprocess import load_postprocessing

        steps = load_postprocessing(postprocessing) if postprocessing is not None else ()
        model = load_model_folder(path, folds, checkpoint)
        return cls(
            model, device=device, step_size=step_size, tta=tta, batch_size=batch_size, threads=threads,
            postprocessing=steps, compile=compile, memory_budget_gb=memory_budget_gb, precision=precision,
        )

    def _default_batch_size(self, copies: int) -> int:
        """`fastseg.predict.batching`'s choice for this device and its free memory."""
        from fastseg.predict import batching
        from fastseg.runtime.workers import available_memory

        channels = self.model.num_input_channels
        if self.device.type == "cuda":
            return batching.cuda_batch_size(self.networks[0], self.patch_size, channels, copies, self.device)
        return batching.cpu_batch_size(self.model.config, channels, copies, available_memory())

    # --- stages ---------------------------------------------------------------------------------

    def preprocess(self, data: np.ndarray, properties: Mapping[str, Any]) -> tuple[np.ndarray, dict]:
        """Crop, normalize and resample one image (C, z, y, x) as the plans say."""
        from fastseg.preprocess.case import preprocess_case

        expected = self.model.num_input_channels
        if data.ndim != 4 or data.shape[0] != expected:
            raise ValueError(f"the model takes {expected} channel(s) as (C, z, y, x), got an image of shape {data.shape}")
        out, _, props = preprocess_case(data, None, properties, self.case_plan)
        return out, props

    def logits(self, data: np.ndarray, on_tiles=None) -> tuple[np.ndarray, np.ndarray]:
        """Sliding window over a preprocessed image: (accumulator, weights)."""
        with _torch_threads(self.threads):
            return predict_logits(
                self.networks,
                data,
                self.patch_size,
                self.model.num_outputs,
                mirror_axes=self.mirror_axes,
                step_size=self.step_size,
                batch_size=self.batch_size,
                device=self.device,
                on_tiles=on_tiles,
            )

    def export(self, accumulator, weights, properties, return_probabilities: bool = False):
        """Labels (postprocessed, when steps were given) and optionally probabilities on the input's grid."""
        from fastseg.predict.postprocess import apply_postprocessing

        result = export_case(accumulator, weights, properties, self.model, return_probabilities)
        if not self.postprocessing:
            return result
        if return_probabilities:
            return apply_postprocessing(result[0], self.postprocessing), result[1]
        return apply_postprocessing(result, self.postprocessing)

    # --- whole cases ------------------------------------------------------------------------------

    def predict_array(
        self, data: np.ndarray, properties: Mapping[str, Any], return_probabilities: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segments an image held in memory.

        Args:
            data: (C, z, y, x) image as `fastseg.io.read_images` returns it (2D images (C, 1, y, x)).
            properties: its properties; needs "spacing" (z, y, x).
            return_probabilities: also return (C, *spatial) float32 probabilities.

        Returns:
            The label map (z, y, x) on the input's grid (uint8, uint16 for many labels), and with
            `return_probabilities` the probabilities too.
        """
        pre, props = self.preprocess(np.asarray(data), properties)
        acc, weights = self.logits(pre)
        return self.export(acc, weights, props, return_probabilities)

    def predict_file(self, inputs: Sequence[str | Path] | str | Path, output: str | Path, save_probabilities: bool = False) -> Path:
        """Segments one case (its channel files, in order) into `output` (its ending picks the format)."""
        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        case = InputCase(Path(output).name, [Path(p) for p in inputs])
        report = self.predict_cases([case], [Path(output)], save_probabilities=save_probabilities)
        if report.failed:
            raise ValueError(next(iter(report.failed.values())))
        return report.written[0]

    def predict_cases(
        self,
        cases: Sequence[InputCase],
        outputs: Sequence[Path],
        *,
        save_probabilities: bool = False,
        skip_existing: bool = False,
        progress: bool | None = None,
        _slabs: bool = True,
    ) -> PredictionReport:
        """Segments many cases through the three-stage pipeline.

        Args:
            cases: the cases (identifier and channel files).
            outputs: the output file per case (its ending picks the format).
            save_probabilities: also write nnU-Net's `<output stem>.npz` (probabilities) and `.pkl`
                (properties) beside each output.
            skip_existing: leave cases whose output exists alone (`--continue`).
            progress: a progress bar over cases; None: only when stderr is a terminal.

        Returns:
            A PredictionReport; a case that failed is in `failed` with its error, the others are written.
        """
        import sys

        from tqdm import tqdm

        from fastseg import io as fio

        if len(cases) != len(outputs):
            raise ValueError(f"need one output per case, got {len(outputs)} outputs for {len(cases)} cases")
        report = PredictionReport()
        todo = []
        for case, out in zip(cases, outputs):
            if skip_existing and out.is_file():
                report.skipped.append(case.identifier)
            else:
                todo.append((case, out))
        from fastseg.io.atomic import remove_abandoned_temporaries

        todo, streamed = self._split_streamed(todo, save_probabilities) if _slabs else (todo, [])
        for folder in dict.fromkeys(out.parent for out in outputs):
            folder.mkdir(parents=True, exist_ok=True)
            removed = remove_abandoned_temporaries(folder)
            if removed:
                logger.info("removed %d temporary file(s) an interrupted run left in %s", removed, folder)
        start = time.perf_counter()
        loaded: queue.Queue = queue.Queue(maxsize=1)
        predicted: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()
        lock = threading.Lock()

        def fail(case: InputCase, err: BaseException) -> None:
            with lock:
                report.failed[case.identifier] = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
            logger.error("case %s: %s", case.identifier, report.failed[case.identifier])

        handed: set[str] = set()

        def read() -> None:
            try:
                self._pin_kernel_threads()
                for case, out in todo:
                    if stop.is_set():
                        break
                    t = time.perf_counter()
                    try:
                        data, props = fio.read_images(case.images)
                        pre, pprops = self.preprocess(data, props)
                    except Exception as err:  # noqa: BLE001 -- reported per case, the others go on
                        fail(case, err)
                        continue
                    finally:
                        with lock:
                            report.seconds["read"] += time.perf_counter() - t
                    loaded.put((case, out, pre, pprops))
                    handed.add(case.identifier)
            except BaseException as err:  # the stage itself broke: every case not handed on fails with its error
                for case, _ in todo:
                    if case.identifier not in report.failed and case.identifier not in handed:
                        fail(case, err)
            finally:
                loaded.put(None)  # the network stage always learns that reading is over

        def write() -> None:
            broken = None
            try:
                self._pin_kernel_threads()
            except BaseException as err:  # noqa: BLE001 -- every case then fails with it; the queue keeps draining
                broken = err
            while True:
                item = predicted.get()
                if item is None:
                    return
                case, out, acc, weights, props = item
                t = time.perf_counter()
                try:
                    if broken is not None:
                        raise broken
                    self._write(out, acc, weights, props, save_probabilities)
                    with lock:
                        report.written.append(out)
                except Exception as err:  # noqa: BLE001
                    fail(case, err)
                finally:
                    with lock:
                        report.seconds["write"] += time.perf_counter() - t
                    bar.update()

        disable = not sys.stderr.isatty() if progress is None else not progress
        with tqdm(total=len(todo), desc="Predicting", unit="case", disable=disable) as bar:
            reader = threading.Thread(target=read, name="read", daemon=True)
            writer = threading.Thread(target=write, name="write", daemon=True)
            reader.start()
            writer.start()
            try:
                while True:
                    item = loaded.get()
                    if item is None:
                        break
                    case, out, pre, props = item
                    t = time.perf_counter()
                    try:
                        acc, weights = self.logits(pre)
                    except Exception as err:  # noqa: BLE001
                        fail(case, err)
                        bar.update()
                        continue
                    finally:
                        report.seconds["network"] += time.perf_counter() - t
                    del pre
                    predicted.put((case, out, acc, weights, props))
            finally:
                stop.set()
                with contextlib.suppress(queue.Empty):
                    while True:  # unblock the reader if it waits to hand over a case
                        loaded.get_nowait()
                predicted.put(None)
                writer.join()
                reader.join()
        for case, out, budget, by_default in streamed:
            if by_default:
                self._stream_2d(case, out, budget, report, resume=skip_existing, progress=progress)
            else:
                self._stream(case, out, budget, report, resume=skip_existing, progress=progress,
                             save_probabilities=save_probabilities)
        failed_first = {k: report.failed[k] for k in sorted(report.failed)}
        report.failed = failed_first
        report.seconds["total"] = time.perf_counter() - start
        return report

    def _slabs_by_default(self, out: Path, save_probabilities: bool) -> bool:
        """True for a case that a 2d configuration predicts a few slices at a time even without a
        memory budget: its slices are tiled, accumulated and resampled (in-plane only) independently
        of each other, so the streamed labels are the in-memory ones (tests/test_streaming.py), in a
        fraction of the memory (benchmarks/README.md, "Prediction"). Needs a NIfTI output, labels
        only and no postprocessing (which need the whole label map), on the CPU."""
        from fastseg.io.formats import split_ending

        return (
            len(self.patch_size) == 2
            and self.device.type == "cpu"
            and not save_probabilities
            and not self.postprocessing
            and split_ending(Path(out))[1].lower() in (".nii.gz", ".nii")
        )

    def _split_streamed(self, todo: list, save_probabilities: bool) -> tuple[list, list]:
        """(cases predicted in memory, [(case, output, budget bytes, by default)] streamed in slabs): a 3D
        case whose in-memory prediction would need more than the budget (`memory_budget_gb`, or half
        the free memory), or whose output is a tiled OME-TIFF (.ome.tif), is streamed; without a
        budget, so is a 3D case of a 2d configuration (`_slabs_by_default`), within
        `SLAB_BUDGET_2D` bytes."""
        from fastseg.io.tiff_stream import OME_TIFF_ENDINGS
        from fastseg.predict.streaming import in_memory_bytes
        from fastseg.runtime.workers import available_memory

        explicit = self.memory_budget is not None
        kept, streamed = [], []
        for case, out in todo:
            budget = self.memory_budget if explicit else available_memory() // 2
            if Path(out).name.lower().endswith(OME_TIFF_ENDINGS):  # written slab by slab, whatever the size
                logger.info("case %s: writing a tiled OME-TIFF, streamed in slabs (%.2f GB budget)", case.identifier,
                            budget / 2**30)
                streamed.append((case, out, budget, False))
                continue
            need = in_memory_bytes(self, case.images)
            if need is not None and not explicit and self._slabs_by_default(out, save_probabilities):
                streamed.append((case, out, min(budget, SLAB_BUDGET_2D), True))
                continue
            if need is None or need <= budget:
                kept.append((case, out))
                continue
            if not explicit and (save_probabilities or self.postprocessing):
                logger.warning(
                    "case %s needs about %.1f GB in memory, more than half the free memory (%.1f GB), but probabilities "
                    "and postprocessing need it whole: predicting it in memory", case.identifier, need / 2**30,
                    2 * budget / 2**30,
                )
                kept.append((case, out))
                continue
            logger.info(
                "case %s needs about %.2f GB in memory, more than %s (%.2f GB): streaming it in slabs",
                case.identifier, need / 2**30, "the budget" if explicit else "half the free memory", budget / 2**30,
            )
            streamed.append((case, out, budget, False))
        return kept, streamed

    def _stream_2d(self, case, out: Path, budget: int, report: PredictionReport, *, resume: bool, progress) -> None:
        """A 2d configuration's case streamed by default; where streaming does not take the case (a layout
        it does not handle, a file it cannot read by slices, slices too large for the budget and
        half the free memory) or fails, its slab state is removed and it is predicted in memory, as
        without streaming: a case that cannot be read is then reported by that path."""
        import shutil

        from fastseg.predict.streaming import StreamingError, scratch_folder, stream_case
        from fastseg.runtime.workers import available_memory

        t = time.perf_counter()
        if self.threads is not None:
            self._pin_kernel_threads()
        try:
            with _torch_threads(self.threads):
                try:
                    info = stream_case(self, case.images, out, budget=budget, resume=resume, progress=progress,
                                       case=case.identifier)
                except StreamingError as err:
                    if err.minimum is None or err.minimum > available_memory() // 2:
                        raise
                    info = stream_case(self, case.images, out, budget=err.minimum, resume=resume,
                                       progress=progress, case=case.identifier)
            report.written.append(out)
            _split_stages(report, info["seconds"])
            return
        except Exception as err:  # noqa: BLE001 -- the in-memory path below reads the case anew and reports it
            shutil.rmtree(scratch_folder(out), ignore_errors=True)
            logger.debug("case %s: predicted in memory, not in slabs: %s", case.identifier, err)
        finally:
            report.seconds["network"] += time.perf_counter() - t
        whole = self.predict_cases([case], [out], skip_existing=False, progress=progress, _slabs=False)
        report.written.extend(whole.written)
        report.failed.update(whole.failed)
        for k in ("read", "network", "write"):
            report.seconds[k] += whole.seconds[k]

    def _stream(self, case, out: Path, budget: int, report: PredictionReport, *, resume: bool, progress,
                save_probabilities: bool = False) -> None:
        """One streamed case (`fastseg.predict.streaming.stream_case`), its outcome in `report`."""
        from fastseg.predict.streaming import stream_case

        if save_probabilities:
            report.failed[case.identifier] = (
                f"case {case.identifier}: does not fit the memory budget of {budget / 2**30:.3f} GB, and streamed "
                "prediction writes labels only: drop --save-probabilities or raise --memory-budget-gb"
            )
            logger.error("%s", report.failed[case.identifier])
            return
        t = time.perf_counter()
        if self.threads is not None:
            self._pin_kernel_threads()
        try:
            with _torch_threads(self.threads):
                info = stream_case(self, case.images, out, budget=budget, resume=resume, progress=progress,
                                   case=case.identifier)
            report.written.append(out)
            _split_stages(report, info["seconds"])
        except Exception as err:  # noqa: BLE001 -- reported per case, the others go on
            report.failed[case.identifier] = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            logger.error("case %s: %s", case.identifier, report.failed[case.identifier])
        finally:
            report.seconds["network"] += time.perf_counter() - t

    def _pin_kernel_threads(self) -> None:
        """Gives the native kernels called from this thread `threads` OpenMP threads (when set)."""
        if self.threads is not None:
            from fastseg.threads import set_num_threads

            set_num_threads(self.threads)

    def _write(self, out: Path, acc, weights, props, save_probabilities: bool) -> None:
        from fastseg import io as fio
        from fastseg.io.formats import split_ending

        out.parent.mkdir(parents=True, exist_ok=True)
        if not save_probabilities:
            fio.write_seg(self.export(acc, weights, props), out, props)
            return
        labels, probs = self.export(acc, weights, props, return_probabilities=True)
        stem = out.with_name(split_ending(out)[0])
        with atomic_path(stem.with_suffix(".npz")) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, probabilities=probs)
        with atomic_path(stem.with_suffix(".pkl")) as tmp:
            tmp.write_bytes(pickle.dumps(dict(props)))
        fio.write_seg(labels, out, props)
