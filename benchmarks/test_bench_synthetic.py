"""Synthetic dataset generation speed (the generator feeds tests, benchmarks and the demo).

Goal (issue "Datasets"): a 20-case 100 x 256 x 256 CT-like dataset generates, writes and verifies in
well under a minute on 2 cores. Run: pytest benchmarks/test_bench_synthetic.py
"""

from __future__ import annotations

from fastseg.datasets.synthetic import SyntheticConfig, generate_case, write_synthetic_dataset


def test_generate_one_ct_case(bench):
    config = SyntheticConfig(num_cases=1, shape=(100, 256, 256), ct=True)
    bench(lambda: generate_case(config, 0), rounds=3, op="synthetic case (generate only)", shape="(100, 256, 256)", dtype="float32", impl="fastseg")


def test_write_twenty_ct_cases(bench, tmp_path_factory):
    config = SyntheticConfig(num_cases=20, shape=(100, 256, 256), ct=True)

    def run():
        out = tmp_path_factory.mktemp("synthetic") / "ct"
        report = write_synthetic_dataset(out, config, num_processes=2, progress=False)
        assert report.ok and report.num_training == 20

    bench(run, rounds=1, op="synthetic dataset, 20 cases, write + verify, -j 2", shape="20 x (100, 256, 256)", dtype="float32", impl="fastseg")
