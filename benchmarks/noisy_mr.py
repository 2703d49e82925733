"""A noisy float32 MR raw dataset for the pipeline benchmark (and to reproduce `fastseg plan` timings).

Each case is the synthetic MR generator's case (`fastseg.datasets.synthetic.generate_case`, MR-like,
one channel) on a 181x217x181 grid at 1 mm (the MNI template's), stored as float32 with Gaussian
noise of sigma 3 added to every voxel, background included, as a scanner leaves it. The noise makes
the voxels nearly incompressible: each .nii.gz holds about 27 MB, so reading a case is dominated by
decompression, and no voxel is exactly 0, so cropping keeps the whole volume. Deterministic: case i
draws its noise from `default_rng([seed, i, 1])`.

    python benchmarks/noisy_mr.py OUT_DIR [--cases 5]    # writes OUT_DIR/Dataset011_NoisyMR (~1 min)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

NAME = "Dataset011_NoisyMR"
SHAPE = (181, 217, 181)
NOISE_SIGMA = 3.0
_SPACING = (1.0, 1.0, 1.0)


def _write_case(job: tuple[str, int, int]) -> None:
    from fastseg.datasets.synthetic import SyntheticConfig, case_identifier, generate_case
    from fastseg.io.raw_writer import write_case

    root, index, seed = job
    config = SyntheticConfig(num_cases=1, seed=seed, shape=SHAPE, shape_jitter=0.0)
    case = generate_case(config, index)
    rng = np.random.default_rng([seed, index, 1])
    image = case.images[0].astype(np.float32)
    image += rng.normal(0.0, NOISE_SIGMA, image.shape).astype(np.float32)
    sitk_stuff = dict(case.properties["sitk_stuff"], spacing=_SPACING[::-1])
    props = {"spacing": list(_SPACING), "sitk_stuff": sitk_stuff}
    write_case(root, case_identifier(index), [image], case.seg, props, ".nii.gz")


def write_noisy_mr_dataset(out_dir: str | Path, num_cases: int = 5, *, seed: int = 0) -> Path:
    """Writes the noisy MR dataset (nnU-Net v2 raw layout) to `out_dir` (created, must not exist
    or be empty) and returns it.

    Args:
        out_dir: the dataset folder, e.g. `<raw>/Dataset011_NoisyMR`.
        num_cases: training cases (default 5).
        seed: seed of the anatomy and of the noise (default 0).
    """
    from fastseg.datasets.synthetic import SyntheticConfig
    from fastseg.io.dataset_json import make_dataset_json, write_dataset_json
    from fastseg.io.raw_writer import staged_dataset

    out_dir = Path(out_dir)
    config = SyntheticConfig(num_cases=num_cases, seed=seed, shape=SHAPE, shape_jitter=0.0, name="NoisyMR")
    with staged_dataset(out_dir) as staging:
        for i in range(num_cases):
            _write_case((str(staging), i, seed))
        content = make_dataset_json(
            channel_names=config.channel_names(),
            labels=config.labels(),
            num_training=num_cases,
            file_ending=".nii.gz",
            name=config.name,
            description=f"fastseg synthetic MR, float32 with Gaussian noise sigma {NOISE_SIGMA} (benchmarks/noisy_mr.py)",
            licence="CC0 (synthetic)",
            synthetic_config={**dataclasses.asdict(config), "noise_sigma": NOISE_SIGMA, "spacing": list(_SPACING)},
        )
        write_dataset_json(staging, content)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help=f"raw folder to write {NAME} into")
    parser.add_argument("--cases", type=int, default=5, help="training cases (default 5)")
    args = parser.parse_args()
    print(write_noisy_mr_dataset(args.out / NAME, args.cases))


if __name__ == "__main__":
    main()
